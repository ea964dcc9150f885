"""Multi-echo T2 with a transmit field that is smooth over the object.

A per-voxel EPG fit of (PD, T2, B1) is ill-conditioned: B1 is informed only by the small
stimulated-echo pattern, and neighbouring voxels can land in different minima (an angle near 110
degrees or near 160), with T2 following them. The transmit field itself is smooth over a head or a
phantom. So (as in the B1-from-the-same-data approaches of StimFit and DECAES, here made explicit):

1. fit (PD, T2, B1) per voxel with the slice-profile EPG model (:func:`~qmri_jax.fitting.epg_model`)
   on ``b1_mask`` (every ``b1_stride``-th voxel: B1 is smooth, so a subsample is enough);
2. fit a smooth surface to those B1 values: a polynomial of ``degree`` in the image coordinates,
   weighted by the inverse CRLB variance of B1, with robust (Tukey biweight) reweighting so that
   voxels in a wrong minimum do not pull it (:func:`smooth_field`);
3. refit (PD, T2) in every voxel of ``mask`` with B1 fixed to the smooth surface.

T1 enters through the stimulated echoes only, but that is enough to move a long T2 by a few per
cent (a T2 of ~400 ms read with T1 1000 ms instead of its ~2000 ms: +3 to +4%). ``t1_ms`` is one
value for every voxel or a T1 map ``[X, Y]`` (e.g. from a variable-flip-angle scan of the same
session), used by both fits.

Limits: the slice profile is a generic one (Hann-windowed sinc pulses; vendors' pulses differ), and
the per-voxel fit has an alias minimum at B1 ~1.3-1.5 (central refocusing angle past ~240
degrees) with a T2 off by up to ~10%: B1 is bounded to [0.5, 1.5] and the robust weights drop the
aliased voxels as long as they are a minority (on a synthetic slice with B1 0.86-1.08 about 10%
of them are; with fields rising above ~1.2 they can become the majority and the surface fails).

The result holds the T2 map of step 3 (the estimate), the smooth B1 map (the angle map to report:
the central refocusing angle is ``180 * B1`` degrees) and the per-voxel B1 of step 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qmri_jax.fitting.maps import MapResult, fit_images
from qmri_jax.fitting.models import EPG_T1_MS, epg_model
from qmri_jax.fitting.solver import SolverOptions
from qmri_jax.physics.protocol import Protocol
from qmri_jax.physics.slice_profile import SliceProfile

__all__ = ["SmoothB1Fit", "fit_t2_smooth_b1", "smooth_field"]


@dataclasses.dataclass
class SmoothB1Fit:
    """Output of :func:`fit_t2_smooth_b1` (maps ``[X, Y]``).

    Attributes:
      t2: the (PD, T2) fit with B1 fixed to the smooth field: the T2 estimate.
      b1: the smooth relative transmit field over the whole grid (1 = nominal).
      b1_voxel: the per-voxel (PD, T2, B1) fit of step 1 (NaN outside its voxels).
      b1_used: ``[X, Y]`` bool, the voxels whose B1 entered the surface (after robust weighting:
        weight > 0).
      profile, degree: the settings.
      t1_ms: the T1 used (ms): a number, or the ``[X, Y]`` map that was given.
    """

    t2: MapResult
    b1: np.ndarray
    b1_voxel: MapResult
    b1_used: np.ndarray
    profile: SliceProfile | None
    t1_ms: float | np.ndarray
    degree: int


def _design(shape, degree):
    """Polynomial terms ``x^i y^j, i + j <= degree`` on coordinates scaled to [-1, 1]: [X, Y, T]."""
    x, y = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    terms = [x**i * y**(d - i) for d in range(degree + 1) for i in range(d + 1)]
    return np.stack(terms, axis=-1)


def smooth_field(values, weights, degree: int = 2, n_iter: int = 10, tukey_c: float = 4.685):
    """A smooth 2D polynomial fitted robustly to scattered values.

    Weighted least squares of ``values`` on the terms ``x^i y^j`` (``i + j <= degree``, coordinates
    scaled to [-1, 1] over the grid), iterated with Tukey biweights on the residuals scaled by their
    weighted median absolute deviation, so that outliers (e.g. voxels in a wrong local minimum) get
    weight 0.

    Args:
      values: ``[X, Y]`` (NaN where there is no value).
      weights: ``[X, Y]`` non-negative (e.g. inverse variances); 0 or NaN excludes a voxel.
      degree: polynomial degree (0: a constant).
      n_iter: robust reweighting iterations.
      tukey_c: biweight cut-off in units of the robust residual scale.

    Returns:
      ``(field [X, Y], final weights [X, Y])``.
    """
    values = np.asarray(values, np.float64)
    w0 = np.nan_to_num(np.asarray(weights, np.float64), nan=0.0)
    if values.ndim != 2 or w0.shape != values.shape:
        raise ValueError(f"smooth_field: values and weights must be [X, Y] of one shape, got "
                         f"{values.shape} and {w0.shape}")
    if np.any(w0 < 0):
        raise ValueError("smooth_field: weights must be >= 0")
    w0 = np.where(np.isfinite(values), w0, 0.0)
    design = _design(values.shape, degree)
    n_terms = design.shape[-1]
    if np.count_nonzero(w0) < 2 * n_terms:
        raise ValueError(f"smooth_field: {np.count_nonzero(w0)} voxels with weight > 0; a degree-"
                         f"{degree} surface needs at least {2 * n_terms}")
    sel = w0 > 0
    a, v, base = design[sel], values[sel], w0[sel]
    robust = np.ones_like(base)
    for _ in range(n_iter + 1):
        w = base * robust
        coef = np.linalg.lstsq(a * np.sqrt(w)[:, None], v * np.sqrt(w), rcond=None)[0]
        resid = v - a @ coef
        # Residuals in units of each voxel's standard error (weights are inverse variances), then
        # a robust scale: the median absolute value over the voxels still in.
        z = resid * np.sqrt(base)
        scale = np.median(np.abs(z[robust > 0])) / 0.6745 + 1e-12
        u = z / (tukey_c * scale)
        robust = np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0)
    weights_out = np.zeros(values.shape)
    weights_out[sel] = base * robust
    return design @ coef, weights_out


def fit_t2_smooth_b1(images, protocol: Protocol, mask, valid=None, sigma=None, *,
                     profile: SliceProfile | None = SliceProfile(),
                     t1_ms: float | np.ndarray = EPG_T1_MS,
                     degree: int = 1, b1_mask=None, b1_stride: int = 1,
                     b1_min_valid: float = 0.9, loss: str = "rician",
                     max_iter: int = 20, progress: bool = False) -> SmoothB1Fit:
    """T2 from a CPMG series with a smooth transmit field (module docstring).

    Args:
      images: ``[X, Y, N]`` magnitude echoes, ``TE_j = j * ESP``.
      protocol: the echo train (kind ``"se"``).
      mask: ``[X, Y]`` voxels to map T2 in.
      valid: ``[X, Y, N]`` False for samples to exclude (clipped); every echo counts otherwise
        (the first echo carries the B1 information).
      sigma: noise std (estimated from the background when None).
      profile: slice profile of the nominal pulses (``None``: an ideal slice).
      t1_ms: the T1 assumed by the EPG model (ms): one value, or a map ``[X, Y]``, finite and
        positive in ``mask`` and ``b1_mask``.
      degree: degree of the B1 surface.
      b1_mask: ``[X, Y]`` voxels used to estimate B1 (default ``mask``), subsampled by
        ``b1_stride`` in both directions; of those, only voxels with at least a fraction
        ``b1_min_valid`` of their echoes valid count.
      loss, max_iter: solver settings of both fits.

    Returns:
      :class:`SmoothB1Fit`.
    """
    mask = np.asarray(mask, bool)
    b1_mask = mask if b1_mask is None else np.asarray(b1_mask, bool)
    if b1_stride < 1:
        raise ValueError(f"fit_t2_smooth_b1: b1_stride must be >= 1, got {b1_stride}")
    sub = np.zeros_like(b1_mask)
    sub[::b1_stride, ::b1_stride] = True
    options = SolverOptions(loss=loss, max_iter=max_iter)
    t1_cov, t1_key = _t1_covariate(t1_ms, mask | b1_mask, np.shape(images)[:-1])
    model = epg_model(profile, t1_key, True)
    start = None
    if t1_cov is not None:
        # With a T1 map the start dictionary would be built per voxel (T2 x B1 atoms for each):
        # start instead from the fit with the median T1, a shared dictionary, then refine.
        fitted = b1_mask & sub
        t1_mid = float(np.median(t1_cov["T1"][fitted])) if fitted.any() else EPG_T1_MS
        pre = fit_images(images, protocol, epg_model(profile, t1_mid, True), mask=b1_mask & sub,
                         valid=valid, sigma=sigma, options=options, progress=progress)
        start, sigma = {p: np.nan_to_num(v, nan=1.0) for p, v in pre.maps.items()}, pre.sigma
    free = fit_images(images, protocol, model, mask=b1_mask & sub, valid=valid, sigma=sigma,
                      options=options, progress=progress, covariates=t1_cov, start=start)
    sigma = free.sigma
    b1_sd = free.crlb_sd["B1"]
    # Voxels whose B1 is a free estimate: no parameter on a bound, a finite CRLB and at least
    # ``b1_min_valid`` of the echoes valid (clipped early echoes take the B1 information with them:
    # what remains is the late-echo pattern, which a model error bends most). Not ``converged``:
    # at these SNRs the stationarity test fails on many voxels whose B1 is fine; the robust
    # weights handle the wrong minima.
    n_valid = (np.ones(np.shape(images), bool) if valid is None else np.asarray(valid)).sum(-1)
    good = (free.mask & ~free.at_bound & np.isfinite(b1_sd) & (b1_sd > 0)
            & (n_valid >= b1_min_valid * np.shape(images)[-1]))
    weights = np.where(good, 1.0 / np.where(good, b1_sd, 1.0) ** 2, 0.0)
    field, w_final = smooth_field(np.where(good, free.maps["B1"], np.nan), weights, degree)
    lo, hi = model.lower[2], model.upper[2]
    if np.any((field[mask] < lo) | (field[mask] > hi)):
        raise ValueError(f"fit_t2_smooth_b1: the smooth B1 leaves [{lo}, {hi}] inside the mask "
                         f"(range {field[mask].min():.2f}..{field[mask].max():.2f}); lower the "
                         "degree or restrict b1_mask")
    t2 = fit_images(images, protocol, epg_model(profile, t1_key, False), mask=mask, valid=valid,
                    sigma=sigma, options=options, progress=progress,
                    covariates={"B1": np.where(mask, field, 1.0), **(t1_cov or {})})
    return SmoothB1Fit(t2, field, free, w_final > 0, profile, t1_ms, degree)


def _t1_covariate(t1_ms, inside, shape):
    """``(covariates, epg_model's t1_ms)``: ``(None, t1)`` for one value, ``({"T1": map}, None)``
    for a map (checked: shape ``shape``, finite and positive ``inside``)."""
    if np.ndim(t1_ms) == 0:
        return None, float(t1_ms)
    t1 = np.asarray(t1_ms, np.float32)
    if t1.shape != tuple(shape):
        raise ValueError(f"fit_t2_smooth_b1: t1_ms map has shape {t1.shape}, expected the "
                         f"images' grid {tuple(shape)}")
    bad = inside & ~(np.isfinite(t1) & (t1 > 0))
    if bad.any():
        raise ValueError(f"fit_t2_smooth_b1: t1_ms map is not finite and positive in "
                         f"{int(bad.sum())} voxels of the mask (fill them, e.g. with a stated "
                         "default T1)")
    return {"T1": np.where(inside, t1, EPG_T1_MS)}, None
