#!/usr/bin/env bash
# The GPU part of the training benchmark (BENCHMARKS.md), run ON the GPU machine from the
# bundle that scripts/build_cuda.sh made (carried there as dist-cuda/):
#
#   scripts/bench_gpu.sh OUT_DIR [BUNDLE_DIR]
#
# Same data as scripts/bench_train.py (generate seed 7, 64 nodes, 250k rows → 200k train
# rows): power 5 epochs and EMSHAP 3 epochs on 20k rows, each on cuda and on the CPU with the
# same seed, so the loss curves can be compared; then EMSHAP with its defaults on cuda (all
# 200k train rows; FULL=0 skips it). Histories and logs go to OUT_DIR.
set -euo pipefail
out=${1:?usage: bench_gpu.sh OUT_DIR [BUNDLE_DIR]}
bundle=${2:-dist-cuda}
run="$bundle/run.sh"
w=$(mktemp -d)
mkdir -p "$out"
"$run" --probe | tee "$out/probe.txt"
"$run" generate --rows 250010 --nodes 64 --seed 7 --out "$w/raw.pb" > /dev/null
"$run" pull --source "file:$w/raw.pb" --out "$w/data" -q > /dev/null
common=(--data "$w/data" --patience 1000 --batch-size 256 --seed 1 -q)
for dev in cuda cpu; do
  threads=2; [ "$dev" = cuda ] && threads=4
  "$run" train power "${common[@]}" --out "$w/p-$dev" --epochs 5 --device "$dev" --threads "$threads" \
    > "$out/power-$dev.txt"
  cp "$w/p-$dev/power_history.json" "$out/power-$dev.json"
  "$run" train emshap "${common[@]}" --out "$w/e-$dev" --epochs 3 --max-rows 20000 --device "$dev" \
    --threads "$threads" > "$out/emshap-$dev.txt"
  cp "$w/e-$dev/emshap_history.json" "$out/emshap-$dev.json"
done
# EMSHAP as `run` would train it on a GPU: every train row, the default epochs.
if [ "${FULL:-1}" = 1 ]; then
  "$run" train emshap --data "$w/data" --out "$w/e-full" --device cuda --threads 4 -q > "$out/emshap-full.txt"
  cp "$w/e-full/emshap_history.json" "$out/emshap-full.json"
fi
nvidia-smi --query-gpu=name,memory.used --format=csv > "$out/nvidia-smi.txt"
rm -rf "$w"
