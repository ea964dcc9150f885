"""The Cramer-Rao lower bound: the physical limit on the precision of voxelwise estimates.

``CRLB = diag(F^-1)`` with the Fisher information ``F = J^T diag(w q) J / sigma^2`` of the signal
model's Jacobian ``J = dS/dtheta`` (``jax.jacfwd``) over the used samples ``w``. For Gaussian noise
``q = 1``; for magnitude (Rician) data ``q(nu / sigma) = E[(m I1/I0(m nu / sigma^2) / sigma)^2] -
(nu / sigma)^2`` (:func:`rician_information`), the information one Rician sample carries about
``nu`` relative to a Gaussian one: 0 at ``nu = 0``, 0.52 at SNR 1, 0.98 at SNR 5, ``1 - 1/(2 SNR^2)``
beyond. At low per-sample SNR (late echoes, samples near an IR null) the Gaussian bound is too
optimistic. The solver reports the bound at each estimate (:func:`qmri_jax.fitting.fit_voxels`),
:func:`crlb` at any given (e.g. true) parameters; both use :func:`fisher_variance`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from qmri_jax.fitting.models import FitModel
from qmri_jax.physics.protocol import Protocol

__all__ = ["crlb", "fisher_variance", "rician_information", "spd_solve"]


def _rician_information_table(a_max=10.0, n=1001):
    """q(a) on [0, a_max] by quadrature of the Rice density (sigma = 1) on a fine grid."""
    a = np.linspace(0.0, a_max, n)
    q = np.empty_like(a)
    for i, ai in enumerate(a):
        m = np.linspace(0.0, ai + 14.0, 4001)
        p = m * np.exp(-((m - ai) ** 2) / 2) * special.i0e(m * ai)
        r = np.divide(special.i1e(m * ai), special.i0e(m * ai))
        q[i] = np.trapezoid(p * (m * r) ** 2, m) / np.trapezoid(p, m) - ai * ai
    return a.astype(np.float32), np.clip(q, 0.0, 1.0).astype(np.float32)


def _rician_information_poly(degree=10):
    """Power-series coefficients (highest first) of q in ``x = 2 a^2 / (a^2 + 2) - 1`` (``[-1, 1)``
    for ``a`` in ``[0, inf)``), fitted to the quadrature on [0, 10] and ``1 - 1/(2 a^2)`` beyond
    (whose error there is < 3e-5): one smooth function of the whole range, max error 1.6e-5."""
    a_far = np.geomspace(10.01, 1e4, 200)
    a = np.concatenate([_Q_A.astype(np.float64), a_far])
    q = np.concatenate([_Q.astype(np.float64), 1.0 - 0.5 / a_far**2])
    cheb = np.polynomial.chebyshev.chebfit(2 * a**2 / (a**2 + 2) - 1, q, degree)
    return np.polynomial.chebyshev.cheb2poly(cheb)[::-1].astype(np.float32)


_Q_A, _Q = _rician_information_table()
_Q_POLY = _rician_information_poly()


def rician_information(snr):
    """Fisher information of one Rician (magnitude) sample about its underlying signal ``nu``,
    relative to a Gaussian sample of the same sigma, at ``snr = |nu| / sigma`` (elementwise).

    A degree-10 polynomial in ``2 a^2 / (a^2 + 2) - 1`` fitted to the quadrature of the Rice
    density (error < 2e-5 over ``[0, inf)``; tends to ``1 - 1/(2 snr^2)``): elementwise arithmetic
    only, no table look-up (a gather, several times slower on CPU).
    """
    a2 = jnp.square(jnp.asarray(snr))
    x = 1.0 - 4.0 / (a2 + 2.0)  # = 2 a^2 / (a^2 + 2) - 1, finite for a = inf
    q = jnp.zeros_like(x)
    for c in _Q_POLY:
        q = q * x + c
    return jnp.clip(q, 0.0, 1.0)


def spd_solve(a, b):
    """Solves ``a x = b`` for small symmetric positive-definite ``a`` [P, P, ...] (trailing batch
    axes allowed; ``b`` [P, ...]) by an unrolled
    Cholesky factorisation: elementwise ops only, so ``vmap`` over voxels vectorises it (a batched
    LAPACK call per 3x3 system is far slower on CPU)."""
    n = a.shape[0]
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


def fisher_variance(signal_fn, theta, w, sigma, noise: str = "gaussian", jac=None):
    """``diag(F^-1)`` ``[P]`` for ``signal_fn(theta [P]) -> [N]``, sample weights ``w [N]`` and
    noise std ``sigma``; NaN where ``F`` is singular (a non-positive or non-finite variance).

    ``noise="rician"`` weights every sample by :func:`rician_information` of its SNR. ``jac``
    (``[N, P]``) may be passed when the caller already has it.
    """
    if noise not in ("gaussian", "rician"):
        raise ValueError(f"fisher_variance: noise must be 'gaussian' or 'rician', got {noise!r}")
    if jac is None:
        jac = jax.jacfwd(signal_fn)(theta)
    q = w
    if noise == "rician":
        q = w * rician_information(signal_fn(theta) / sigma)
    fim = jac.T @ (q[:, None] * jac) / sigma**2
    n_par = theta.shape[-1]
    eye = jnp.eye(n_par, dtype=theta.dtype)
    # diag(F^-1) by solving F x = e_i (unrolled Cholesky, vmap-friendly).
    var = jnp.stack([spd_solve(fim, eye[i])[i] for i in range(n_par)])
    ok = jnp.all(jnp.isfinite(var)) & jnp.all(var > 0) & (jnp.linalg.det(fim) > 0)
    return jnp.where(ok, var, jnp.nan)


def crlb(model: FitModel, protocol: Protocol, params: dict, sigma, weights=None,
         noise: str = "gaussian") -> dict:
    """Cramer-Rao lower bound on the variance of each parameter at given (e.g. true) parameters.

    Noise of std ``sigma`` on every used sample, Gaussian (``CRLB = diag((J^T W J)^-1) sigma^2``)
    or Rician (magnitude data: each sample weighted by :func:`rician_information`), with
    ``J = dS/dtheta`` from ``jax.jacfwd``, evaluated in normalised units (amplitude 1, parameters
    divided by their typical scale) for float32 accuracy.

    Args:
      model, protocol: as for :func:`fit_voxels`.
      params: name -> ``[V]`` physical parameter values.
      sigma: noise std (image units), scalar or ``[V]``.
      weights: optional ``[V, N]`` or ``[N]`` 0/1 sample mask.
      noise: ``"gaussian"`` or ``"rician"``.

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
        return fisher_variance(pred, t_int, wv, s / a, noise)

    var = jax.vmap(one)(theta / scale, w, sig, scale, amp)
    return {p: np.asarray(var[:, i] * scale[:, i] ** 2) for i, p in enumerate(model.params)}
