"""DESPOT1: closed-form variable-flip-angle T1 by linear regression.

Linearised SPGR: ``S/sin(a) = E1 * S/tan(a) + PD (1 - E1)``; the slope of ``S/sin a`` against
``S/tan a`` is ``E1 = exp(-TR/T1)``, so ``T1 = -TR / ln(slope)``.

Reference: Deoni SCL, Rutt BK, Peters TM. Rapid combined T1 and T2 mapping using gradient recalled
acquisition in the steady state. MRM 49:515 (2003).
"""

from __future__ import annotations

import numpy as np

__all__ = ["despot1"]


def despot1(signals, flip_deg, tr_ms, b1=1.0, weights=None):
    """Linear (weighted least squares) VFA T1 and PD.

    Args:
      signals: ``[V, N]`` SPGR magnitudes at flip angles ``flip_deg`` ``[N]`` (degrees).
      tr_ms: repetition time (ms).
      b1: relative flip-angle scale, scalar or ``[V]``.
      weights: optional ``[V, N]`` 0/1 sample mask.

    Returns:
      ``(t1_ms [V], pd [V])``; NaN where the slope is outside (0, 1) (no finite positive T1).
    """
    y = np.asarray(signals, np.float64)
    alpha = np.deg2rad(np.asarray(flip_deg, np.float64))[None, :] * np.asarray(b1, np.float64).reshape(-1, 1)
    w = np.ones_like(y) if weights is None else np.asarray(weights, np.float64)
    yv = y / np.sin(alpha)
    xv = y / np.tan(alpha)
    sw = w.sum(1)
    mx = (w * xv).sum(1) / sw
    my = (w * yv).sum(1) / sw
    sxx = (w * (xv - mx[:, None]) ** 2).sum(1)
    sxy = (w * (xv - mx[:, None]) * (yv - my[:, None])).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = sxy / sxx
        intercept = my - slope * mx
        ok = (slope > 0) & (slope < 1)
        t1 = np.where(ok, -tr_ms / np.log(np.where(ok, slope, 0.5)), np.nan)
        pd = np.where(ok, intercept / (1 - np.where(ok, slope, 0.5)), np.nan)
    return t1, pd
