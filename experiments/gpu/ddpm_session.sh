#!/usr/bin/env bash
# One GPU session (<= 10 min) for issue 5 and the GPU benches: bench/train_speed.py and
# bench/ddpm_speed.py on the GPU, two DDPMs at the paper's network size (levels 128/256/256,
# attention at levels 1 and 2) trained for a wall-clock budget on the nist_vir data at 4 mm
# (97 subjects), then evaluated on the synthetic test split and on the real NIST phantom beside the
# voxelwise fit. Meanwhile the CPU builds the four-contrast datasets and runs the voxelwise NLLS fit
# for experiments/gpu/uattennet_session.sh (which reuses them when the machine stays warm).
#
#   OUT=/tmp/gpu PHANTOM=../shared/nist_phantom/A bash experiments/gpu/ddpm_session.sh
#
# Env: OUT (results), QDATA (dataset cache, default .gpu/qdata), PHANTOM (a scan session with
# dicom/vir, dicom/mse, reference.csv, rois.npz), TRAIN_MIN (training budget per model, minutes),
# UNET_SUBJECTS (subjects of the four-contrast datasets).
source "$(dirname "$0")/common.sh"
TRAIN_MIN=${TRAIN_MIN:-4}
UNET_SUBJECTS=${UNET_SUBJECTS:-32}

python3 -c "import jax, flax, optax, orbax.checkpoint as o, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader

# CPU side: four-contrast datasets (noise-free, SNR 30) at the paper preset's data settings but
# UNET_SUBJECTS subjects, and the voxelwise NLLS fit on their test splits (JAX on the CPU).
for snr in inf 30; do
  JAX_PLATFORMS=cpu setsid nohup python3 -m experiments.learned_vs_fit --config configs/uattennet.py:paper \
    --set data.num_subjects=$UNET_SUBJECTS --set data.snr=$snr --data-dir "$QDATA" \
    --out "$RUNS/fit_snr$snr" > "$OUT/fit_snr$snr.log" 2>&1 &
done

# The nist_vir dataset for both DDPMs (built once; both runs then read it).
DDPM_SET=(--config.data.data_dir="$QDATA" --config.data.resolution_mm=4
          --config.data.slices_per_subject=20 --config.train.num_steps=4000
          --config.train.time_limit_minutes=$TRAIN_MIN --config.train.eval_every=1000
          --config.train.checkpoint_every=1000 --config.train.log_every=100
          --config.train.progress_bar=False)
python3 - "$QDATA" <<'PY' > "$OUT/vir_data.log" 2>&1 &
import sys
from configs import ddpm
from qmri_jax import train
c = ddpm.get_config("paper")
c.data.data_dir = sys.argv[1]; c.data.resolution_mm = 4; c.data.slices_per_subject = 20
d = train.load_data(c)
print({k: len(v["images"]) for k, v in d.items() if isinstance(v, dict) and "images" in v})
PY
vir_pid=$!

if [ -z "${SKIP_BENCH:-}" ]; then
  stamp "benches"
  python3 bench/train_speed.py --steps 50 --rounds 3 2>&1 | grep -v Warning | tee "$OUT/train_speed.log" | tail -4
  python3 bench/ddpm_speed.py --steps 10 2>&1 | grep -v Warning | tee "$OUT/ddpm_speed.log" | tail -4
fi
wait $vir_pid; stamp "vir data: $(tail -1 $OUT/vir_data.log)"

stamp "DDPM trainings (${TRAIN_MIN} min each, concurrently)"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.35
python3 -m qmri_jax.main --config=configs/ddpm.py:paper --workdir="$RUNS/ddpm_paper_eps" \
  "${DDPM_SET[@]}" > "$OUT/ddpm_paper_eps.log" 2>&1 &
a=$!
python3 -m qmri_jax.main --config=configs/ddpm.py:paper --workdir="$RUNS/ddpm_paper_x0" \
  "${DDPM_SET[@]}" --config.ddpm.prediction=x0 --config.ddpm.snr_cap=5.0 \
  --config.train.learning_rate=3e-4 > "$OUT/ddpm_paper_x0.log" 2>&1 &
b=$!
wait $a $b
unset XLA_PYTHON_CLIENT_MEM_FRACTION
for r in ddpm_paper_eps ddpm_paper_x0; do
  stamp "$r"; grep -E "time limit|steps/s|median|Spearman|calibrated|coverage|Error|error:" "$OUT/$r.log" | tail -12
  grep steps_per_s "$RUNS/$r/metrics.jsonl" | tail -1
  cp "$RUNS/$r/eval/metrics.json" "$OUT/${r}_metrics.json" 2>/dev/null
done

stamp "real phantom"
python3 -m experiments.nist_phantom --data "$PHANTOM" --out "$RUNS/nist" \
  --checkpoint "$RUNS/ddpm_paper_eps" --checkpoint "$RUNS/ddpm_paper_x0" > "$OUT/nist.log" 2>&1
grep -A14 "trained models beside" "$OUT/nist.log"; grep "max |bias|" "$OUT/nist.log"
cp "$RUNS/nist/results.json" "$OUT/nist_results.json" 2>/dev/null
stamp "fits running: $(jobs -r | wc -l)"
for f in "$OUT"/fit_snr*.log; do tail -n 3 "$f"; done
