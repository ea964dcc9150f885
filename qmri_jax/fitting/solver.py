"""Voxelwise nonlinear least squares / Rician maximum likelihood with CRLB, in JAX.

The pipeline for one chunk of voxels (all under one ``jax.jit``, ``vmap`` over voxels):

1. normalise each voxel by its largest valid |sample| (amplitudes become O(1));
2. dictionary search over the model's nonlinear-parameter grid, with the amplitudes solved in
   closed form for every atom (weighted variable projection): a global initialisation that avoids
   the wrong minima of magnitude signals;
3. Levenberg-Marquardt (Marquardt diagonal scaling, projected onto the bounds) on all parameters
   in internal units ``theta / scale``. For the Rician likelihood the gradient is exact and the
   curvature is the Gauss-Newton (high-SNR Fisher) matrix; every step is accepted only if the
   negative log-likelihood decreases;
4. the Cramer-Rao lower bound ``diag((J^T W J / sigma^2)^-1)`` at the estimate (Gaussian Fisher
   information; the Rician one approaches it above SNR ~ 5), with ``J`` from ``jax.jacfwd``.

Voxels are processed in fixed-size chunks (the last one padded), so one compiled function serves any
number of voxels and memory stays bounded on CPU and GPU.

References:
  Marquardt DW. J Soc Ind Appl Math 11:431 (1963).
  Golub G, Pereyra V. Separable nonlinear least squares: the variable projection method (2003).
  Sijbers J, den Dekker AJ. Maximum likelihood estimation of signal amplitude and noise variance
  from MR data. MRM 51:586 (2004).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.fitting.crlb import fisher_variance, spd_solve
from qmri_jax.fitting.models import FitModel
from qmri_jax.physics.noise import log_i0e_and_ratio
from qmri_jax.physics.protocol import Protocol

__all__ = ["FitResult", "fit_voxels", "fit_signals", "SolverOptions"]


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Settings of the voxelwise solver.

    Attributes:
      loss: ``"gaussian"`` (nonlinear least squares) or ``"rician"`` (maximum likelihood for
        magnitude data; needs sigma).
      max_iter: Levenberg-Marquardt iterations (fixed count; converged voxels stop moving).
      tol: relative decrease of the objective over the last iterations below which a voxel counts as
        converged.
      chunk_size: voxels per compiled call (``None``: chosen from the dictionary size).
      lambda_init: initial Marquardt damping.
    """

    loss: str = "gaussian"
    max_iter: int = 12
    tol: float = 1e-5
    chunk_size: int | None = None
    lambda_init: float = 1e-2

    def __post_init__(self):
        if self.loss not in ("gaussian", "rician"):
            raise ValueError(f"SolverOptions.loss must be 'gaussian' or 'rician', got {self.loss!r}")
        if self.max_iter < 1:
            raise ValueError(f"SolverOptions.max_iter must be >= 1, got {self.max_iter}")


@dataclasses.dataclass
class FitResult:
    """Voxelwise fit output; every array is ``[V]`` (or ``[V, N]`` for ``fitted``).

    Attributes:
      params: parameter name -> estimate (physical units).
      crlb: parameter name -> Cramer-Rao lower bound on the variance (units squared); NaN where the
        Fisher information is singular or sigma is unknown.
      converged: True where the solver converged to a finite estimate.
      cost: final objective (sum of squared residuals, or Rician NLL) in normalised units.
      sigma: the noise sigma used (image units).
      model: the fit model's name.
    """

    params: dict[str, np.ndarray]
    crlb: dict[str, np.ndarray]
    converged: np.ndarray
    cost: np.ndarray
    sigma: float | None
    model: str

    def crlb_sd(self, name: str) -> np.ndarray:
        """``sqrt(CRLB)`` of one parameter: the smallest achievable standard deviation."""
        return np.sqrt(self.crlb[name])


def _atoms(model: FitModel):
    grids = [np.asarray(g, np.float32) for g in model.grid]
    mesh = np.meshgrid(*grids, indexing="ij")
    return {p: jnp.asarray(m.ravel()) for p, m in zip(model.nonlinear, mesh)}


def _split_scaled(model, theta_int):
    scale = jnp.asarray(model.scale, theta_int.dtype)
    phys = theta_int * scale
    return {p: phys[..., i] for i, p in enumerate(model.params)}


def _project(model, theta_int):
    lo = jnp.asarray(model.lower, theta_int.dtype) / jnp.asarray(model.scale, theta_int.dtype)
    hi = jnp.asarray(model.upper, theta_int.dtype) / jnp.asarray(model.scale, theta_int.dtype)
    return jnp.clip(theta_int, lo, hi)


