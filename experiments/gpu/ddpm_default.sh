#!/usr/bin/env bash
# GPU check of the main job's default (the per-voxel DDPM, configs/ddpm.py), its 2000-step preset
# (:voxel) and the default at twice the width (voxel_width 256; on 2 cores it read the phantom
# within 4.2%, README), then the real phantom. Written 2026-11-23 for the next session that has a
# GPU; not run yet (no GPU was lent to the sessions since).
#
#   OUT=/tmp/gpu PHANTOM=../shared/nist_phantom/A bash experiments/gpu/ddpm_default.sh
source "$(dirname "$0")/common.sh"
# train_and_report NAME CONFIG [OVERRIDES...]: train into $RUNS/NAME, then report_run NAME.
train_and_report() {
  local name=$1 config=$2
  shift 2
  python3 -m qmri_jax.main --config="$config" --workdir="$RUNS/$name" \
    --config.data.data_dir="$QDATA" --config.train.progress_bar=False "$@" > "$OUT/$name.log" 2>&1
  stamp "$name trained"
  report_run "$name"
}
train_and_report ddpm_default configs/ddpm.py
train_and_report ddpm_default_voxel configs/ddpm.py:voxel
train_and_report ddpm_default_wide configs/ddpm.py --config.ddpm.voxel_width=256 \
  --config.train.num_steps=4000
stamp done
