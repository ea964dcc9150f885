"""Fitting whole images: masks, invalid samples, and maps back on the image grid."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from qmri_jax.fitting.models import FitModel, get_model
from qmri_jax.fitting.solver import FitResult, SolverOptions, fit_voxels
from qmri_jax.physics.noise import estimate_sigma_background
from qmri_jax.physics.protocol import Protocol

__all__ = ["MapResult", "fit_images", "auto_mask"]


@dataclasses.dataclass
class MapResult:
    """Parameter maps on the image grid ``[...]`` (NaN outside the mask).

    Attributes:
      maps: name -> ``[...]`` estimate.
      crlb_sd: name -> ``[...]`` square root of the CRLB (same units as the map).
      converged: ``[...]`` bool, False outside the mask.
      mask: ``[...]`` bool, the fitted voxels.
      sigma: noise sigma used (given or estimated from background).
      n_excluded: number of samples excluded (invalid) inside the mask.
      model: the fit model.
      options: the solver options.
      at_bound: ``[...]`` bool, a parameter on one of its bounds (False outside the mask).
    """

    maps: dict[str, np.ndarray]
    crlb_sd: dict[str, np.ndarray]
    converged: np.ndarray
    mask: np.ndarray
    sigma: float | None
    n_excluded: int
    model: FitModel
    options: SolverOptions
    at_bound: np.ndarray | None = None


def auto_mask(images: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels whose maximum over images exceeds ``fraction`` of the 99th percentile of that max."""
    peak = np.asarray(images).max(axis=-1)
    return peak > fraction * np.percentile(peak, 99)


def fit_images(images, protocol: Protocol, model: str | FitModel, mask=None, valid=None,
               sigma=None, options: SolverOptions = SolverOptions(), progress: bool = False,
               estimate_sigma: bool = True, n_coils: int | str = 1,
               covariates: dict | None = None, start: dict | None = None) -> MapResult:
    """Fits every voxel of an image series.

    Args:
      images: ``[..., N]`` magnitude images, image axis last, ``N == len(protocol)``.
      protocol: the acquisition.
      model: a fit-model name (``"ir"``, ``"t2"``, ...) or a :class:`FitModel`.
      mask: optional ``[...]`` bool of voxels to fit (default :func:`auto_mask`).
      valid: optional ``[..., N]`` bool, False for samples to exclude (clipped pixels).
      sigma: noise std; when None and ``estimate_sigma`` it is estimated from the background
        (:func:`~qmri_jax.physics.estimate_noise_background`, ``n_coils`` root-sum-of-squares
        channels or ``"auto"``).
      options, progress: passed to :func:`fit_voxels`.
      covariates: ``{name: [...]}`` maps of the model's known per-voxel inputs (e.g. ``B1``),
        finite inside the mask.
      start: ``{param: [...]}`` starting maps for every model parameter, finite inside the mask
        (:func:`fit_voxels`' ``start``; e.g. the maps of a simpler model's fit).

    Returns:
      :class:`MapResult`.
    """
    model = get_model(model) if isinstance(model, str) else model
    images = np.asarray(images, np.float32)
    if images.shape[-1] != len(protocol):
        raise ValueError(f"fit_images: images have {images.shape[-1]} images on the last axis, "
                         f"protocol {protocol.name!r} has {len(protocol)}")
    finite = np.all(np.isfinite(images), axis=-1)
    if mask is None:
        mask = auto_mask(np.where(np.isfinite(images), images, 0.0))
    mask = np.asarray(mask, bool)
    if mask.shape != images.shape[:-1]:
        raise ValueError(f"fit_images: mask shape {mask.shape} != image shape {images.shape[:-1]}")
    if np.any(mask & ~finite):
        n = int(np.sum(mask & ~finite))
        raise ValueError(f"fit_images: {n} voxels inside the mask have NaN/Inf samples; "
                         "fix the input or exclude them from the mask")
    valid = np.ones(images.shape, bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != images.shape:
        raise ValueError(f"fit_images: valid shape {valid.shape} != images shape {images.shape}")
    if sigma is None and estimate_sigma:
        try:
            sigma = estimate_sigma_background(np.where(finite[..., None], images, 0.0),
                                              background=None, valid=valid, n_coils=n_coils)
        except ValueError as e:
            if options.loss == "rician":
                raise ValueError(f"fit_images: the Rician loss needs sigma and {e}") from None
            warnings.warn(f"{e}: fitting without sigma, so the CRLB maps are NaN")
    y = images[mask]
    w = valid[mask]

    def in_mask(kind, given):  # {name: [...] map} -> {name: [V]}, None stays None
        if given is None:
            return None
        out = {}
        for name, v in given.items():
            v = np.asarray(v, np.float32)
            if v.shape != mask.shape:
                raise ValueError(f"fit_images: {kind} {name!r} has shape {v.shape}, expected the "
                                 f"image shape {mask.shape}")
            out[name] = v[mask]
        return out

    result: FitResult = fit_voxels(model, protocol, y, w, sigma=sigma, options=options,
                                   progress=progress, covariates=in_mask("covariate", covariates),
                                   start=in_mask("start", start))
    shape = mask.shape

    def scatter(v, fill=np.nan):
        out = np.full(shape, fill, dtype=np.asarray(v).dtype if fill is not np.nan else np.float32)
        out[mask] = v
        return out

    maps = {p: scatter(v) for p, v in result.params.items()}
    crlb_sd = {p: scatter(np.sqrt(v)) for p, v in result.crlb.items()}
    converged = np.zeros(shape, bool)
    converged[mask] = result.converged
    at_bound = np.zeros(shape, bool)
    at_bound[mask] = result.at_bound
    return MapResult(maps, crlb_sd, converged, mask, sigma, int((~w).sum()), model, options,
                     at_bound)
