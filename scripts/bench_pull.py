#!/usr/bin/env python3
"""The pull benchmark of BENCHMARKS.md, all in one run on one input:

- a minimal rdkafka loop (examples/raw_consume.rs) reading the topic: the raw limit;
- `emshap-ci pull` from that Kafka topic and from a file of the same messages;
- the Python peer (../shared/peer/pull.py) on the same topic and the same file.

usage: scripts/bench_pull.py [--rows 1000000] [--reps 3] [--peer-reps 1]
Needs: scripts/setup.sh --test done, a release build (this script builds it), GNU time
(/usr/bin/time, Debian package `time`) for peak RSS. Prints a markdown table.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from benchenv import setup_env  # noqa: E402  (scripts/ is on sys.path: the script's own folder)
ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=1_000_000)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--peer-reps", type=int, default=1)
a = ap.parse_args()

env = setup_env(root, "--test")
cache = env["EMSHAP_CI_CACHE"]
# The shipped emshap-ci, built as release.yml builds it (--workspace); it links no libtorch.
target = os.environ.get("CARGO_TARGET_DIR", f"{root}/target")
subprocess.run(["cargo", "build", "--release", "--quiet", "--workspace", "--bin", "emshap-ci",
                "--example", "raw_consume"], cwd=root, env=env, check=True)
exe = f"{target}/release/emshap-ci"
raw = f"{target}/release/examples/raw_consume"

# The peer's Python stack (its pull needs no torch), with its generated protobuf module.
peer = os.path.join(os.path.dirname(root), "shared", "peer")
venv = f"{cache}/peer-pull-venv"
if not os.path.exists(f"{venv}/.complete"):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([f"{venv}/bin/pip", "install", "-q", "confluent-kafka", "protobuf", "grpcio-tools",
                    "numpy", "pandas", "pyarrow", "scikit-learn"], check=True)
    os.makedirs(f"{venv}/peer_gen", exist_ok=True)
    subprocess.run([f"{venv}/bin/python", "-m", "grpc_tools.protoc", f"-I{peer}", f"--python_out={venv}/peer_gen",
                    f"{peer}/feature_vector.proto"], check=True)
    open(f"{venv}/.complete", "w").close()

work = tempfile.mkdtemp(prefix="emshap-bench-")
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
url = f"tcp://127.0.0.1:{port}"
broker = subprocess.Popen([env["EMSHAP_CI_TANSU"], "broker", "--listener-url", url, "--advertised-listener-url", url,
                           "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
brokers = f"127.0.0.1:{port}"
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", port), 0.1).close(); break
    except OSError:
        time.sleep(0.05)


def timed(cmd, **kw):
    """Runs cmd under GNU time; returns (wall seconds, peak RSS MB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "RSS %M", *cmd], capture_output=True, text=True, env=env, **kw)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {cmd}\n{p.stderr}")
    rss = [l for l in p.stderr.splitlines() if l.startswith("RSS ")][-1]
    return wall, int(rss.split()[1]) / 1024, p.stdout


try:
    pb = f"{work}/bench.pb"
    subprocess.run([exe, "generate", "--rows", str(a.rows), "--out", pb, "-q"], check=True, env=env)
    subprocess.run([exe, "generate", "--rows", str(a.rows), "--brokers", brokers, "--topic", "bench",
                    "--partitions", "3", "-q"], check=True, env=env)
    size = os.path.getsize(pb)
    results = {}

    def bench(name, cmd, reps, messages_from):
        runs = []
        for i in range(reps):
            out = f"{work}/out-{name}-{i}"
            wall, rss, stdout = timed([c.replace("OUT", out) for c in cmd])
            msgs = messages_from(stdout)
            runs.append((wall, rss, msgs))
            shutil.rmtree(out, ignore_errors=True)
        walls = sorted(r[0] for r in runs)
        med = statistics.median(walls)
        results[name] = dict(seconds=med, msgs=runs[0][2], rate=runs[0][2] / med, rss=max(r[1] for r in runs),
                             reps=reps)

    last_json = lambda out: json.loads(out.strip().splitlines()[-1])
    bench("raw rdkafka loop (Kafka)", [raw, brokers, "bench"], a.reps, lambda o: last_json(o)["messages"])
    bench("emshap-ci pull (Kafka)", [exe, "pull", "--source", "kafka:bench", "--brokers", brokers, "--out", "OUT",
                                     "-q", "--output", "json"], a.reps, lambda o: last_json(o)["report"]["messages"])
    bench("Python peer pull.py (Kafka)", [f"{venv}/bin/python", f"{peer}/pull.py", "--bootstrap", brokers, "--topic",
                                          "bench", "--out", "OUT"], a.peer_reps, lambda o: last_json(o)["messages"])
    bench("emshap-ci pull (file)", [exe, "pull", "--source", f"file:{pb}", "--out", "OUT", "-q", "--output", "json"],
          a.reps, lambda o: last_json(o)["report"]["messages"])
    bench("Python peer pull.py (file)", [f"{venv}/bin/python", f"{peer}/pull.py", "--file", pb, "--out", "OUT"],
          a.peer_reps, lambda o: last_json(o)["messages"])

    snapshot_mb = a.rows * (20 + 1) * 4 / 1e6
    print(f"input: {a.rows} messages, {size / a.rows:.0f} bytes each on average, 3 partitions (Kafka) / one file; "
          f"snapshot in memory as f32: {snapshot_mb:.0f} MB\n")
    print("| what | runs | median wall s | messages | msg/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['reps']} | {r['seconds']:.2f} | {r['msgs']} | {r['rate']:,.0f} | {r['rss']:.0f} |")
    k, f = results["emshap-ci pull (Kafka)"], results["emshap-ci pull (file)"]
    print()
    print(f"- Kafka pull / raw loop: {k['rate'] / results['raw rdkafka loop (Kafka)']['rate']:.2f}")
    print(f"- Kafka pull / peer: {k['rate'] / results['Python peer pull.py (Kafka)']['rate']:.1f}x")
    print(f"- file pull / peer: {f['rate'] / results['Python peer pull.py (file)']['rate']:.1f}x")
    print(f"- peak RSS limit 2 x {snapshot_mb:.0f} + 150 = {2 * snapshot_mb + 150:.0f} MB: Kafka {k['rss']:.0f}, file {f['rss']:.0f}")
finally:
    broker.kill()
    shutil.rmtree(work, ignore_errors=True)
