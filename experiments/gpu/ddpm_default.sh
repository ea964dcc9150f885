#!/usr/bin/env bash
# GPU check of the main job's default (the per-voxel DDPM, configs/ddpm.py), its 2000-step preset
# (:voxel) and the default at twice the width (voxel_width 256; on 2 cores it read the phantom
# within 4.2%, README), then the real phantom. Written 2026-11-23 for the next session that has a
# GPU; not run yet (no GPU was lent to the sessions since).
#
#   OUT=/tmp/gpu PHANTOM=../shared/nist_phantom/A bash experiments/gpu/ddpm_default.sh
source "$(dirname "$0")/common.sh"
declare -A EXTRA=([ddpm_default]="" [ddpm_default_voxel]="" \
                  [ddpm_default_wide]="--config.ddpm.voxel_width=256 --config.train.num_steps=4000")
for name in ddpm_default ddpm_default_voxel ddpm_default_wide; do
  preset=$([ "$name" = ddpm_default_voxel ] && echo :voxel)
  # shellcheck disable=SC2086  # EXTRA holds whole options
  python3 -m qmri_jax.main --config=configs/ddpm.py$preset --workdir="$RUNS/$name" \
    --config.data.data_dir="$QDATA" --config.train.progress_bar=False ${EXTRA[$name]} \
    > "$OUT/$name.log" 2>&1
  stamp "$name trained"
  report_run "$name"
done
stamp done
