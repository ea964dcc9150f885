"""Masked image metrics for quantitative maps (numpy, any spatial rank).

All take ``pred``, ``truth`` ``[...]`` (same shape, physical units) and a boolean ``mask``. Percentage
errors are ``100 |pred - truth| / truth`` per voxel. PSNR uses the in-mask maximum of ``truth`` as
the peak; SSIM is the Gaussian-window SSIM (Wang et al. 2004; 11 taps, sigma 1.5, zero padding, as
:func:`qmri_jax.losses.ssim`) per 2D slice (leading axes are slices), averaged inside the mask,
with the data range of ``truth`` in the mask.
"""

from __future__ import annotations

import numpy as np

__all__ = ["masked_metrics", "psnr", "rmse", "nrmse", "mae", "abs_pct_errors", "ssim",
           "mutual_information", "bland_altman", "METRIC_KEYS", "per_sample_metrics"]

METRIC_KEYS = ("median_abs_pct", "mean_abs_pct", "psnr", "ssim", "rmse", "nrmse", "mae",
               "mutual_information", "num_voxels")


def _check(pred, truth, mask):
    pred, truth, mask = np.asarray(pred, np.float64), np.asarray(truth, np.float64), np.asarray(
        mask, bool)
    if pred.shape != truth.shape or mask.shape != truth.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, truth {truth.shape}, mask {mask.shape}")
    return pred, truth, mask


def rmse(pred, truth, mask):
    p, t, m = _check(pred, truth, mask)
    return float(np.sqrt(np.mean((p[m] - t[m]) ** 2)))


def nrmse(pred, truth, mask):
    """RMSE divided by the RMS of the truth in the mask."""
    p, t, m = _check(pred, truth, mask)
    return float(np.sqrt(np.sum((p[m] - t[m]) ** 2) / np.sum(t[m] ** 2)))


def mae(pred, truth, mask):
    p, t, m = _check(pred, truth, mask)
    return float(np.mean(np.abs(p[m] - t[m])))


def psnr(pred, truth, mask):
    p, t, m = _check(pred, truth, mask)
    mse = np.mean((p[m] - t[m]) ** 2)
    return float(10 * np.log10(np.max(t[m]) ** 2 / max(mse, 1e-30)))


def abs_pct_errors(pred, truth, mask):
    p, t, m = _check(pred, truth, mask)
    m = m & (t > 0)
    return 100 * np.abs(p[m] - t[m]) / t[m]


def _gauss_filter2d(x, sigma=1.5):
    """The 11-tap Gaussian window (sigma 1.5) with zero padding, as the SSIM loss filters."""
    from scipy import ndimage
    return ndimage.gaussian_filter(x, sigma=(0,) * (x.ndim - 2) + (sigma, sigma), truncate=3.5,
                                   mode="constant")


def ssim(pred, truth, mask):
    """Mean SSIM inside the mask; slices are the last two axes."""
    p, t, m = _check(pred, truth, mask)
    if p.ndim == 1:
        raise ValueError("ssim needs images ([..., H, W])")
    rng = float(t[m].max() - t[m].min()) or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mp, mt = _gauss_filter2d(p), _gauss_filter2d(t)
    spp = _gauss_filter2d(p * p) - mp**2
    stt = _gauss_filter2d(t * t) - mt**2
    spt = _gauss_filter2d(p * t) - mp * mt
    s = ((2 * mp * mt + c1) * (2 * spt + c2)) / ((mp**2 + mt**2 + c1) * (spp + stt + c2))
    return float(np.mean(s[m]))


def mutual_information(pred, truth, mask, bins: int = 128):
    """Mutual information (nats) of the joint histogram (``bins`` x ``bins``) inside the mask."""
    p, t, m = _check(pred, truth, mask)
    h, _, _ = np.histogram2d(p[m], t[m], bins=bins)
    pxy = h / max(h.sum(), 1)
    px, py = pxy.sum(1, keepdims=True), pxy.sum(0, keepdims=True)
    nz = pxy > 0
    return float(np.sum(pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])))


def per_sample_metrics(pred, truth, mask, min_voxels: int = 10) -> dict:
    """Each metric per test sample (the first axis: slices or volumes), then mean +- SD over the
    samples, as papers report them (beside the pooled :func:`masked_metrics`).

    Args:
      pred, truth, mask: ``[N, ...]``.
      min_voxels: samples with fewer mask voxels are left out (a slice at the brain's edge).

    Returns:
      ``{metric: {"mean", "sd", "n"}}`` for every metric of :data:`METRIC_KEYS` but the voxel
      count (SD with ``ddof=1``; NaN where fewer than 2 samples count).
    """
    p, t, m = _check(pred, truth, mask)
    rows = [masked_metrics(p[i], t[i], m[i]) for i in range(p.shape[0])
            if m[i].sum() >= min_voxels]
    out = {}
    for k in METRIC_KEYS[:-1]:
        v = np.array([r[k] for r in rows], np.float64)
        v = v[np.isfinite(v)]
        out[k] = {"mean": float(v.mean()) if v.size else float("nan"),
                  "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}
    return out


def masked_metrics(pred, truth, mask) -> dict:
    """Every metric of :data:`METRIC_KEYS` inside ``mask`` (NaN where the mask is empty)."""
    _, _, m = _check(pred, truth, mask)
    if not m.any():
        return {k: float("nan") for k in METRIC_KEYS[:-1]} | {"num_voxels": 0}
    pct = abs_pct_errors(pred, truth, mask)
    out = {"median_abs_pct": float(np.median(pct)), "mean_abs_pct": float(np.mean(pct)),
           "psnr": psnr(pred, truth, mask), "ssim": ssim(pred, truth, mask) if np.ndim(
               pred) >= 2 else float("nan"), "rmse": rmse(pred, truth, mask),
           "nrmse": nrmse(pred, truth, mask), "mae": mae(pred, truth, mask),
           "mutual_information": mutual_information(pred, truth, mask),
           "num_voxels": int(m.sum())}
    return out


def bland_altman(measured, reference) -> dict:
    """Bias and 95% limits of agreement of paired ROI values (``measured - reference``)."""
    a, b = np.asarray(measured, np.float64), np.asarray(reference, np.float64)
    d = a - b
    bias, sd = float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else 0.0
    pct = 100 * d / b
    return {"bias": bias, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd,
            "bias_pct": float(np.mean(pct)), "loa_pct_low": float(np.mean(pct) - 1.96 * np.std(
                pct, ddof=1)) if len(d) > 1 else float(np.mean(pct)),
            "loa_pct_high": float(np.mean(pct) + 1.96 * np.std(pct, ddof=1)) if len(d) > 1
            else float(np.mean(pct)), "n": int(len(d))}
