"""Voxelwise nonlinear least squares / Rician maximum likelihood with CRLB, in JAX.

The pipeline for one chunk of voxels (all under one ``jax.jit``, ``vmap`` over voxels):

1. normalise each voxel by its largest valid |sample| (amplitudes become O(1));
2. a global initialisation: for the inversion-recovery models, variable projection over T1 with
   polarity restoration (:mod:`qmri_jax.fitting.ir_varpro`: the least-squares optimum, null
   position included); for the others a dictionary search over the model's nonlinear-parameter grid
   with the amplitudes solved in closed form for every atom (or the caller's ``start`` values);
3. Levenberg-Marquardt (Marquardt diagonal scaling, projected onto the bounds) on all parameters
   in internal units ``theta / scale``. For the Rician likelihood the gradient is exact and the
   curvature is the Gauss-Newton (high-SNR Fisher) matrix; every step is accepted only if the
   negative log-likelihood decreases;
4. diagnostics at the estimate, from one Jacobian ``J`` (``jax.jacfwd``): the Cramer-Rao lower
   bound ``diag(F^-1)`` with the Gaussian or, for the Rician loss, the Rician Fisher information
   (:mod:`qmri_jax.fitting.crlb`); ``at_bound``; and ``converged``, which needs all of: a finite
   estimate, a Newton decrement ``g^T H^-1 g / 2`` below ``tol`` times the objective (a stationary
   point), no parameter at a bound, a non-zero voxel and, when sigma is known, a signal detected:
   the likelihood-ratio statistic against "no signal" (``nu = 0``; Rician likelihood for magnitude
   data whatever the loss) above the chi-square 0.999 quantile with P degrees of freedom. Pure-noise
   voxels therefore do not count as converged.

Voxels are processed in fixed-size chunks (the last one padded): one compilation, bounded memory.

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

from qmri_jax.fitting import ir_varpro
from qmri_jax.fitting.chunks import chunk_size, covariates_array, voxel_sharding
from qmri_jax.fitting.crlb import fisher_variance, spd_solve
from qmri_jax.fitting.dictionary import dictionary_init
from qmri_jax.fitting.models import FitModel
from qmri_jax.fitting.objective import (no_signal_statistic, no_signal_threshold, objective_terms,
                                        on_bound, project, split_scaled)
from qmri_jax.physics.protocol import Protocol

__all__ = ["FitResult", "fit_voxels", "fit_signals", "SolverOptions"]


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Settings of the voxelwise solver.

    Attributes:
      loss: ``"gaussian"`` (nonlinear least squares) or ``"rician"`` (maximum likelihood for
        magnitude data; needs sigma).
      max_iter: Levenberg-Marquardt iterations (fixed count; converged voxels stop moving).
      tol: Newton decrement (predicted further decrease of the objective), relative to the
        objective, below which an estimate counts as a stationary point.
      chunk_size: voxels per compiled call (``None``: chosen from the dictionary size).
      lambda_init: initial Marquardt damping (``None``: 1e-3 after the variable-projection start,
        which lies close to the optimum, 1e-2 after the dictionary start).
      init: ``"auto"`` (variable projection for the IR models where it applies, else the
        dictionary), ``"varpro"`` or ``"dictionary"``.
    """

    loss: str = "gaussian"
    max_iter: int = 12
    tol: float = 1e-5
    chunk_size: int | None = None
    lambda_init: float | None = None
    init: str = "auto"

    def __post_init__(self):
        if self.loss not in ("gaussian", "rician"):
            raise ValueError(f"SolverOptions.loss must be 'gaussian' or 'rician', got {self.loss!r}")
        if self.init not in ("auto", "varpro", "dictionary"):
            raise ValueError(f"SolverOptions.init must be 'auto', 'varpro' or 'dictionary', got "
                             f"{self.init!r}")
        if self.max_iter < 1:
            raise ValueError(f"SolverOptions.max_iter must be >= 1, got {self.max_iter}")


