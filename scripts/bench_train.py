#!/usr/bin/env python3
"""The training benchmark of BENCHMARKS.md: emshap-ci against the PyTorch peer
(../shared/peer/train.py), side by side in one run, on one snapshot, with the same batch
size (256), thread count (2) and architecture.

- power predictor: 200k train rows, --epochs E (no early stopping on either side);
- EMSHAP: 20k train rows, --epochs 3, so both run the mask-rate schedule 0.2 → 0.5 → 0.8
  and every epoch is compared at the same rate.

usage: scripts/bench_train.py [--power-rows 200000] [--emshap-rows 20000] [--power-epochs 5]
                              [--emshap-epochs 3] [--threads 2]
Needs: scripts/setup.sh done; the peer's venv is made by ../shared/peer/setup.sh (full torch
from PyPI, a few GB, cached in ~/.cache/emshap-ci/peer-train-venv). Prints markdown.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from benchenv import setup_env  # noqa: E402  (scripts/ is on sys.path: the script's own folder)
ap = argparse.ArgumentParser()
ap.add_argument("--power-rows", type=int, default=200_000)
ap.add_argument("--emshap-rows", type=int, default=20_000)
ap.add_argument("--power-epochs", type=int, default=5)
ap.add_argument("--emshap-epochs", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--skip-peer", action="store_true", help="only emshap-ci (e.g. on a GPU machine)")
ap.add_argument("--peer-malloc", action="store_true",
                help="also run the peer's EMSHAP with the glibc settings emshap-ci makes for itself")
a = ap.parse_args()

env = setup_env(root)
cache = env["EMSHAP_CI_CACHE"]
subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "--workspace"], cwd=root, env=env, check=True)
exe = f"{root}/target/release/emshap-ci"
peer = os.path.join(os.path.dirname(root), "shared", "peer")
if not a.skip_peer:
    py = subprocess.run([f"{peer}/setup.sh", f"{cache}/peer-train-venv"], check=True, capture_output=True,
                        text=True).stdout.strip().splitlines()[-1]

work = tempfile.mkdtemp(prefix="emshap-bench-train-")
total = int(a.power_rows / 0.8) + 10
subprocess.run([exe, "generate", "--rows", str(total), "--nodes", "64", "--seed", "7", "--out", f"{work}/raw.pb"],
               check=True, env=env, stdout=subprocess.DEVNULL)
subprocess.run([exe, "pull", "--source", f"file:{work}/raw.pb", "--out", f"{work}/data", "-q"], check=True, env=env,
               stdout=subprocess.DEVNULL)


def ours(model, rows, epochs):
    out = f"{work}/models-{model}"
    args = [exe, "train", model, "--data", f"{work}/data", "--out", out, "--epochs", str(epochs), "--patience",
            "1000", "--threads", str(a.threads), "--batch-size", "256", "--seed", "1", "--max-rows", str(rows),
            "-q", "--output", "json"]
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    hist = json.load(open(f"{out}/{model}_history.json"))
    return hist


# What native::keep_freed_memory sets with mallopt, as glibc's environment variables.
MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647", "MALLOC_TOP_PAD_": str(256 << 20)}


def theirs(model, rows, epochs, malloc=False):
    args = [py, f"{peer}/train.py", "--data", f"{work}/data", "--model", model, "--epochs", str(epochs),
            "--batch-size", "256", "--threads", str(a.threads), "--seed", "1"]
    if model == "emshap":
        args += ["--rows", str(rows)]
    p = subprocess.run(args, check=True, capture_output=True, text=True, cwd=peer,
                       env={**os.environ, **(MALLOC if malloc else {})})
    lines = p.stdout.strip().splitlines()
    secs = [float(m.group(1)) for m in (re.search(r"\(([\d.]+)s\)$", l) for l in lines) if m]
    vals = [float(m.group(1)) for m in (re.search(r"val ([\d.\-]+)", l) for l in lines) if m]
    return {"seconds": secs, "val": vals, "summary": json.loads(lines[-1])}


print(f"machine: {os.cpu_count()} cores; threads {a.threads}; batch 256\n")
# Power: every row of the train split (200k), same epochs.
hp = ours("power", a.power_rows, a.power_epochs)
n = hp["rows_train"]
our_s = statistics.median(e["seconds"] for e in hp["epochs"])
print(f"### power predictor ({n} train rows, {a.power_epochs} epochs, median epoch)\n")
print("| | s/epoch | samples/s | final val loss | test R² |\n|---|---|---|---|---|")
print(f"| emshap-ci | {our_s:.3f} | {n / our_s:,.0f} | {hp['epochs'][-1]['val_loss']:.4f} | {hp['test']['r2']:.4f} |")
if not a.skip_peer:
    tp = theirs("power", n, a.power_epochs)
    peer_s = statistics.median(tp["seconds"])
    peer_n = tp["summary"]["rows"]
    print(f"| peer (PyTorch) | {peer_s:.3f} | {peer_n / peer_s:,.0f} | {tp['val'][-1]:.4f} | {tp['summary']['test_r2']:.4f} |")
    print(f"\nratio (emshap-ci samples/s ÷ peer): **{(n / our_s) / (peer_n / peer_s):.2f}×**\n")

he = ours("emshap", a.emshap_rows, a.emshap_epochs)
n = he["rows_train"]
print(f"### EMSHAP ({n} train rows, K = 20, per epoch; the mask rate rises over the epochs)\n")
if not a.skip_peer:
    te = theirs("emshap", n, a.emshap_epochs)
    tm = theirs("emshap", n, a.emshap_epochs, malloc=True) if a.peer_malloc else None
extra = " peer+malloc s | ratio |" if a.peer_malloc else ""
print("| epoch | mask rate | emshap-ci s | emshap-ci samples/s | peer s | peer samples/s | ratio |" + extra)
print("|---" * (7 + (2 if a.peer_malloc else 0)) + "|")
for i, e in enumerate(he["epochs"]):
    row = f"| {e['epoch']} | {e['mask_rate']:.2f} | {e['seconds']:.1f} | {n / e['seconds']:,.0f} |"
    if not a.skip_peer:
        ps = te["seconds"][i]
        row += f" {ps:.1f} | {n / ps:,.0f} | **{ps / e['seconds']:.2f}×** |"
        if tm:
            pm = tm["seconds"][i]
            row += f" {pm:.1f} | **{pm / e['seconds']:.2f}×** |"
    else:
        row += " | | |"
    print(row)
print("\nemshap-ci phases per epoch (s): " + "; ".join(
    f"epoch {e['epoch']}: " + ", ".join(f"{k} {v:.1f}" for k, v in (e.get("phases") or {}).items()) for e in he["epochs"]))
print(f"\ndevice: {he['device']}; validation nll per epoch (emshap-ci): "
      + ", ".join(f"{e['val_nll']:.3f}" for e in he["epochs"]))
if not a.skip_peer:
    print("peer validation loss per epoch: " + ", ".join(f"{v:.3f}" for v in te["val"]))
