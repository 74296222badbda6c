#!/usr/bin/env bash
# The Kafka pull over SASL_SSL + SCRAM-SHA-512 against a plaintext pull of the same
# messages (issue 14; BENCHMARKS.md). Four Tansu brokers on 127.0.0.1, the same messages in
# each: plaintext with memory storage; SSL through stunnel4 (Tansu's own TLS listener does not
# work) with memory storage, so TLS and the proxy are the only difference; plaintext with
# sqlite storage; and SASL_SSL + SCRAM-SHA-512 with sqlite storage (Tansu keeps SCRAM users
# only there) through stunnel4. Each TLS figure includes the proxy's own cost.
#
#   scripts/bench_kafka_tls.sh BIN [ROWS] [REPS]     (defaults 500000 rows, 3 repetitions)
#
# Needs scripts/setup.sh --test (EMSHAP_CI_TANSU with libsql, stunnel4, openssl). Prints one
# line per pull and the medians.
set -euo pipefail
bin=${1:?usage: bench_kafka_tls.sh BIN [ROWS] [REPS]}
bin=$(realpath "$bin")
rows=${2:-500000}
reps=${3:-3}
tansu=${EMSHAP_CI_TANSU:?source the env file scripts/setup.sh writes}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on $1" >&2; exit 1; }

key="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $key -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
openssl req $key -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null

plain=$(port)
"$tansu" broker --listener-url "tcp://127.0.0.1:$plain" --advertised-listener-url "tcp://127.0.0.1:$plain" \
  --storage-engine memory://tansu/ --cluster-id plain >plain.log 2>&1 &
pids+=($!)
inner=$(port) outer=$(port)
"$tansu" broker --listener-url "tcp://127.0.0.1:$inner" --advertised-listener-url "tcp://127.0.0.1:$inner" \
  --storage-engine sqlite://t.db --cluster-id secure >setup.log 2>&1 &
setup=$!
wait_port "$inner"
"$tansu" user create --broker "tcp://127.0.0.1:$inner" --mechanism scram512 bench bench-password >/dev/null
kill "$setup"; wait "$setup" 2>/dev/null || true
"$tansu" broker --listener-url "tcp://127.0.0.1:$inner" --advertised-listener-url "tcp://127.0.0.1:$outer" \
  --storage-engine sqlite://t.db --cluster-id secure --authentication >secure.log 2>&1 &
pids+=($!)
cat >stunnel.conf <<EOF
foreground = yes
pid =
[kafka]
accept = 127.0.0.1:$outer
connect = 127.0.0.1:$inner
cert = $work/server.pem
key = $work/server.key
EOF
stunnel4 stunnel.conf >stunnel.log 2>&1 &
pids+=($!)
# SSL only, memory storage, through its own stunnel.
tinner=$(port) touter=$(port)
"$tansu" broker --listener-url "tcp://127.0.0.1:$tinner" --advertised-listener-url "tcp://127.0.0.1:$touter" \
  --storage-engine memory://tansu/ --cluster-id tls >tls.log 2>&1 &
pids+=($!)
sed -e "s/^accept = .*/accept = 127.0.0.1:$touter/" -e "s/^connect = .*/connect = 127.0.0.1:$tinner/" \
  stunnel.conf >stunnel-tls.conf
stunnel4 stunnel-tls.conf >stunnel-tls.log 2>&1 &
pids+=($!)
# Plaintext, sqlite storage.
sq=$(port)
mkdir sq
(cd sq && exec "$tansu" broker --listener-url "tcp://127.0.0.1:$sq" --advertised-listener-url "tcp://127.0.0.1:$sq" \
  --storage-engine sqlite://s.db --cluster-id sq >../sq.log 2>&1) &
pids+=($!)
wait_port "$plain"; wait_port "$inner"; wait_port "$outer"; wait_port "$touter"; wait_port "$sq"

export EMSHAP_CI_KAFKA_SASL_PASSWORD=bench-password
secure_flags=(--kafka-sasl-mechanism SCRAM-SHA-512 --kafka-sasl-username bench --kafka-ca "$work/ca.pem")
"$bin" generate -q --brokers "127.0.0.1:$plain" --topic fv --rows "$rows" --partitions 3 --seed 1
"$bin" generate -q --brokers "127.0.0.1:$outer" --topic fv --rows "$rows" --partitions 3 --seed 1 "${secure_flags[@]}"
tls_flags=(--kafka-security-protocol SSL --kafka-ca "$work/ca.pem")
"$bin" generate -q --brokers "127.0.0.1:$touter" --topic fv --rows "$rows" --partitions 3 --seed 1 "${tls_flags[@]}"
"$bin" generate -q --brokers "127.0.0.1:$sq" --topic fv --rows "$rows" --partitions 3 --seed 1

time_pull() { # name brokers flags...
  local name=$1 brokers=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" pull -q --source kafka:fv --brokers "$brokers" --out "$name" --kafka-timeout 30 "$@" >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
a=() b=() c=() e=()
for r in $(seq "$reps"); do
  pa=$(time_pull "a$r" "127.0.0.1:$plain")
  pb=$(time_pull "b$r" "127.0.0.1:$touter" "${tls_flags[@]}")
  pc=$(time_pull "c$r" "127.0.0.1:$sq")
  pe=$(time_pull "e$r" "127.0.0.1:$outer" "${secure_flags[@]}")
  echo "rep $r: memory plaintext $pa s, memory SSL $pb s, sqlite plaintext $pc s, sqlite SASL_SSL+SCRAM $pe s"
  a+=("$pa") b+=("$pb") c+=("$pc") e+=("$pe")
  for x in b c e; do
    cmp -s "a$r/train.parquet" "$x$r/train.parquet" || { echo "pull $x$r differs from a$r" >&2; exit 1; }
  done
done
python3 - "$rows" "${a[*]}" "${b[*]}" "${c[*]}" "${e[*]}" <<'EOF'
import statistics, sys
rows = int(sys.argv[1])
m = [statistics.median(map(float, v.split())) for v in sys.argv[2:6]]
names = ["memory storage, PLAINTEXT", "memory storage, SSL via stunnel",
         "sqlite storage, PLAINTEXT", "sqlite storage, SASL_SSL+SCRAM-SHA-512 via stunnel"]
for n, t in zip(names, m):
    print(f"{n}: median {t:.3f} s ({rows / t / 1e3:.0f} k msg/s)")
print(f"TLS cost (same storage, memory): {m[1] / m[0]:.2f}x; TLS+SCRAM cost (same storage, sqlite): {m[3] / m[2]:.2f}x")
EOF