def _dictionary_init(model, protocol, y, w):
    """Grid search with closed-form amplitudes. y, w: [V, N] -> theta_int [V, P]."""
    atoms = _atoms(model)
    basis = model.basis_fn(atoms, protocol)  # [A, N, L]
    n_lin = basis.shape[-1]
    wy = w * y
    lin_idx = [model.params.index(p) for p in model.linear]
    lo = jnp.asarray([model.lower[i] for i in lin_idx], y.dtype)
    hi = jnp.asarray([model.upper[i] for i in lin_idx], y.dtype)
    yy = jnp.sum(wy * y, axis=-1)[:, None]
    if n_lin == 1:
        # Plain matmuls: b = <w y, B>, g = <w, B^2> for every voxel and atom.
        b0 = basis[..., 0]
        b = wy @ b0.T  # [V, A]
        g = w @ (b0 * b0).T + 1e-8
        c = jnp.clip(b / g, lo[0], hi[0])
        resid = yy - 2 * c * b + c * c * g
        coeff = c[..., None]
    else:
        b = jnp.einsum("vn,anl->val", wy, basis)  # [V, A, L]
        gram = jnp.einsum("vn,anl,anm->valm", w, basis, basis) + 1e-8 * jnp.eye(n_lin, dtype=y.dtype)
        coeff = jnp.clip(jnp.linalg.solve(gram, b[..., None])[..., 0], lo, hi)
        resid = (yy - 2 * jnp.sum(coeff * b, axis=-1)
                 + jnp.einsum("val,valm,vam->va", coeff, gram, coeff))
    best = jnp.argmin(resid, axis=-1)  # [V]
    best_coeff = jnp.take_along_axis(coeff, best[:, None, None], axis=1)[:, 0]
    theta = []
    for p in model.params:
        if p in model.linear:
            theta.append(best_coeff[:, model.linear.index(p)])
        else:
            theta.append(atoms[p][best])
    theta = jnp.stack(theta, axis=-1) / jnp.asarray(model.scale, y.dtype)
    return _project(model, theta)


def _objective_terms(loss, y, nu, w, sigma):
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


def _lm_one(model, protocol, loss, max_iter, tol, lambda_init, theta0, y, w, sigma):
    """Levenberg-Marquardt for one voxel in internal units. Returns (theta, cost, converged)."""

    def predict(theta):
        return model.signal(_split_scaled(model, theta), protocol)

    n_par = theta0.shape[-1]
    eye = jnp.eye(n_par, dtype=theta0.dtype)

    def body(_, state):
        theta, cost, deriv, lam, hist = state
        jac = jax.jacfwd(predict)(theta)  # [N, P]
        grad = jac.T @ deriv
        hess = jac.T @ (w[:, None] * jac)
        diag = jnp.diag(hess)
        damp = lam * (diag + 1e-9 * (jnp.max(diag) + 1e-12)) * eye
        cand = _project(model, theta + spd_solve(hess + damp + 1e-12 * eye, -grad))
        f, d = _objective_terms(loss, y, predict(cand), w, sigma)
        cand_cost = jnp.sum(f)
        ok = jnp.isfinite(cand_cost) & (cand_cost < cost) & jnp.all(jnp.isfinite(cand))
        theta = jnp.where(ok, cand, theta)
        cost = jnp.where(ok, cand_cost, cost)
        deriv = jnp.where(ok, d, deriv)
        lam = jnp.clip(jnp.where(ok, lam * 0.3, lam * 4.0), 1e-7, 1e7)
        hist = jnp.roll(hist, 1).at[0].set(cost)
        return theta, cost, deriv, lam, hist

    f0, d0 = _objective_terms(loss, y, predict(theta0), w, sigma)
    cost0 = jnp.sum(f0)
    hist0 = jnp.full((4,), jnp.inf, theta0.dtype).at[0].set(cost0)
    state0 = (theta0, cost0, d0, jnp.asarray(lambda_init, theta0.dtype), hist0)
    theta, cost, _, _, hist = jax.lax.fori_loop(0, max_iter, body, state0)
    # Converged: over the last three iterations the objective changed by less than tol (relative),
    # or by less than float32 resolution of the data energy (exact fits of noiseless data).
    change = hist[-1] - cost
    floor = 1e-9 * jnp.sum(w * y * y)
    converged = (jnp.isfinite(cost) & jnp.all(jnp.isfinite(theta))
                 & (change <= tol * jnp.abs(cost) + floor))
    return theta, cost, converged


