"""Geometric digital phantoms with known parameter maps."""

from __future__ import annotations

import numpy as np

__all__ = ["nist_like_phantom", "NIST_T1_SPHERES_MS"]

#: Certified T1 of the NIST/ISMRM system phantom T1 array at 20 C, 3 T (CaliberMRI batch 2), ms.
NIST_T1_SPHERES_MS = (1883.97, 1330.16, 987.27, 690.08, 484.97, 341.58, 240.86, 174.95, 121.08,
                      85.75, 60.21, 42.89, 30.4, 21.44)


def nist_like_phantom(size: int = 128, t1_ms=NIST_T1_SPHERES_MS, k: float = 0.95,
                      background_t1_ms: float = 2500.0) -> dict[str, np.ndarray]:
    """A 2D disc phantom with one sphere per T1 value on a ring, like the NIST T1 array.

    Args:
      size: image size (pixels).
      t1_ms: T1 of each sphere (ms).
      k: inversion efficiency everywhere in the object.
      background_t1_ms: T1 of the fluid around the spheres (ms).

    Returns:
      ``{"PD", "T1", "T2", "k", "labels", "mask"}`` maps ``[size, size]``; labels 1..len(t1_ms) mark
      the spheres (0 elsewhere); PD is 0 outside the object.
    """
    y, x = np.mgrid[:size, :size] + 0.5
    c = size / 2
    r = np.hypot(x - c, y - c)
    mask = r < 0.46 * size
    pd = np.where(mask, 1.0, 0.0)
    t1 = np.where(mask, background_t1_ms, 0.0)
    labels = np.zeros((size, size), np.int32)
    n = len(t1_ms)
    ring = 0.30 * size
    rad = min(0.075 * size, np.pi * ring / n * 0.8)
    for i, v in enumerate(t1_ms):
        ang = 2 * np.pi * i / n
        cx, cy = c + ring * np.cos(ang), c + ring * np.sin(ang)
        sphere = np.hypot(x - cx, y - cy) < rad
        labels[sphere] = i + 1
        t1[sphere] = v
        pd[sphere] = 0.9
    t1 = np.where(mask, t1, 1000.0)  # any valid value outside; PD = 0 there
    return {"PD": pd, "T1": t1, "T2": np.where(mask, 100.0, 100.0), "k": np.where(mask, k, 1.0),
            "labels": labels, "mask": mask}
