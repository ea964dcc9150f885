#!/usr/bin/env bash
# One GPU session (<= 10 min), after ddpm_session.sh: the paper-size x0 DDPM retrained with
# scanner-saturation augmentation (config.ddpm.saturation_augment; the NIST VIR DICOMs are 12-bit and
# clip at 4095), with 30% and 60% geometric subjects, then evaluated on the synthetic test split and
# the real phantom; also bench/ddpm_speed.py with repeated sampling timings.
#
#   OUT=/tmp/gpu PHANTOM=../shared/nist_phantom/A bash experiments/gpu/ddpm_saturation.sh
source "$(dirname "$0")/common.sh"
TRAIN_MIN=${TRAIN_MIN:-4}

for g in 0.3 0.6; do
  python3 - "$QDATA" $g <<'PY' > "$OUT/vir_data_g$g.log" 2>&1 &
import sys
from configs import ddpm
from qmri_jax import train
c = ddpm.get_config("paper")
c.data.data_dir = sys.argv[1]; c.data.resolution_mm = 4; c.data.slices_per_subject = 20
c.data.geometric_fraction = float(sys.argv[2])
d = train.load_data(c)
print({k: len(v["images"]) for k, v in d.items() if isinstance(v, dict) and "images" in v})
PY
done
stamp "bench"
python3 bench/ddpm_speed.py --steps 20 --sample-repeats 5 2>&1 | grep -v Warning | tee "$OUT/ddpm_speed.log" | tail -3
wait
stamp "data: $(tail -qn 1 $OUT/vir_data_g*.log | tr '\n' ' ')"

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.35
for g in 0.3 0.6; do
  python3 -m qmri_jax.main --config=configs/ddpm.py:paper --workdir="$RUNS/ddpm_sat_g$g" \
    --config.data.data_dir="$QDATA" --config.data.resolution_mm=4 \
    --config.data.slices_per_subject=20 --config.data.geometric_fraction=$g \
    --config.ddpm.prediction=x0 --config.ddpm.snr_cap=5.0 --config.train.learning_rate=3e-4 \
    --config.ddpm.saturation_augment=0.5 --config.train.num_steps=4000 \
    --config.train.time_limit_minutes=$TRAIN_MIN --config.train.eval_every=1000 \
    --config.train.checkpoint_every=1000 --config.train.log_every=100 \
    --config.train.progress_bar=False > "$OUT/ddpm_sat_g$g.log" 2>&1 &
done
wait
unset XLA_PYTHON_CLIENT_MEM_FRACTION
for g in 0.3 0.6; do
  stamp "ddpm_sat_g$g"
  grep -E "time limit|median|Spearman|calibrated|Error|error:" "$OUT/ddpm_sat_g$g.log" | tail -8
  grep steps_per_s "$RUNS/ddpm_sat_g$g/metrics.jsonl" | tail -1
done
stamp "real phantom"
python3 -m experiments.nist_phantom --data "$PHANTOM" --out "$RUNS/nist_sat" \
  --checkpoint "$RUNS/ddpm_sat_g0.3" --checkpoint "$RUNS/ddpm_sat_g0.6" > "$OUT/nist_sat.log" 2>&1
grep -A16 "trained models beside" "$OUT/nist_sat.log"
cp "$RUNS/nist_sat/results.json" "$OUT/nist_sat_results.json" 2>/dev/null
stamp done