@dataclasses.dataclass
class FitResult:
    """Voxelwise fit output; every array is ``[V]`` (or ``[V, N]`` for ``fitted``).

    Attributes:
      params: parameter name -> estimate (physical units).
      crlb: parameter name -> Cramer-Rao lower bound on the variance (units squared); NaN where the
        Fisher information is singular or sigma is unknown.
      converged: True where the solver reached a finite, interior, stationary estimate of a voxel
        with signal (module docstring).
      at_bound: True where a parameter sits on one of its bounds (not a free optimum).
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
    at_bound: np.ndarray | None = None

    def crlb_sd(self, name: str) -> np.ndarray:
        """``sqrt(CRLB)`` of one parameter: the smallest achievable standard deviation."""
        return np.sqrt(self.crlb[name])


def _signal_fn(model, protocol, cov):
    """theta_int [P] -> model signal [N] for one voxel with covariate values ``cov [C]``."""
    known = {c: cov[i] for i, c in enumerate(model.covariates)}
    return lambda theta: model.signal({**split_scaled(model, theta), **known}, protocol)


def _lm_one(model, protocol, loss, max_iter, lambda_init, theta0, y, w, sigma, cov):
    """Levenberg-Marquardt for one voxel in internal units. Returns (theta, cost)."""
    predict = _signal_fn(model, protocol, cov)

    n_par = theta0.shape[-1]
    eye = jnp.eye(n_par, dtype=theta0.dtype)

    def body(_, state):
        theta, cost, deriv, lam = state
        jac = jax.jacfwd(predict)(theta)  # [N, P]
        grad = jac.T @ deriv
        hess = jac.T @ (w[:, None] * jac)
        diag = jnp.diag(hess)
        damp = lam * (diag + 1e-9 * (jnp.max(diag) + 1e-12)) * eye
        cand = project(model, theta + spd_solve(hess + damp + 1e-12 * eye, -grad))
        f, d = objective_terms(loss, y, predict(cand), w, sigma)
        cand_cost = jnp.sum(f)
        ok = jnp.isfinite(cand_cost) & (cand_cost < cost) & jnp.all(jnp.isfinite(cand))
        theta = jnp.where(ok, cand, theta)
        cost = jnp.where(ok, cand_cost, cost)
        deriv = jnp.where(ok, d, deriv)
        lam = jnp.clip(jnp.where(ok, lam * 0.3, lam * 4.0), 1e-7, 1e7)
        return theta, cost, deriv, lam

    f0, d0 = objective_terms(loss, y, predict(theta0), w, sigma)
    state0 = (theta0, jnp.sum(f0), d0, jnp.asarray(lambda_init, theta0.dtype))
    theta, cost, _, _ = jax.lax.fori_loop(0, max_iter, body, state0)
    return theta, cost


def _diagnose(model, protocol, loss, tol, theta, cost, y, w, sigma, cov, sigma_known):
    """At the estimate of one voxel: (CRLB variance [P] in internal units^2, converged, at_bound)."""
    predict = _signal_fn(model, protocol, cov)

    jac = jax.jacfwd(predict)(theta)
    nu = predict(theta)
    _, d = objective_terms(loss, y, nu, w, sigma)
    grad = jac.T @ d
    hess = jac.T @ (w[:, None] * jac)
    n_par = theta.shape[-1]
    ridge = 1e-9 * (jnp.trace(hess) + 1e-20) * jnp.eye(n_par, dtype=theta.dtype)
    decrement = 0.5 * grad @ spd_solve(hess + ridge, grad)
    energy = jnp.sum(w * y * y)
    stationary = decrement <= tol * jnp.abs(cost) + 1e-9 * energy
    at_bound = on_bound(model, theta)
    magnitude = "ir_signed" not in protocol.kinds
    lr = no_signal_statistic(y[None], nu[None], w[None], sigma[None, None], magnitude)[0]
    detected = ~sigma_known | (lr > no_signal_threshold(n_par))
    var = fisher_variance(predict, theta, w, sigma, loss, jac=jac)
    converged = (jnp.isfinite(cost) & jnp.all(jnp.isfinite(theta)) & stationary & ~at_bound
                 & detected)
    return var, converged, at_bound


def _resolve_init(model, protocol, init):
    """``"varpro"`` or ``"dictionary"`` for :class:`SolverOptions`' ``init`` (outside ``jit``)."""
    return "varpro" if init != "dictionary" and ir_varpro.supports(model, protocol) else "dictionary"


