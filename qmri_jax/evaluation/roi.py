"""Region-of-interest statistics on parameter maps."""

from __future__ import annotations

import numpy as np

__all__ = ["roi_medians"]


def roi_medians(values: np.ndarray, labels: np.ndarray, keep=None) -> dict[int, float]:
    """Median of ``values`` within each positive label (NaN ignored).

    Args:
      values: ``[...]`` map.
      labels: ``[...]`` integer labels (0 = background).
      keep: optional ``[...]`` bool; only these voxels count (e.g. converged).

    Returns:
      label -> median (NaN where the ROI has no usable voxel).
    """
    values = np.asarray(values, float)
    labels = np.asarray(labels)
    if values.shape != labels.shape:
        raise ValueError(f"roi_medians: values {values.shape} and labels {labels.shape} differ")
    ok = np.isfinite(values) if keep is None else np.isfinite(values) & keep
    out = {}
    for k in np.unique(labels[labels > 0]):
        v = values[(labels == k) & ok]
        out[int(k)] = float(np.median(v)) if v.size else float("nan")
    return out
