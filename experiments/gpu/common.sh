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
