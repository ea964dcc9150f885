# Shared set-up of the GPU session scripts (sourced; run them from the repository root).
# Env: OUT (results), QDATA (dataset cache), PHANTOM (scan session), RUNS (workdirs).
set -uo pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/gpu_out}
QDATA=${QDATA:-$ROOT/.gpu/qdata}
PHANTOM=${PHANTOM:-$ROOT/.gpu/nist_A}
RUNS=${RUNS:-$ROOT/.gpu/runs}
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT:${PYTHONPATH:-}
mkdir -p "$OUT" "$QDATA" "$RUNS"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
# report_run NAME: the training summary of workdir $RUNS/NAME (log $OUT/NAME.log), then the real
# phantom with that checkpoint ($OUT/nist_NAME.log, $OUT/nist_NAME_results.json).
report_run() {
  grep -E "time limit|median|Spearman|calibrated|Error|error:" "$OUT/$1.log" | tail -8
  grep steps_per_s "$RUNS/$1/metrics.jsonl" | tail -1
  python3 -m experiments.nist_phantom --data "$PHANTOM" --out "$RUNS/nist_$1" \
    --checkpoint "$RUNS/$1" > "$OUT/nist_$1.log" 2>&1
  grep -A14 "trained models beside" "$OUT/nist_$1.log"
  cp "$RUNS/nist_$1/results.json" "$OUT/nist_$1_results.json" 2>/dev/null
}
