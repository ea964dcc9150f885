"""A probabilistic model's per-voxel uncertainty against the exact posterior
(:func:`qmri_jax.fitting.posterior.ir_posterior`) on the same voxels: is its SD the posterior's SD,
its mean the posterior mean, and do its raw intervals cover the truth as the exact ones do?

The noise SD of each slice is estimated from its background (the voxels outside the brain mask,
pure Rician noise in the synthetic data; :func:`qmri_jax.physics.background_noise.
estimate_noise_background`), in the units of the images the model sees. The exact posterior's PD
is the signal amplitude in those units, not the model's PD map, so PD is compared by its relative
SD (SD / mean).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qmri_jax.fitting.posterior import MAIN_JOB_PRIOR, GridPrior, ir_posterior
from qmri_jax.physics.background_noise import estimate_noise_background

__all__ = ["slice_sigmas", "exact_uncertainty"]


def slice_sigmas(images, mask) -> np.ndarray:
    """Noise SD ``[N]`` of each slice ``images [N, H, W, C]`` from its background (``~mask``);
    NaN where a slice has too little background."""
    out = np.full(len(images), np.nan)
    for i in range(len(images)):
        try:
            out[i] = estimate_noise_background(np.asarray(images[i]),
                                               background=~np.asarray(mask[i], bool))[0]
        except ValueError:  # fewer than 50 background samples
            pass
    return out


def exact_uncertainty(mean, std, arrays, names, protocol, prior: GridPrior = MAIN_JOB_PRIOR,
                      max_voxels: int = 300, seed: int = 0, sigma=None) -> dict:
    """The model's posterior (``mean``, ``std`` ``[N, *S, C]``, ``names`` order) against the exact
    one on up to ``max_voxels`` brain voxels of ``arrays`` (``images``, ``targets``, ``mask``),
    drawn at random (``seed``).

    Returns ``{"voxels", "sigma_median", "prior", "by_map": {name: ...}, ...}``; per map (T1 and
    k; PD by relative SD): ``sd_ratio_median`` (model SD / exact SD, median voxel),
    ``sd_ratio_iqr``, ``raw_coverage_2sd`` (truth within the model's mean +- 2 SD),
    ``exact_coverage_2sd`` (the same for the exact posterior: what a calibrated model reaches
    with this prior), ``exact_interval_coverage`` (truth within the exact central 95% interval),
    ``mean_shift_median`` (|model mean - exact mean| / exact SD) and ``w2_median`` (the
    2-Wasserstein distance of the two as Gaussians, ``sqrt(dm^2 + ds^2)``, over the exact SD);
    the top level repeats T1's. ``{"skipped": reason}`` when no slice has enough background.
    """
    images = np.asarray(arrays["images"])
    brain = np.asarray(arrays["mask"]).astype(bool)
    sig = slice_sigmas(images, brain) if sigma is None else np.broadcast_to(
        np.asarray(sigma, float), (len(images),))
    usable = brain & np.isfinite(sig).reshape((-1,) + (1,) * (brain.ndim - 1))
    idx = np.argwhere(usable)
    if not len(idx):
        return {"skipped": "no slice has 50 background samples to estimate the noise from"}
    rng = np.random.default_rng(seed)
    idx = idx[rng.choice(len(idx), min(max_voxels, len(idx)), replace=False)]
    at = tuple(idx.T)
    curves = images[at]
    exact = ir_posterior(curves, protocol, sig[idx[:, 0]], prior)
    by = {}
    for c, name in enumerate(names):
        if name not in exact:
            continue
        m, s = np.asarray(mean)[..., c][at], np.asarray(std)[..., c][at]
        t = np.asarray(arrays["targets"])[..., c][at]
        e = exact[name]
        if name == "PD":  # different units: relative SDs only
            ratio = (s / np.abs(m)) / (e["sd"] / np.abs(e["mean"]))
            by[name] = {"sd_ratio_median": float(np.median(ratio)),
                        "sd_ratio_iqr": [float(q) for q in np.percentile(ratio, [25, 75])],
                        "compared": "relative SD (SD / mean)"}
            continue
        floor = 1e-6 * max(float(np.median(e["sd"])), 1e-12)
        es = np.maximum(e["sd"], floor)
        ratio = s / es
        by[name] = {
            "sd_ratio_median": float(np.median(ratio)),
            "sd_ratio_iqr": [float(q) for q in np.percentile(ratio, [25, 75])],
            "raw_coverage_2sd": float(np.mean(np.abs(t - m) <= 2 * s)),
            "exact_coverage_2sd": float(np.mean(np.abs(t - e["mean"]) <= 2 * e["sd"])),
            "exact_interval_coverage": float(np.mean((t >= e["low"]) & (t <= e["high"]))),
            "mean_shift_median": float(np.median(np.abs(m - e["mean"]) / es)),
            "w2_median": float(np.median(np.sqrt((m - e["mean"]) ** 2 + (s - e["sd"]) ** 2) / es)),
            "exact_sd_median": float(np.median(e["sd"])), "model_sd_median": float(np.median(s))}
    out = {"voxels": int(len(idx)), "sigma_median": float(np.nanmedian(sig)),
           "prior": dataclasses.asdict(prior), "by_map": by}
    first = "T1" if "T1" in by else next(iter(by), None)
    if first is not None:
        out.update({k: v for k, v in by[first].items() if not isinstance(v, list)})
        out["map"] = first
    return out
