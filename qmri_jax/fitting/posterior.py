"""The exact posterior of one voxel's inversion-recovery curve on a grid: the reference a
probabilistic model's uncertainty (the per-voxel DDPM's draws) is measured against.

Model: the magnitude IR signal of the ``ir`` fit model, ``S_n = PD |1 - (1 + k) e^{-TI_n/T1} +
k e^{-TR/T1}|`` (PD apparent: it absorbs the echo-time decay), Rician noise of known ``sigma`` on
every valid sample. Prior (:class:`GridPrior`): T1 log-uniform, k and PD uniform, independent, on
stated ranges. The posterior is evaluated on a grid of T1 (uniform in log T1) x k in two passes
per voxel: a coarse grid over the whole prior finds where the posterior mass is (the nodes holding
all but ``1e-6`` of it, one coarse step added on each side), then a fine grid of
``num_t1 x num_k`` covers that window (a narrow posterior at high SNR is then resolved as well as
a wide or two-moded one). PD is integrated numerically for every (voxel, T1, k) over a window of
+-``pd_halfwidth`` likelihood widths around the least-squares PD (``sigma / ||basis||``),
intersected with the prior range; every integral is the trapezoid rule. Every node ``(T1_i, k_j, PD_ijl)`` then
carries its posterior weight, so means, SDs and central intervals of T1, k and PD (weighted
quantiles) are exact up to the grid.

Vectorised over voxels and computed in chunks of ``chunk`` voxels (``lax.map``); float64 is not
needed: log-likelihoods are summed with the scaled Bessel term of
:func:`qmri_jax.physics.noise.log_i0e_and_ratio` and normalised by their maximum.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.fitting.models import get_model
from qmri_jax.physics.noise import log_i0e_and_ratio
from qmri_jax.physics.protocol import Protocol

__all__ = ["GridPrior", "MAIN_JOB_PRIOR", "ir_posterior", "posterior_nodes"]


@dataclasses.dataclass(frozen=True)
class GridPrior:
    """A separable prior and its grid.

    Attributes:
      t1_ms: ``(low, high)`` of the log-uniform T1 prior (ms).
      k: ``(low, high)`` of the uniform inversion-efficiency prior.
      pd: ``(low, high)`` of the uniform PD prior (the images' units).
      num_t1, num_k: fine-grid points (T1 uniform in log, k uniform; both ends included).
      coarse_t1, coarse_k: the coarse grid over the whole prior that places the fine one.
      num_pd: trapezoid nodes of the PD integral per (voxel, T1, k).
      pd_halfwidth: half-width of the PD window in likelihood widths ``sigma / ||basis||``.
    """

    t1_ms: tuple = (20.0, 5000.0)
    k: tuple = (0.8, 1.2)
    pd: tuple = (0.0, 1.5)
    num_t1: int = 64
    num_k: int = 24
    num_pd: int = 24
    coarse_t1: int = 96
    coarse_k: int = 17
    pd_halfwidth: float = 8.0

    def __post_init__(self):
        for name in ("t1_ms", "k", "pd"):
            lo, hi = getattr(self, name)
            if not hi > lo or (name == "t1_ms" and lo <= 0):
                raise ValueError(f"GridPrior.{name}={getattr(self, name)}: expected low < high"
                                 + (" and low > 0" if name == "t1_ms" else ""))
        if min(self.num_t1, self.num_k, self.num_pd, self.coarse_t1, self.coarse_k) < 2:
            raise ValueError("GridPrior: every grid needs >= 2 points")


#: The main job's training distribution (``configs/ddpm.py``), as a prior: its re-simulated half
#: draws T1 log-uniform in 20-5000 ms and k uniform in 0.8-1.2 (``ddpm.voxel_t1_range`` /
#: ``voxel_k_range``), the other half is drawn flat in log T1 from the data; PD (p95-normalised
#: images) lies in 0-1.5 (``physics.units.SCALING``). A stated approximation of that mixture.
MAIN_JOB_PRIOR = GridPrior()


def _basis(protocol: Protocol, log_t1, k) -> jnp.ndarray:
    """Unit-PD magnitude signal ``[T, K, N]`` on the grid ``log_t1 [T]`` x ``k [K]``."""
    t1, kk = jnp.meshgrid(jnp.exp(log_t1), k, indexing="ij")
    sig = get_model("ir").signal({"PD": jnp.ones(t1.shape), "T1": t1, "k": kk}, protocol)
    return jnp.abs(sig)


def _log_weights(y, w, sigma, basis, prior: GridPrior):
    """Log posterior weights ``[T, K, L]`` (up to a constant) and PD nodes of one voxel ``y [N]``
    (sample weights ``w [N]``: 1 valid, 0 left out) on the grid of ``basis [T, K, N]``."""
    bb = jnp.sum(w * basis * basis, -1)  # [T, K]
    p_ls = jnp.sum(w * basis * y, -1) / jnp.maximum(bb, 1e-12)
    width = sigma / jnp.sqrt(jnp.maximum(bb, 1e-12))
    lo = jnp.clip(p_ls - prior.pd_halfwidth * width, prior.pd[0], prior.pd[1])
    hi = jnp.clip(p_ls + prior.pd_halfwidth * width, prior.pd[0], prior.pd[1])
    hi = jnp.maximum(hi, lo + 1e-9)
    u = jnp.linspace(0.0, 1.0, prior.num_pd)
    pd = lo[..., None] + (hi - lo)[..., None] * u  # [T, K, L]

    def add(ll, n):  # one sample at a time: no [T, K, L, N] intermediate
        nu = pd * basis[:, :, n][..., None]
        log_i0e, _ = log_i0e_and_ratio(y[n] * nu / sigma ** 2)
        # log Rice(y | nu, sigma) up to terms constant in the parameters
        return ll + w[n] * (log_i0e - (y[n] - nu) ** 2 / (2 * sigma ** 2)), None

    ll, _ = jax.lax.scan(add, jnp.zeros(pd.shape), jnp.arange(len(y)))
    trap = _trapezoid(prior.num_pd) / (prior.num_pd - 1)
    log_w = ll + jnp.log(trap) + jnp.log(hi - lo)[..., None]  # quadrature of the PD integral
    return log_w - jnp.max(log_w), pd


def _window(marginal, grid, tail=1e-6):
    """``(low, high)`` of the grid nodes holding all but ``tail`` of ``marginal`` (summing to 1),
    widened by one grid step on each side and kept inside the grid."""
    c = jnp.cumsum(marginal)
    i_lo = jnp.clip(jnp.sum(c < tail) - 1, 0, len(grid) - 1)
    i_hi = jnp.clip(len(grid) - jnp.sum(c > 1 - tail) + 1, 0, len(grid) - 1)
    return grid[i_lo], grid[jnp.maximum(i_hi, i_lo + 1)]


def _voxel(y, valid, sigma, protocol: Protocol, prior: GridPrior):
    """``(weights [T, K, L], log_t1 [T], k [K], pd [T, K, L])`` of one voxel on its fine grid."""
    w = valid.astype(jnp.float32)
    y = jnp.where(valid, y, 0.0)
    lt_c = jnp.linspace(np.log(prior.t1_ms[0]), np.log(prior.t1_ms[1]), prior.coarse_t1)
    k_c = jnp.linspace(prior.k[0], prior.k[1], prior.coarse_k)
    log_w, _ = _log_weights(y, w, sigma, _basis(protocol, lt_c, k_c), prior)
    p = jnp.exp(log_w).sum(-1)
    p = p / jnp.sum(p)
    t_lo, t_hi = _window(p.sum(1), lt_c)
    k_lo, k_hi = _window(p.sum(0), k_c)
    lt = jnp.linspace(t_lo, t_hi, prior.num_t1)
    kk = jnp.linspace(k_lo, k_hi, prior.num_k)
    log_w, pd = _log_weights(y, w, sigma, _basis(protocol, lt, kk), prior)
    # trapezoid weights in log T1 and k: a window may end at a prior bound with mass there
    wts = jnp.exp(log_w) * (_trapezoid(prior.num_t1)[:, None, None]
                            * _trapezoid(prior.num_k)[None, :, None])
    return wts / jnp.sum(wts), lt, kk, pd


def _trapezoid(n):
    return jnp.ones((n,)).at[0].set(0.5).at[-1].set(0.5)


def posterior_nodes(signals, protocol: Protocol, sigma, prior: GridPrior = MAIN_JOB_PRIOR,
                    valid=None):
    """Every fine-grid node of a few voxels with its normalised posterior weight.

    Args:
      signals: ``[V, N]`` magnitude curves.
      protocol: the IR protocol (``N`` images).
      sigma: Rician noise SD, scalar or ``[V]`` (the signals' units).
      prior: the prior and grid.
      valid: ``[V, N]`` bool, the samples to use (e.g. not clipped); default all.

    Returns:
      ``{"weight", "T1", "k", "PD"}``, each ``[V, T, K, L]`` numpy, the weights summing to 1 per
      voxel.
    """
    y = jnp.asarray(signals, jnp.float32)
    v = jnp.ones(y.shape, bool) if valid is None else jnp.asarray(valid, bool)
    s = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), y.shape[:1])
    wts, lt, kk, pd = jax.vmap(lambda a, b, c: _voxel(a, b, c, protocol, prior))(y, v, s)
    shape = wts.shape
    return {"weight": np.asarray(wts), "PD": np.asarray(pd),
            "T1": np.broadcast_to(np.exp(np.asarray(lt))[:, :, None, None], shape),
            "k": np.broadcast_to(np.asarray(kk)[:, None, :, None], shape)}


def _weighted_quantiles(x, w, qs):
    """Quantiles ``qs`` of values ``x [M]`` with weights ``w [M]`` (summing to 1), by linear
    interpolation of the cumulative weight at the node midpoints."""
    order = jnp.argsort(x)
    xs, ws = x[order], w[order]
    c = jnp.cumsum(ws) - 0.5 * ws
    return jnp.interp(jnp.asarray(qs), c, xs)


def ir_posterior(signals, protocol: Protocol, sigma, prior: GridPrior = MAIN_JOB_PRIOR,
                 valid=None, interval: float = 0.95, chunk: int = 64) -> dict:
    """The exact posterior of T1, PD and k for each voxel's magnitude IR curve.

    Args:
      signals: ``[V, N]`` magnitude curves (any units; ``sigma`` and ``prior.pd`` in the same).
      protocol: the IR protocol (``N`` images; ``ir``, ``ir_signed`` magnitude or ``ir_fse``).
      sigma: Rician noise SD, scalar or ``[V]``.
      prior: the prior and grid (:data:`MAIN_JOB_PRIOR` by default).
      valid: ``[V, N]`` bool, the samples to use (clipped or missing ones left out); default all.
      interval: the central interval's probability.
      chunk: voxels per compiled call.

    Returns:
      ``{name: {"mean", "sd", "low", "high"}}`` for ``"T1"`` (ms), ``"PD"`` and ``"k"``, each
      ``[V]`` numpy; ``"low"``/``"high"`` bound the central ``interval``.
    """
    get_model("ir").check(protocol)
    y = np.asarray(signals, np.float32)
    if y.ndim != 2 or y.shape[1] != len(protocol):
        raise ValueError(f"signals: expected [V, {len(protocol)}] (one curve per voxel), got "
                         f"{y.shape}")
    n_vox = len(y)
    v = np.ones(y.shape, bool) if valid is None else np.asarray(valid, bool)
    s = np.broadcast_to(np.asarray(sigma, np.float32), (n_vox,)).copy()
    if not np.all(s > 0):
        raise ValueError("sigma: expected > 0 for every voxel")
    qs = ((1 - interval) / 2, (1 + interval) / 2)

    def one(args):
        w, lt, kk, pd = _voxel(*args, protocol, prior)
        shape = w.shape
        nodes = {"T1": jnp.broadcast_to(jnp.exp(lt)[:, None, None], shape),
                 "k": jnp.broadcast_to(kk[None, :, None], shape), "PD": pd}
        out = {}
        wf = w.reshape(-1)
        for name, x in nodes.items():
            x = x.reshape(-1)
            mean = jnp.sum(wf * x)
            sd = jnp.sqrt(jnp.maximum(jnp.sum(wf * (x - mean) ** 2), 0.0))
            lo, hi = _weighted_quantiles(x, wf, qs)
            out[name] = {"mean": mean, "sd": sd, "low": lo, "high": hi}
        return out

    fn = jax.jit(lambda a, b, c: jax.lax.map(one, (a, b, c)))
    pad = (-n_vox) % chunk
    ys = np.concatenate([y, np.repeat(y[-1:], pad, 0)]) if pad else y
    vs = np.concatenate([v, np.repeat(v[-1:], pad, 0)]) if pad else v
    ss = np.concatenate([s, np.repeat(s[-1:], pad, 0)]) if pad else s
    parts = []
    for i in range(0, len(ys), chunk):
        parts.append(jax.device_get(fn(ys[i:i + chunk], vs[i:i + chunk], ss[i:i + chunk])))
    return {name: {k: np.concatenate([p[name][k] for p in parts])[:n_vox]
                   for k in ("mean", "sd", "low", "high")} for name in ("T1", "PD", "k")}
