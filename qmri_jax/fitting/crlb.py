"""The Cramer-Rao lower bound: the physical limit on the precision of voxelwise estimates.

``CRLB = diag(F^-1)`` with the Gaussian Fisher information ``F = J^T W J / sigma^2`` of the signal
model's Jacobian ``J = dS/dtheta`` (``jax.jacfwd``) over the used samples ``W``; the Rician Fisher
information approaches it above SNR ~ 5. The solver reports it at each estimate
(:func:`qmri_jax.fitting.fit_voxels`), :func:`crlb` at any given (e.g. true) parameters; both use
:func:`fisher_variance`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.fitting.models import FitModel
from qmri_jax.physics.protocol import Protocol

__all__ = ["crlb", "fisher_variance", "spd_solve"]


def spd_solve(a, b):
    """Solves ``a x = b`` for a small symmetric positive-definite ``a`` [P, P] by an unrolled
    Cholesky factorisation: elementwise ops only, so ``vmap`` over voxels vectorises it (a batched
    LAPACK call per 3x3 system is far slower on CPU)."""
    n = a.shape[-1]
    lower = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            acc = a[i, j] - sum(lower[i][k] * lower[j][k] for k in range(j))
            if i == j:
                lower[i][i] = jnp.sqrt(jnp.maximum(acc, 1e-30))
            else:
                lower[i][j] = acc / lower[j][j]
    z = [None] * n
    for i in range(n):
        z[i] = (b[i] - sum(lower[i][k] * z[k] for k in range(i))) / lower[i][i]
    x = [None] * n
    for i in reversed(range(n)):
        x[i] = (z[i] - sum(lower[k][i] * x[k] for k in range(i + 1, n))) / lower[i][i]
    return jnp.stack(x)


def fisher_variance(signal_fn, theta, w, sigma):
    """``diag(F^-1)`` ``[P]`` for ``signal_fn(theta [P]) -> [N]``, sample weights ``w [N]`` and
    noise std ``sigma``; NaN where ``F`` is singular (a non-positive or non-finite variance)."""
    jac = jax.jacfwd(signal_fn)(theta)
    fim = jac.T @ (w[:, None] * jac) / sigma**2
    n_par = theta.shape[-1]
    eye = jnp.eye(n_par, dtype=theta.dtype)
    # diag(F^-1) by solving F x = e_i (unrolled Cholesky, vmap-friendly).
    var = jnp.stack([spd_solve(fim, eye[i])[i] for i in range(n_par)])
    ok = jnp.all(jnp.isfinite(var)) & jnp.all(var > 0) & (jnp.linalg.det(fim) > 0)
    return jnp.where(ok, var, jnp.nan)


def crlb(model: FitModel, protocol: Protocol, params: dict, sigma, weights=None) -> dict:
    """Cramer-Rao lower bound on the variance of each parameter at given (e.g. true) parameters.

    Gaussian noise of std ``sigma`` on every used sample: ``CRLB = diag((J^T W J)^-1) sigma^2``
    with ``J = dS/dtheta`` from ``jax.jacfwd``, evaluated in normalised units (amplitude 1,
    parameters divided by their typical scale) for float32 accuracy.

    Args:
      model, protocol: as for :func:`fit_voxels`.
      params: name -> ``[V]`` physical parameter values.
      sigma: noise std (image units), scalar or ``[V]``.
      weights: optional ``[V, N]`` or ``[N]`` 0/1 sample mask.

    Returns:
      name -> ``[V]`` variance bounds (units squared); NaN where the Fisher information is
      singular.
    """
    theta = jnp.stack([jnp.atleast_1d(jnp.asarray(params[p], jnp.float32)) for p in model.params],
                      axis=-1)  # [V, P]
    n_vox = theta.shape[0]
    w = jnp.broadcast_to(jnp.asarray(1.0 if weights is None else weights, jnp.float32),
                         (n_vox, len(protocol)))
    amp = jnp.max(jnp.abs(model.signal({p: theta[:, i] for i, p in enumerate(model.params)},
                                       protocol)), axis=-1)
    is_lin = jnp.asarray([p in model.linear for p in model.params])
    scale = jnp.asarray(model.scale, jnp.float32) * jnp.where(is_lin, amp[:, None], 1.0)
    sig = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (n_vox,))

    def one(t_int, wv, s, sc, a):
        def pred(t):
            phys = t * sc
            return model.signal({p: phys[i] for i, p in enumerate(model.params)}, protocol) / a
        return fisher_variance(pred, t_int, wv, s / a)

    var = jax.vmap(one)(theta / scale, w, sig, scale, amp)
    return {p: np.asarray(var[:, i] * scale[:, i] ** 2) for i, p in enumerate(model.params)}
