#!/usr/bin/env bash
# GPU check of the main job's default (the per-voxel DDPM, configs/ddpm.py) and its 2000-step
# preset (:voxel), then the real phantom. Written 2026-11-23 for the next session that has a GPU;
# not run yet (no GPU was lent to the session that wrote it).
#
#   OUT=/tmp/gpu PHANTOM=../shared/nist_phantom/A bash experiments/gpu/ddpm_default.sh
source "$(dirname "$0")/common.sh"
for preset in "" voxel; do
  name=ddpm_default${preset:+_$preset}
  python3 -m qmri_jax.main --config=configs/ddpm.py${preset:+:$preset} --workdir="$RUNS/$name" \
    --config.data.data_dir="$QDATA" --config.train.progress_bar=False > "$OUT/$name.log" 2>&1
  stamp "$name trained"
  report_run "$name"
done
stamp done