def _crlb_one(model, protocol, theta, w, sigma):
    """Variance bound [P] in internal units^2 at ``theta`` (internal units)."""
    return fisher_variance(lambda t: model.signal(_split_scaled(model, t), protocol), theta, w,
                           sigma)


def _fit_core(model, protocol, y, w, sigma, loss, max_iter, tol, lambda_init):
    """Steps 1-3 of the module docstring. y, w: [V, N]; sigma: [] (<= 0 when unknown).
    Returns (theta_int [V, P], amp [V], per-voxel normalised sigma [V], converged, cost)."""
    amp = jnp.max(jnp.where(w > 0, jnp.abs(y), 0.0), axis=-1)
    amp = jnp.where(amp > 0, amp, 1.0)
    yn = y / amp[:, None]
    sig_n = jnp.where(sigma > 0, sigma, 1.0) / amp
    theta0 = _dictionary_init(model, protocol, yn, w)
    lm = functools.partial(_lm_one, model, protocol, loss, max_iter, tol, lambda_init)
    theta, cost, converged = jax.vmap(lm)(theta0, yn, w, sig_n)
    return theta, amp, sig_n, converged, cost


def _to_physical(model, theta, amp):
    """Internal units -> physical ([V, P]) and the factor ``[V, P]`` that maps one to the other."""
    is_lin = jnp.asarray([p in model.linear for p in model.params])
    factor = jnp.asarray(model.scale, theta.dtype) * jnp.where(is_lin, amp[:, None], 1.0)
    return theta * factor, factor


@functools.partial(jax.jit, static_argnames=("model", "loss", "max_iter", "tol", "lambda_init"))
def _fit_chunk(model, protocol, y, w, sigma, *, loss, max_iter, tol, lambda_init):
    """y, w: [V, N] raw signals and 0/1 weights; sigma: [] (image units, <= 0 when unknown)."""
    theta, amp, sig_n, converged, cost = _fit_core(model, protocol, y, w, sigma, loss, max_iter,
                                                   tol, lambda_init)
    var = jax.vmap(functools.partial(_crlb_one, model, protocol))(theta, w, sig_n)
    var = jnp.where(sigma > 0, var, jnp.nan)
    phys, factor = _to_physical(model, theta, amp)
    return phys, var * factor**2, converged, cost


def fit_signals(model: FitModel, protocol: Protocol, signals, *, max_iter: int = 5,
                tol: float = 1e-6, lambda_init: float = 1e-2) -> dict:
    """The Gaussian least-squares fit of :func:`fit_voxels` as a pure function of an array, to be
    called inside other jitted code (e.g. to condition a network on the voxelwise estimate).

    The same dictionary initialisation and Levenberg-Marquardt steps (a fixed ``max_iter``; no
    CRLB, no chunking, no sharding, no checks of the data: the caller's batch is fitted at once).

    Args:
      model: a :class:`~qmri_jax.fitting.models.FitModel`; ``model.check(protocol)`` is applied.
      protocol: the acquisition with ``N`` images.
      signals: ``[..., N]`` magnitude signals (any leading shape; all samples used).

    Returns:
      ``{param: [...]}`` in physical units for every ``model.params``, plus ``"converged"``
      (bool ``[...]``). All-zero series give finite values (amplitude 0) and are not trusted.
    """
    model.check(protocol)
    y = jnp.asarray(signals, jnp.float32)
    if y.shape[-1] != len(protocol):
        raise ValueError(f"fit_signals: signals [..., {y.shape[-1]}] for protocol "
                         f"{protocol.name!r} with {len(protocol)} images")
    lead = y.shape[:-1]
    y = y.reshape(-1, y.shape[-1])
    theta, amp, _, converged, _ = _fit_core(model, protocol, y, jnp.ones_like(y),
                                            jnp.float32(-1.0), "gaussian", max_iter, tol,
                                            lambda_init)
    phys, _ = _to_physical(model, theta, amp)
    out = {p: phys[:, i].reshape(lead) for i, p in enumerate(model.params)}
    out["converged"] = converged.reshape(lead)
    return out


def _max_chunk(model: FitModel) -> int:
    n_atoms = math.prod(len(g) for g in model.grid)
    # Keep the [V, atoms, L, L] dictionary tensors around 2^24 elements (64 MiB in float32).
    chunk = 2**24 // max(1, n_atoms * len(model.linear) ** 2)
    return int(min(65536, max(1024, chunk)))


