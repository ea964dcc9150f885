"""Resampling one image grid onto another through their affines (host side).

Scans of one session share a world frame: a slice of one series lies somewhere in the volume of
another. :func:`resample_to_grid` reads a volume at the centres of another grid's voxels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["resample_to_grid"]


def resample_to_grid(volume, affine, target_affine, target_shape, order: int = 1):
    """Values of ``volume`` at the voxel centres of another grid.

    Args:
      volume: ``[X, Y, Z]`` or ``[X, Y, Z, N]`` (images along the last axis, resampled each).
      affine: ``4 x 4`` voxel -> world (mm) of ``volume`` (NIfTI convention, e.g.
        :attr:`~qmri_jax.io.ImageSeries.affine`).
      target_affine: ``4 x 4`` voxel -> world of the target grid.
      target_shape: ``(X', Y', Z')`` of the target grid.
      order: spline order (1: trilinear, exact for values linear in space).

    Returns:
      ``[X', Y', Z']`` or ``[X', Y', Z', N]`` float32; NaN where a target voxel centre lies outside
      the source volume (beyond its outer voxel centres by more than half a voxel), never a
      made-up value.
    """
    vol = np.asarray(volume, np.float32)
    if vol.ndim not in (3, 4):
        raise ValueError(f"resample_to_grid: volume must be [X, Y, Z] or [X, Y, Z, N], got shape "
                         f"{vol.shape}")
    for name, a in (("affine", affine), ("target_affine", target_affine)):
        if np.shape(a) != (4, 4):
            raise ValueError(f"resample_to_grid: {name} must be 4 x 4, got {np.shape(a)}")
    target_shape = tuple(int(s) for s in target_shape)
    if len(target_shape) != 3:
        raise ValueError(f"resample_to_grid: target_shape must be (X, Y, Z), got {target_shape}")
    idx = np.indices(target_shape, dtype=np.float64).reshape(3, -1)
    world = np.asarray(target_affine, np.float64) @ np.vstack([idx, np.ones((1, idx.shape[1]))])
    src = (np.linalg.inv(np.asarray(affine, np.float64)) @ world)[:3]
    # Centres within half a voxel of the outer ones read the edge voxel (nearest-edge extension).
    inside = np.all((src >= -0.5) & (src <= np.asarray(vol.shape[:3])[:, None] - 0.5), axis=0)
    coords = np.clip(src, 0, np.asarray(vol.shape[:3])[:, None] - 1)
    images = vol[..., None] if vol.ndim == 3 else vol
    out = np.stack([ndimage.map_coordinates(images[..., n], coords, order=order, mode="nearest")
                    for n in range(images.shape[-1])], axis=-1)
    out[~inside] = np.nan
    out = out.reshape(*target_shape, images.shape[-1]).astype(np.float32)
    return out[..., 0] if vol.ndim == 3 else out