def _fit_core(model, protocol, y, w, sigma, cov, loss, max_iter, tol, lambda_init, init,
              start=None):
    """Steps 1-4 of the module docstring. y, w: [V, N]; sigma: [] (<= 0 when unknown); cov: [V, C]
    covariate values; start: [V, P] physical starting values for ``init == "start"`` (step 2
    skipped).
    Returns (theta_int [V, P], amp [V], CRLB variance [V, P] (internal units), converged,
    at_bound, cost)."""
    amp_raw = jnp.max(jnp.where(w > 0, jnp.abs(y), 0.0), axis=-1)
    amp = jnp.where(amp_raw > 0, amp_raw, 1.0)
    yn = y / amp[:, None]
    sigma_known = sigma > 0
    sig_n = jnp.where(sigma_known, sigma, 1.0) / amp
    if init == "varpro":
        theta, var, converged, at_bound, cost = ir_varpro.fit_ir(
            model, protocol, yn, w, sig_n, sigma_known, loss, max_iter, tol, lambda_init)
        return theta, amp, var, converged & (amp_raw > 0), at_bound, cost
    w = jnp.broadcast_to(w, y.shape)  # [1, N] (the same weights in every voxel) -> [V, N]
    cov = jnp.broadcast_to(cov, (y.shape[0], cov.shape[1]))  # [1, 0] when there are none
    if init == "start":
        theta0 = project(model, start / _to_physical(model, jnp.ones_like(start), amp)[1])
    else:
        theta0 = dictionary_init(model, protocol, yn, w, cov)
    lm = functools.partial(_lm_one, model, protocol, loss, max_iter, lambda_init)
    theta, cost = jax.vmap(lm)(theta0, yn, w, sig_n, cov)
    diag = functools.partial(_diagnose, model, protocol, loss, tol)
    var, converged, at_bound = jax.vmap(diag, in_axes=(0, 0, 0, 0, 0, 0, None))(
        theta, cost, yn, w, sig_n, cov, sigma_known)
    converged = converged & (amp_raw > 0)
    return theta, amp, var, converged, at_bound, cost


def _to_physical(model, theta, amp):
    """Internal units -> physical ([V, P]) and the factor ``[V, P]`` that maps one to the other."""
    is_lin = jnp.asarray([p in model.linear for p in model.params])
    factor = jnp.asarray(model.scale, theta.dtype) * jnp.where(is_lin, amp[:, None], 1.0)
    return theta * factor, factor


@functools.partial(jax.jit, static_argnames=("model", "loss", "max_iter", "tol", "lambda_init",
                                             "init"))
def _fit_chunk(model, protocol, y, w, sigma, cov, start, *, loss, max_iter, tol, lambda_init,
               init):
    """y: [V, N] raw signals; w: [V, N] 0/1 weights, or [1, N] for the same weights in every
    voxel; sigma: [] (image units, <= 0 when unknown); cov: [V, C] covariate values ([1, 0]
    without covariates); start: [V, P] starting values for ``init == "start"`` (else [1, 0]).
    Returns one ``[V, 2P + 3]`` array (one transfer to the host):
    parameters, CRLB variances, converged, at_bound, cost."""
    theta, amp, var, converged, at_bound, cost = _fit_core(model, protocol, y, w, sigma, cov, loss,
                                                           max_iter, tol, lambda_init, init, start)
    var = jnp.where(sigma > 0, var, jnp.nan)
    phys, factor = _to_physical(model, theta, amp)
    flags = jnp.stack([converged, at_bound], axis=-1).astype(phys.dtype)
    return jnp.concatenate([phys, var * factor**2, flags, cost[:, None]], axis=-1)


