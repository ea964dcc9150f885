#!/usr/bin/env bash
# Short GPU check (~4 min): the paper-size x0 DDPM trained with data.k_spread=0.15 (apparent
# inversion efficiency up to 1.15, as the IR model fits real IR-FSE data of short T1), then the
# real phantom. Budget version: 60 subjects, 2000 steps.
#
#   OUT=/tmp/gpu PHANTOM=../shared/nist_phantom/A bash experiments/gpu/ddpm_kspread.sh
source "$(dirname "$0")/common.sh"
python3 -m qmri_jax.main --config=configs/ddpm.py:paper --workdir="$RUNS/ddpm_kspread" \
  --config.data.data_dir="$QDATA" --config.data.resolution_mm=4 --config.data.num_subjects=60 \
  --config.data.slices_per_subject=20 --config.data.k_spread=0.15 \
  --config.ddpm.prediction=x0 --config.ddpm.snr_cap=5.0 --config.train.learning_rate=3e-4 \
  --config.train.num_steps=${STEPS:-2000} --config.train.time_limit_minutes=${TRAIN_MIN:-1.7} \
  --config.train.eval_every=1000 --config.train.checkpoint_every=1000 --config.train.log_every=100 \
  --config.ddpm.eval_slices=16 --config.ddpm.calibration_slices=4 \
  --config.train.progress_bar=False > "$OUT/ddpm_kspread.log" 2>&1
stamp "trained"
report_run ddpm_kspread  # (its phantom outputs were nist_kspread* before report_run)
stamp done
