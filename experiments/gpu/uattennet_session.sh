#!/usr/bin/env bash
# One GPU session (<= 10 min) for issue 4: configs/uattennet.py:paper (the thesis's 64-512-channel
# attention-gated U-Net, normalised MAE) trained for a wall-clock budget on the four-contrast brain
# data, noise-free and at SNR 30 concurrently, each evaluated on its test split and printed beside
# the voxelwise NLLS fit on the same split (built by experiments/gpu/ddpm_session.sh if the machine
# stayed warm, else here).
#
#   OUT=/tmp/gpu bash experiments/gpu/uattennet_session.sh
source "$(dirname "$0")/common.sh"
TRAIN_MIN=${TRAIN_MIN:-6}
UNET_SUBJECTS=${UNET_SUBJECTS:-32}

# The datasets and fits of the first session may still be running (setsid): wait for them.
for i in $(seq 1 60); do pgrep -f experiments.learned_vs_fit > /dev/null || break; sleep 5; done
stamp "fits from the first session: $(ls -d $RUNS/fit_snr*/metrics.json 2>/dev/null | wc -l) of 2"
for snr in inf 30; do
  if [ ! -f "$RUNS/fit_snr$snr/metrics.json" ]; then
    JAX_PLATFORMS=cpu python3 -m experiments.learned_vs_fit --config configs/uattennet.py:paper \
      --set data.num_subjects=$UNET_SUBJECTS --set data.snr=$snr --data-dir "$QDATA" \
      --out "$RUNS/fit_snr$snr" > "$OUT/fit_snr$snr.log" 2>&1 &
  fi
done
wait
stamp "datasets and fits ready"

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
for snr in inf 30; do
  python3 -m qmri_jax.main --config=configs/uattennet.py:paper --workdir="$RUNS/uatt_snr$snr" \
    --config.data.data_dir="$QDATA" --config.data.num_subjects=$UNET_SUBJECTS \
    --config.data.snr=$snr --config.train.num_steps=${UNET_STEPS:-6000} \
    --config.train.time_limit_minutes=$TRAIN_MIN --config.train.eval_every=500 \
    --config.train.checkpoint_every=1000 --config.train.log_every=100 \
    --config.train.progress_bar=False > "$OUT/uatt_snr$snr.log" 2>&1 &
done
wait
unset XLA_PYTHON_CLIENT_MEM_FRACTION
for snr in inf 30; do
  stamp "uattennet:paper, SNR $snr"
  grep -E "time limit|median|Error|error:" "$OUT/uatt_snr$snr.log" | tail -8
  cp "$RUNS/uatt_snr$snr/eval/metrics.json" "$OUT/uatt_snr${snr}_metrics.json" 2>/dev/null
  cp "$RUNS/fit_snr$snr/metrics.json" "$OUT/fit_snr${snr}_metrics.json" 2>/dev/null
  python3 - "$RUNS/uatt_snr$snr/eval/metrics.json" "$RUNS/fit_snr$snr/metrics.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
print("map  uattennet  NLLS   (median |% error|, brain, test split)")
for t in ("T1", "T2", "PD"):
    print(f"{t:4s} {a[t]['median_abs_pct']:9.2f} {b[t]['median_abs_pct']:6.2f}")
PY
done