def fit_signals(model: FitModel, protocol: Protocol, signals, *, valid=None, max_iter: int = 5,
                tol: float = 1e-6, lambda_init: float = 1e-2) -> dict:
    """The Gaussian least-squares fit of :func:`fit_voxels` as a pure function of an array, to be
    called inside other jitted code (e.g. to condition a network on the voxelwise estimate): the
    same start and Levenberg-Marquardt steps (a fixed ``max_iter``; no CRLB, no chunking, no
    sharding, no checks of the data: the caller's batch is fitted at once).

    Args:
      model: a :class:`~qmri_jax.fitting.models.FitModel`; ``model.check(protocol)`` is applied.
      protocol: the acquisition with ``N`` images.
      signals: ``[..., N]`` magnitude signals (any leading shape).
      valid: ``[..., N]`` bool, False for samples that are not measurements (clipped, missing):
        left out, as :func:`fit_voxels` does (default: all used).

    Returns:
      ``{param: [...]}`` in physical units for every ``model.params``, plus ``"converged"``
      (bool ``[...]``). All-zero series give finite values (amplitude 0) and are not trusted.
    """
    model.check(protocol)
    if model.covariates:
        raise ValueError(f"fit_signals: model {model.name!r} needs covariates "
                         f"{model.covariates}; use fit_voxels")
    y = jnp.asarray(signals, jnp.float32)
    if y.shape[-1] != len(protocol):
        raise ValueError(f"fit_signals: signals [..., {y.shape[-1]}] for protocol "
                         f"{protocol.name!r} with {len(protocol)} images")
    lead, n = y.shape[:-1], y.shape[-1]
    w = jnp.broadcast_to(True if valid is None else jnp.asarray(valid), y.shape).reshape(-1, n)
    y = jnp.where(w, y.reshape(-1, n), 0.0)  # an invalid sample (even NaN) is never fitted
    theta, amp, _, converged, _, _ = _fit_core(
        model, protocol, y, w.astype(y.dtype), jnp.float32(-1.0), jnp.zeros((y.shape[0], 0)),
        "gaussian", max_iter, tol, lambda_init, _resolve_init(model, protocol, "auto"))
    phys, _ = _to_physical(model, theta, amp)
    out = {p: phys[:, i].reshape(lead) for i, p in enumerate(model.params)}
    out["converged"] = converged.reshape(lead)
    return out