def _chunk_size(model: FitModel, n_vox: int, requested: int | None) -> int:
    """Voxels per compiled call: the data split into equal chunks under the memory cap, rounded up
    to a multiple of 1024 so that similar sizes share one compilation."""
    cap = requested or _max_chunk(model)
    n_chunks = max(1, math.ceil(n_vox / cap))
    per = math.ceil(n_vox / n_chunks)
    return int(min(cap, math.ceil(per / 1024) * 1024)) if requested is None else int(cap)


def _voxel_sharding(devices):
    """Sharding that splits the voxel axis over ``devices`` (None when there is only one)."""
    if devices is None:
        devices = jax.local_devices()
    devices = list(devices)
    if len(devices) < 2:
        return None, 1
    mesh = jax.sharding.Mesh(np.asarray(devices), ("voxels",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("voxels")), len(devices)


def fit_voxels(model: FitModel, protocol: Protocol, signals, weights=None, sigma=None,
               options: SolverOptions = SolverOptions(), progress: bool = False,
               devices=None) -> FitResult:
    """Fits ``model`` to every voxel of ``signals``.

    Args:
      model: a :class:`~qmri_jax.fitting.models.FitModel` (see ``get_model``).
      protocol: the acquisition; ``len(protocol) == N``.
      signals: ``[V, N]`` measured (magnitude) signals, finite.
      weights: optional ``[V, N]`` 0/1 (or bool) mask of samples to use; False excludes a sample
        (e.g. clipped pixels). Every voxel needs at least as many valid samples as parameters.
      sigma: noise std of ``signals`` (image units). Needed for the Rician loss and for the CRLB;
        with ``None`` the CRLB is NaN.
      options: solver settings.
      progress: show a progress bar over chunks.
      devices: devices to split the voxels over (default: all local devices; several GPUs, or
        several CPU devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` to use N
        cores). Results do not depend on the split.

    Returns:
      :class:`FitResult`.
    """
    model.check(protocol)
    y = np.asarray(signals, np.float32)
    if y.ndim != 2 or y.shape[1] != len(protocol):
        raise ValueError(f"fit_voxels: signals must be [V, {len(protocol)}] for protocol "
                         f"{protocol.name!r}, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        bad = int(np.sum(~np.all(np.isfinite(y), axis=1)))
        raise ValueError(f"fit_voxels: signals contain NaN/Inf in {bad} voxels; mask them out first")
    if weights is None:
        w = np.ones_like(y)
    else:
        w = np.asarray(weights, np.float32)
        if w.shape != y.shape:
            raise ValueError(f"fit_voxels: weights shape {w.shape} != signals shape {y.shape}")
    if options.loss == "rician" and (sigma is None or sigma <= 0):
        raise ValueError("fit_voxels: the Rician loss needs the noise sigma (> 0)")
    if options.loss == "rician" and "ir_signed" in protocol.kinds:
        raise ValueError(f"fit_voxels: the Rician loss is for magnitude images; protocol "
                         f"{protocol.name!r} has signed (ir_signed) images: use loss='gaussian'")
    sig = np.float32(sigma if sigma is not None else -1.0)
    n_vox = y.shape[0]
    chunk = _chunk_size(model, n_vox, options.chunk_size)
    sharding, n_dev = _voxel_sharding(devices)
    chunk = math.ceil(chunk / n_dev) * n_dev
    outs = []
    starts = range(0, n_vox, chunk)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"fit {model.name}", unit="chunk")
    for s in starts:
        yc, wc = y[s:s + chunk], w[s:s + chunk]
        pad = chunk - yc.shape[0]
        if pad:
            yc = np.concatenate([yc, np.ones((pad, y.shape[1]), np.float32)])
            wc = np.concatenate([wc, np.ones((pad, y.shape[1]), np.float32)])
        if sharding is not None:
            yc, wc = jax.device_put(yc, sharding), jax.device_put(wc, sharding)
        res = _fit_chunk(model, protocol, jnp.asarray(yc), jnp.asarray(wc), jnp.asarray(sig),
                         loss=options.loss, max_iter=options.max_iter, tol=options.tol,
                         lambda_init=options.lambda_init)
        outs.append([np.asarray(r)[: chunk - pad] for r in res])
    phys, var, conv, cost = (np.concatenate([o[i] for o in outs]) for i in range(4))
    too_few = (w > 0).sum(axis=1) < len(model.params)
    conv = conv & ~too_few
    params = {p: phys[:, i] for i, p in enumerate(model.params)}
    crlb = {p: var[:, i] for i, p in enumerate(model.params)}
    return FitResult(params, crlb, conv, cost, None if sigma is None else float(sigma), model.name)
