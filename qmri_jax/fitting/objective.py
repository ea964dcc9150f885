"""What the voxelwise solvers share: internal units, bounds, the per-sample objective, and the
test that a voxel holds signal at all.

Internal units are ``theta / model.scale`` (amplitudes in units of the voxel's largest sample).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
from scipy import stats

from qmri_jax.physics.noise import log_i0e_and_ratio

__all__ = ["bounds", "no_signal_statistic", "no_signal_threshold", "objective_terms", "on_bound",
           "project", "split_scaled"]


def split_scaled(model, theta_int):
    scale = jnp.asarray(model.scale, theta_int.dtype)
    phys = theta_int * scale
    return {p: phys[..., i] for i, p in enumerate(model.params)}


def project(model, theta_int):
    lo = jnp.asarray(model.lower, theta_int.dtype) / jnp.asarray(model.scale, theta_int.dtype)
    hi = jnp.asarray(model.upper, theta_int.dtype) / jnp.asarray(model.scale, theta_int.dtype)
    return jnp.clip(theta_int, lo, hi)


def on_bound(model, theta_int):
    """True where a parameter of ``theta_int [..., P]`` (internal units) sits on a bound (within
    1e-6 of the bound range), over the last axis."""
    lo, hi = bounds(model, theta_int.dtype)
    margin = 1e-6 * jnp.maximum(1.0, jnp.abs(hi - lo))
    return jnp.any((theta_int <= lo + margin) | (theta_int >= hi - margin), axis=-1)


def bounds(model, dtype):
    """Lower and upper bounds ``[P]`` in internal units."""
    scale = jnp.asarray(model.scale, dtype)
    return jnp.asarray(model.lower, dtype) / scale, jnp.asarray(model.upper, dtype) / scale


def objective_terms(loss, y, nu, w, sigma):
    """Per-sample objective and its derivative w.r.t. the model value ``nu``.

    Both losses are in units of squared signal (the Rician NLL is multiplied by sigma^2), so the
    Gauss-Newton curvature is ``w`` for both.
    """
    if loss == "gaussian":
        r = nu - y
        return 0.5 * w * r**2, w * r
    # sigma^2 * NLL up to nu-independent terms (physics.rician_objective): the magnitude depends on
    # |nu| only, so a negative model value (e.g. t2_offset) is scored by its absolute value.
    s2 = sigma**2
    a = jnp.abs(nu)
    log_i0e, ratio = log_i0e_and_ratio(y * a / s2)
    return w * (0.5 * (a - y) ** 2 - s2 * log_i0e), w * jnp.sign(nu) * (a - y * ratio)


@functools.cache
def no_signal_threshold(n_par: int) -> float:
    """Likelihood-ratio statistic above which a fit explains the data better than "no signal"
    (``nu = 0``): the chi-square 0.999 quantile with ``n_par`` degrees of freedom."""
    return float(stats.chi2.ppf(0.999, n_par))


def no_signal_statistic(y, nu, w, sigma, magnitude: bool, axis: int = -1):
    """Likelihood-ratio statistic ``2 (NLL(nu = 0) - NLL(nu))`` of a fit ``nu`` against "no signal",
    over the last axis. For magnitude data it uses the Rician likelihood whatever loss was fitted
    (a least-squares fit to pure noise follows the Rayleigh mean, which the Gaussian likelihood
    would call signal); for signed data the Gaussian one. At ``nu = 0`` both objectives are
    ``0.5 sum(w y^2)``. ``sigma`` broadcasts against ``y`` with size 1 along ``axis`` (the samples).
    """
    loss = "rician" if magnitude else "gaussian"
    f, _ = objective_terms(loss, y, nu, w, sigma)
    return ((jnp.sum(w * y * y, axis) - 2 * jnp.sum(f, axis)) / jnp.squeeze(sigma, axis) ** 2)
