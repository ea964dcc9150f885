"""T1 from the phantom's variable-flip-angle scan, for ``experiments.nist_phantom``'s EPG T2 fit.

The T2 spheres' stimulated echoes depend on their T1 (certified 160-2200 ms over spheres 2-12), and
no IR slice covers the T2 plate; the 3D VFA slab of the same session does. So:

* the VFA series (``dicom/vfa/*``) is read and resampled onto the MSE slice through the DICOM
  affines (``qmri_jax.io.resample_to_grid``, trilinear at the MSE voxel centres);
* T1 there by DESPOT1 (``qmri_jax.fitting.despot1``) with the nominal flip angles: no B1 map was
  acquired, and the refocusing "B1" of the EPG fit is not a transmit-field measurement (it absorbs
  the generic slice profile's mismatch), so it is not applied to the excitation;
* the same DESPOT1 on the T1 plate (``vfa_labels`` of ``rois.npz`` on ``vfa_slices``) is compared
  with the VIR fit there, sphere by sphere: the check that the nominal angles hold (the EPG fit
  tolerates a T1 off by +-25%: T2 moves < 1.5%).

On session A the check holds on the T1 plate (VFA within -9..+8% of the VIR fit, slices 14-16 of
32) but not on the T2 plate: the MSE slice lies at VFA slice ~28, near the slab's edge, and there
DESPOT1 reads the T2 spheres' T1 at 0.25-0.37x their certified values, uniformly, as a flip angle
~0.55x nominal would (the slab profile; no B1 map exists to correct it). With that T1 the EPG T2
reads spheres 2-4 +6 to +10% instead of +3 to +6%. Hence ``experiments.nist_phantom --t2-t1 vfa``
is an option, not the default; the T1-map path itself (``fit_t2_smooth_b1(t1_ms=map)``) is exact
on synthetic data.

Voxels of the mask where DESPOT1 has no finite positive T1 get ``fallback_ms`` (counted and
reported).
"""

from __future__ import annotations

import glob
import pathlib

import numpy as np

from qmri_jax.fitting import despot1
from qmri_jax.io import read_dicom_series, resample_to_grid


def _despot1_map(images, valid, protocol, mask):
    """DESPOT1 T1 ``[...]`` (NaN outside ``mask`` or where it fails) of ``images [..., N]``."""
    t1 = np.full(mask.shape, np.nan, np.float32)
    if mask.any():
        t1[mask] = despot1(images[mask], protocol.flip_deg, float(protocol.tr_ms[0]),
                           weights=valid[mask].astype(np.float32))[0]
    return t1


def vfa_t1(data: pathlib.Path, mse, t2_mask, rois, t1_plate_est: dict,
           fallback_ms: float) -> dict | None:
    """T1 on the MSE grid from the VFA slab and the T1-plate check (module docstring).

    Args:
      data: the scan-session folder (``data/dicom/vfa/*``); None is returned without it.
      mse: the MSE :class:`~qmri_jax.io.ImageSeries` (one slice).
      t2_mask: ``[X, Y]`` voxels of the MSE slice that need a T1.
      rois: the loaded ``rois.npz`` (``vfa_labels`` ``[S, rows, cols]``, ``vfa_slices`` ``[S]``).
      t1_plate_est: sphere -> T1 of the VIR fit (ms), for the check.
      fallback_ms: T1 for mask voxels without a DESPOT1 value.

    Returns:
      ``{"t1_map": [X, Y] (filled in t2_mask), "filled": int, "check": {sphere: {...}},
      "slice_position_vox": float}`` or None when the session has no VFA scan.
    """
    dirs = sorted(glob.glob(str(pathlib.Path(data) / "dicom" / "vfa" / "*")))
    if not dirs:
        return None
    vfa = read_dicom_series(dirs, kind="spgr", name="vfa")
    check = {}
    if "vfa_labels" in rois and "vfa_slices" in rois:
        labels = np.asarray(rois["vfa_labels"])
        est = {}
        for i, z in enumerate(np.asarray(rois["vfa_slices"]).astype(int)):
            lab = labels[i].T  # rows/cols -> NIfTI x/y
            t1 = _despot1_map(vfa.images[:, :, z], vfa.valid[:, :, z], vfa.protocol, lab > 0)
            for k in np.unique(lab[lab > 0]):
                est.setdefault(int(k), []).append(t1[lab == k])
        for k, parts in sorted(est.items()):
            v = float(np.nanmedian(np.concatenate(parts)))
            ref = t1_plate_est.get(k, float("nan"))
            check[k] = {"vfa_ms": v, "vir_fit_ms": ref, "difference_percent": 100 * (v / ref - 1)}
    grid = mse.images.shape[:3]
    images = resample_to_grid(vfa.images, vfa.affine, mse.affine, grid)[:, :, 0]
    valid = resample_to_grid(vfa.valid.astype(np.float32), vfa.affine, mse.affine, grid)[:, :, 0]
    inside = t2_mask & np.all(np.isfinite(images), -1)
    t1 = _despot1_map(np.nan_to_num(images), np.nan_to_num(valid) > 0.999, vfa.protocol, inside)
    ok = np.isfinite(t1) & (t1 > 0)
    filled = int((t2_mask & ~ok).sum())
    centre = np.linalg.inv(vfa.affine) @ mse.affine @ np.array([grid[0] / 2, grid[1] / 2, 0, 1])
    return {"t1_map": np.where(ok, t1, fallback_ms).astype(np.float32), "filled": filled,
            "check": check, "slice_position_vox": float(centre[2]),
            "description": "DESPOT1 of the VFA slab resampled onto the MSE slice, nominal flip "
                           f"angles {list(map(float, vfa.protocol.flip_deg))} deg, TR "
                           f"{float(vfa.protocol.tr_ms[0]):g} ms; {filled} mask voxels without a "
                           f"finite T1 set to {fallback_ms:g} ms"}