def fit_voxels(model: FitModel, protocol: Protocol, signals, weights=None, sigma=None,
               options: SolverOptions = SolverOptions(), progress: bool = False,
               devices=None, covariates: dict | None = None,
               start: dict | None = None) -> FitResult:
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
      covariates: ``{name: [V]}`` for every name in ``model.covariates`` (known per-voxel inputs,
        e.g. a B1 map), finite.
      start: ``{param: [V]}`` physical starting values for every ``model.params`` (e.g. a fit of
        a simpler model): the Levenberg-Marquardt steps start there instead of at the global
        start (``options.init`` is then not used).

    Returns:
      :class:`FitResult`.
    """
    model.check(protocol)
    if options.init == "varpro" and not ir_varpro.supports(model, protocol):
        raise ValueError(f"fit_voxels: init='varpro' needs an IR model (ir, ir3, ir_fse) on one TR "
                         f"and images all magnitude or all signed; got model {model.name!r}, "
                         f"protocol {protocol.name!r} {sorted(set(protocol.kinds))}")
    y = np.asarray(signals, np.float32)
    if y.ndim != 2 or y.shape[1] != len(protocol):
        raise ValueError(f"fit_voxels: signals must be [V, {len(protocol)}] for protocol "
                         f"{protocol.name!r}, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        bad = int(np.sum(~np.all(np.isfinite(y), axis=1)))
        raise ValueError(f"fit_voxels: signals contain NaN/Inf in {bad} voxels; mask them out first")
    w = None if weights is None else np.asarray(weights, np.float32)  # None: one row of ones
    if w is not None and w.shape != y.shape:
        raise ValueError(f"fit_voxels: weights shape {w.shape} != signals shape {y.shape}")
    if options.loss == "rician" and (sigma is None or sigma <= 0):
        raise ValueError("fit_voxels: the Rician loss needs the noise sigma (> 0)")
    if options.loss == "rician" and "ir_signed" in protocol.kinds:
        raise ValueError(f"fit_voxels: the Rician loss is for magnitude images; protocol "
                         f"{protocol.name!r} has signed (ir_signed) images: use loss='gaussian'")
    cov = covariates_array(model, covariates, y.shape[0])
    sig = np.float32(sigma if sigma is not None else -1.0)
    init = _resolve_init(model, protocol, options.init) if start is None else "start"
    st = _start_array(model, start, y.shape[0])
    lam = options.lambda_init if options.lambda_init is not None else (
        1e-3 if init == "varpro" else 1e-2)
    n_vox = y.shape[0]
    sharding, n_dev = voxel_sharding(devices)
    chunk = chunk_size(model, n_vox, options.chunk_size, init, n_dev)
    chunk = math.ceil(chunk / n_dev) * n_dev
    row = np.ones((1, y.shape[1]), np.float32)  # weights when all samples are used
    no_cov, cov_row = cov.shape[1] == 0, np.zeros((1, 0), np.float32)  # [1, 0]: broadcast inside
    put = (lambda a: a) if sharding is None else (lambda a: jax.device_put(a, sharding))
    outs, pending = [], None  # pending: the last dispatched chunk and its number of real voxels
    starts = range(0, n_vox, chunk)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc=f"fit {model.name}", unit="chunk")
    for s in starts:
        yc, cc, sc = y[s:s + chunk], cov[s:s + chunk], st[s:s + chunk]
        wc = None if w is None else w[s:s + chunk]
        pad = chunk - yc.shape[0]
        if pad:
            yc = np.concatenate([yc, np.ones((pad, y.shape[1]), np.float32)])
            wc = wc if w is None else np.concatenate([wc, np.ones((pad, y.shape[1]), np.float32)])
            cc = cc if no_cov else np.concatenate([cc, np.repeat(cc[:1], pad, 0)])
            sc = sc if start is None else np.concatenate([sc, np.repeat(sc[:1], pad, 0)])
        res = _fit_chunk(
            model, protocol, put(yc), row if w is None else put(wc), sig,
            cov_row if no_cov else put(cc), cov_row if start is None else put(sc),
            loss=options.loss, max_iter=options.max_iter,
            tol=options.tol, lambda_init=lam, init=init)
        if pending is not None:  # the previous chunk to the host while this one computes (async)
            outs.append(np.asarray(pending[0])[: pending[1]])
        pending = (res, chunk - pad)
    if pending is not None:
        outs.append(np.asarray(pending[0])[: pending[1]])
    n_par = len(model.params)  # columns: parameters, variances, converged, at_bound, cost
    out = np.concatenate(outs) if outs else np.zeros((0, 2 * n_par + 3), np.float32)
    cols = np.ascontiguousarray(out.T)
    n_used = y.shape[1] if w is None else (w > 0).sum(axis=1)
    conv, at_bound, cost = (cols[-3] > 0.5) & ~(n_used < n_par), cols[-2] > 0.5, cols[-1]
    params = {p: cols[i] for i, p in enumerate(model.params)}
    crlb = {p: cols[n_par + i] for i, p in enumerate(model.params)}
    return FitResult(params, crlb, conv, cost, None if sigma is None else float(sigma), model.name,
                     at_bound)


def _start_array(model, start, n_vox):
    """``{param: [V]}`` -> ``[V, P]`` float32 (checked), or ``[1, 0]`` for no start."""
    if start is None:
        return np.zeros((1, 0), np.float32)
    if set(start) != set(model.params):
        raise ValueError(f"fit_voxels: start needs every parameter of model {model.name!r} "
                         f"{list(model.params)}, got {sorted(start)}")
    st = np.stack([np.asarray(start[p], np.float32) for p in model.params], axis=-1)
    if st.shape != (n_vox, len(model.params)) or not np.all(np.isfinite(st)):
        raise ValueError(f"fit_voxels: start values must be finite [V={n_vox}] arrays per "
                         f"parameter, got shape {st.shape[:-1]} with "
                         f"{int(np.sum(~np.isfinite(st)))} non-finite")
    return st
