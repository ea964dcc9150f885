"""Dictionary initialisation: a grid over the nonlinear parameters with the amplitudes solved in
closed form for every atom (weighted variable projection), the global start of the voxelwise fits
of every model without a specialised initialiser."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qmri_jax.fitting.models import FitModel
from qmri_jax.fitting.objective import project

__all__ = ["dictionary_init"]


def _atoms(model: FitModel):
    grids = [np.asarray(g, np.float32) for g in model.grid]
    mesh = np.meshgrid(*grids, indexing="ij")
    return {p: jnp.asarray(m.ravel()) for p, m in zip(model.nonlinear, mesh)}


def dictionary_init(model, protocol, y, w, cov=None):
    """Grid search with closed-form amplitudes. y, w: [V, N]; cov: [V, C] covariate values (the
    dictionary is then per voxel) -> theta_int [V, P]."""
    atoms = _atoms(model)
    if model.covariates:
        known = {c: cov[:, i][:, None] for i, c in enumerate(model.covariates)}
        basis = model.basis_fn({**{p: a[None] for p, a in atoms.items()}, **known}, protocol)
        return _per_voxel_init(model, atoms, basis, y, w)  # basis [V, A, N, L]
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
    return _select(model, atoms, coeff, resid, y.dtype)


def _per_voxel_init(model, atoms, basis, y, w):
    """The one-amplitude grid search with a dictionary per voxel (basis [V, A, N, 1]; a model
    with covariates has one amplitude, checked by ``FitModel``)."""
    b0 = basis[..., 0]
    wy = w * y
    b = jnp.einsum("vn,van->va", wy, b0)
    g = jnp.einsum("vn,van->va", w, b0 * b0) + 1e-8
    i = model.params.index(model.linear[0])
    c = jnp.clip(b / g, model.lower[i], model.upper[i])
    resid = jnp.sum(wy * y, axis=-1)[:, None] - 2 * c * b + c * c * g
    return _select(model, atoms, c[..., None], resid, y.dtype)


def _select(model, atoms, coeff, resid, dtype):
    """The best atom per voxel -> theta_int [V, P]."""
    best = jnp.argmin(resid, axis=-1)  # [V]
    best_coeff = jnp.take_along_axis(coeff, best[:, None, None], axis=1)[:, 0]
    theta = []
    for p in model.params:
        if p in model.linear:
            theta.append(best_coeff[:, model.linear.index(p)])
        else:
            theta.append(atoms[p][best])
    theta = jnp.stack(theta, axis=-1) / jnp.asarray(model.scale, dtype)
    return project(model, theta)
