"""Uncertainty of posterior maps: how well the posterior std ranks and covers the error, and its
calibration by sigma scaling (Laves et al., MICCAI 2020).

A short run's posterior is often too narrow (draws that agree more than the estimate agrees with
the truth). :func:`fit_std_scale` fits one factor per map on held-out data (validation) so that
``mean +- 2 * scale * std`` covers a chosen fraction of the brain voxels; :func:`uncertainty_metrics`
reports, on other data (test), the raw posterior's coverage and Spearman correlation of std and
|error|, and the coverage with the fitted factor.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fit_std_scale", "uncertainty_metrics"]


def fit_std_scale(mean, std, arrays, names, coverage: float = 0.95) -> dict:
    """Per map ``{"std_scale", "coverage_2sigma_raw", "slices"}``: the factor ``s`` with
    ``mean +- 2 s std`` covering the fraction ``coverage`` of the brain voxels of ``arrays``
    (``s = quantile(|err| / std, coverage) / 2``; std floored at 1e-6 of the map's median).

    Args:
      mean, std: posterior mean and std ``[N, *S, C]`` (``names`` order).
      arrays: ``{"targets" [N, *S, C], "mask" [N, *S]}``.
      names: the maps.
      coverage: the fraction to cover, in (0, 1).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"ddpm.calibration_coverage={coverage}: expected a fraction in (0, 1)")
    brain = arrays["mask"].astype(bool)
    out = {}
    for c, n in enumerate(names):
        err = np.abs(mean[..., c] - arrays["targets"][..., c])[brain]
        s = std[..., c][brain]
        floor = 1e-6 * max(float(np.median(np.abs(arrays["targets"][..., c][brain]))), 1e-12)
        z = err / np.maximum(s, floor)
        out[n] = {"std_scale": float(np.quantile(z, coverage) / 2),
                  "coverage_2sigma_raw": float(np.mean(err <= 2 * s)),
                  "slices": int(len(arrays["mask"]))}
    return out


def uncertainty_metrics(mean, std, arrays, names, calibration: dict | None = None) -> dict:
    """Per map: Spearman correlation of std and |error|, coverage of mean +- 2 std (brain), the
    median std, and with ``calibration`` (:func:`fit_std_scale` on other data) the coverage of
    mean +- 2 scaled std. The top-level keys are those of the first map."""
    from scipy.stats import spearmanr
    brain = arrays["mask"].astype(bool)
    by = {}
    for c, n in enumerate(names):
        err = np.abs(mean[..., c] - arrays["targets"][..., c])[brain]
        s = std[..., c][brain]
        rho = float(spearmanr(s, err).statistic) if len(err) > 2 else float("nan")
        by[n] = {"spearman_std_abs_err": rho, "coverage_2sigma": float(np.mean(err <= 2 * s)),
                 "median_std": float(np.median(s))}
        if calibration:
            k = calibration[n]["std_scale"]
            by[n].update(std_scale=k, coverage_2sigma_calibrated=float(np.mean(err <= 2 * k * s)),
                         calibration_coverage_raw=calibration[n]["coverage_2sigma_raw"])
    first = by[names[0]]
    out = {"spearman_std_abs_err": first["spearman_std_abs_err"],
           "coverage_2sigma": first["coverage_2sigma"], "map": names[0], "by_map": by}
    if calibration:
        out.update(coverage_2sigma_calibrated=first["coverage_2sigma_calibrated"],
                   std_scale=first["std_scale"],
                   calibration_slices=calibration[names[0]]["slices"])
    return out
