"""Thin slices from acquired thick ones: cubic interpolation, and data consistency of a synthetic
high-resolution volume with the thick slices a scanner delivered.

``cubic_thin_slices`` is the baseline a High-to-low network must beat: a natural cubic spline
through the thick slices' centres along ``z``. ``consistent_thin_slices`` is iterative back-projection
(one iteration by default): the thick slices of a high-resolution estimate ``H`` under the
through-plane kernel (:func:`qmri_jax.physics.thick_slices.downsample_slices`) are compared with the
acquired thick slices ``L``, and the residual, interpolated to the thin slices, is added:

    H' = H + cubic(L - D H).

The estimate keeps its through-plane detail; the acquired slices set what it cannot know from its
own input (e.g. a subject's T2 is not in a T1-weighted GE). Shapes: thin ``[X, Y, Z]``, thick
``[X, Y, Z / factor]`` (numpy, float32).
"""

from __future__ import annotations

import numpy as np
from scipy import interpolate

from qmri_jax.physics.thick_slices import downsample_slices

__all__ = ["cubic_thin_slices", "consistent_thin_slices", "kernel_centre"]


def kernel_centre(kernel, offset: int = 0) -> float:
    """Thin-slice position of thick slice 0's centre: ``offset + sum_t k_t t / sum_t k_t``."""
    k = np.asarray(kernel, np.float64)
    if k.ndim != 1 or not k.sum() > 0 or np.any(k < 0):
        raise ValueError(f"kernel={k.tolist()}: expected non-negative weights, not all zero")
    return float(offset + np.sum(k * np.arange(k.size)) / k.sum())


def cubic_thin_slices(thick, factor: int, offset: float | None = None) -> np.ndarray:
    """Cubic-spline interpolation of ``thick [X, Y, n]`` to ``n * factor`` thin slices along
    ``z``; thick slice ``j``'s centre sits at thin position ``factor j + offset`` (default
    ``(factor - 1) / 2``: the slice covers thin slices ``factor j .. factor j + factor - 1``)."""
    n = thick.shape[2]
    offset = (factor - 1) / 2.0 if offset is None else offset
    centres = factor * np.arange(n) + offset
    spline = interpolate.CubicSpline(centres, thick, axis=2, bc_type="natural")
    return spline(np.arange(n * factor)).astype(np.float32)


def consistent_thin_slices(thin, thick, kernel, factor: int, offset: int = 0,
                           iterations: int = 1) -> np.ndarray:
    """``thin [X, Y, Z]`` corrected so that its thick slices match ``thick [X, Y, Z / factor]``
    (back-projection of the residual by cubic interpolation, ``iterations`` times).

    Args:
      thin: the high-resolution estimate (e.g. a network's TSE).
      thick: the acquired thick slices, in the same intensity units.
      kernel: ``[K]`` through-plane weights (normalised here); thick slice ``j`` averages thin
        slices ``factor j + offset + t``.
      factor: thick-slice thickness in thin slices.
      offset: the kernel's first tap for slice 0.
      iterations: back-projection steps (0 returns ``thin``).
    """
    thin, thick = np.asarray(thin, np.float32), np.asarray(thick, np.float32)
    if thin.ndim != 3 or thick.shape != (*thin.shape[:2], thin.shape[2] // factor):
        raise ValueError(f"consistent_thin_slices: thin {thin.shape} and thick {thick.shape} do "
                         f"not match (expected thick [X, Y, Z // {factor}])")
    if iterations < 0:
        raise ValueError(f"consistent_thin_slices: iterations={iterations}: expected >= 0")
    k = np.asarray(kernel, np.float32)
    k = k / k.sum()
    centre = kernel_centre(k, offset)
    n = thick.shape[2]
    out = thin.copy()
    for _ in range(iterations):
        low = np.asarray(downsample_slices(out[..., None], k, factor, offset, n))[..., 0]
        out[:, :, :n * factor] += cubic_thin_slices(thick - low, factor, centre)
    return out
