#!/usr/bin/env bash
# Seed-to-seed spread of the EMSHAP KPIs at the CPU defaults (what sizes the gate's default
# allowances, src/gate.rs): pulls the embedded telemetry once, trains EMSHAP with each seed,
# evaluates each candidate (bootstrap) and prints nll, imputation_rmse, energy_gain per seed
# with the largest pairwise difference.
#
#   scripts/bench_seeds.sh [BINARY] [SEEDS...]     (default: target/release/emshap-ci 1 2 3)
set -euo pipefail
bin=${1:-target/release/emshap-ci}
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
bin=$(realpath "$bin")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$bin" pull --out data -q >/dev/null
"$bin" train power --data data --out power -q --threads 2 >/dev/null
for s in "${seeds[@]}"; do
  start=$(date +%s.%N)
  "$bin" train emshap --data data --out "m$s" --seed "$s" -q --threads 2 >/dev/null
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  cp power/power_predictor.onnx "m$s/"
  "$bin" evaluate --data data --models "m$s" --out "e$s" --threads 2 --attribution-rows 0 -q >/dev/null || true
  python3 - "e$s/metrics.json" "$s" "$secs" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["candidate"]["emshap"]
print(f"seed {sys.argv[2]}: train {float(sys.argv[3]):.0f} s, " + ", ".join(
    f"{k} {m[k]:.5f}" for k in ["nll", "nll_se", "imputation_rmse", "energy_gain", "imputation_ratio", "energy"] if k in m))
PY
done
