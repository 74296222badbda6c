#!/usr/bin/env bash
# `monitor` on a 200,000-row window with 20 features (issue 16; BENCHMARKS.md): Tansu on
# 127.0.0.1, production promoted by `run --mode main` into a local store (trained by TRAINER:
# the real emshap-ci-train, or the tests' fake one), 200,000 newer messages, then
# `monitor` (after production) REPS times under GNU time.
#
#   scripts/bench_monitor.sh BIN TRAINER [ROWS] [REPS]
set -euo pipefail
bin=$(realpath "${1:?usage: bench_monitor.sh BIN TRAINER [ROWS] [REPS]}")
trainer=$(realpath "${2:?usage: bench_monitor.sh BIN TRAINER [ROWS] [REPS]}")
rows=${3:-200000}
reps=${4:-3}
tansu=${EMSHAP_CI_TANSU:?source the env file scripts/setup.sh writes}
work=$(mktemp -d)
trap 'kill $tp 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ --cluster-id bench >tansu.log 2>&1 &
tp=$!
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
export EMSHAP_CI_TRAIN_BIN=$trainer EMSHAP_CI_SOURCE=kafka:fv EMSHAP_CI_BROKERS=127.0.0.1:$port
export EMSHAP_CI_STORE=$work/store
"$bin" generate -q --brokers "127.0.0.1:$port" --topic fv --rows 50000 --seed 1 --partitions 3 >/dev/null
echo '[power.r2]
direction = "higher"
min = 0.3' >gate.toml
EMSHAP_CI_GATE=gate.toml EMSHAP_CI_EPOCHS=3 "$bin" run -q --mode main --work w --sha aaaa1111 >/dev/null
"$bin" generate -q --brokers "127.0.0.1:$port" --topic fv --rows "$rows" --seed 2 >/dev/null
for r in $(seq "$reps"); do
  /usr/bin/time -f "rep $r: %e s wall, %M KB peak RSS" "$bin" monitor --results "m$r" -v 2>"m$r.log" >/dev/null || true
  tail -1 "m$r.log"
  grep -E "seconds" "m$r.log" | sed "s/\x1b\[[0-9;]*m//g" || true
done
python3 -c "import json; r=json.load(open('m1/monitor.json')); print('verdict', r['verdict'], 'rows', r['performance']['rows'], 'messages', r['messages'])"
