"""Recurrent inference machine (RIM) for relaxometry: a learned, model-based iterative solver.

Each of ``num_iterations`` steps feeds the current estimate and the gradient of the data term
through the signal model (``jax.grad`` of the Gaussian negative log-likelihood of the weighted
images, with the amplitude profiled out per voxel: ``a = <b, y> / <b, b>``) to a convolutional GRU
whose output updates the estimate (Putzky & Welling, arXiv:1706.04008; Sabidussi et al., "Recurrent
inference machines as inverse problem solvers for MR relaxometry", MedIA 74:102220, 2021).

Estimated quantities live in [-1, 1]: T1 on the log scale of
:func:`qmri_jax.physics.units.from_unit_range` and, when the protocol's signal depends on it, the
inversion efficiency k, linear over the RIM's own ``k_range`` (default 0.5-1.05: with the shared
map scaling's 0.5-1.25, made for the DDPM's apparent k > 1, the trained RIM put every T1 at its
10 ms bound). PD comes from a head on the final hidden state.
``[B, H, W, N] -> [B, H, W, len(targets)]`` in physical units.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qmri_jax.physics.protocol import get_protocol, simulate
from qmri_jax.physics.units import from_unit_range

__all__ = ["RIM", "profiled_nll"]


K_RANGE = (0.5, 1.05)


def _unscale(x, name, k_range=K_RANGE):
    """[-1, 1] -> physical: k linear over ``k_range`` (``B = 1 + k``), T1 as
    :func:`from_unit_range`."""
    if name in ("k", "B"):
        lo, hi = k_range
        k = (jnp.clip(x, -1, 1) + 1) / 2 * (hi - lo) + lo
        return k if name == "k" else 1.0 + k
    return from_unit_range(x, name)


def profiled_nll(xs, images, protocol, names, k_range=K_RANGE):
    """Per-voxel Gaussian NLL ``0.5 ||y - a b(x)||^2`` with the amplitude ``a`` profiled out.

    Args:
      xs: scaled estimates ``[..., len(names)]`` in [-1, 1] (names from ``("T1", "k", "B")``).
      images: ``[..., N]``.
      protocol: the Protocol.
      names: the quantities in ``xs``.
      k_range: the physical range of k's [-1, 1].

    Returns:
      ``(nll [...], amplitude [...])``.
    """
    # T2 only scales every image by e^{-TE/T2}: in ``a``. Without k or B a perfect inversion.
    maps = {"PD": 1.0, "T2": 1e4}
    for i, n in enumerate(names):
        maps[n] = _unscale(xs[..., i], n, k_range)
    b = simulate(maps, protocol)
    a = jnp.sum(b * images, -1) / jnp.maximum(jnp.sum(b * b, -1), 1e-12)
    r = images - a[..., None] * b
    return 0.5 * jnp.sum(r * r, -1), a


class ConvGRU(nn.Module):
    features: int

    @nn.compact
    def __call__(self, h, x):
        hx = jnp.concatenate([h, x], -1)
        z = nn.sigmoid(nn.Conv(self.features, (3, 3))(hx))
        r = nn.sigmoid(nn.Conv(self.features, (3, 3))(hx))
        c = jnp.tanh(nn.Conv(self.features, (3, 3))(jnp.concatenate([r * h, x], -1)))
        return (1 - z) * h + z * c


class RIM(nn.Module):
    """Attributes: ``protocol`` (name), ``targets`` (output order, from T1/PD/k, or B = 1 + k for
    k, the qMRI Diffusor's form), ``features``,
    ``num_iterations``, ``out_scale`` (unused scale of the PD head, kept for the model registry),
    ``k_range`` (the physical range of the k estimate)."""

    protocol: str = "nist_vir"
    targets: Sequence[str] = ("T1", "PD", "k")
    features: int = 32
    num_iterations: int = 6
    out_scale: Sequence[float] = (1000.0, 1.0, 1.0)
    k_range: Sequence[float] = K_RANGE

    @nn.compact
    def __call__(self, images, train: bool = False):
        prot = get_protocol(self.protocol)
        est = tuple(n for n in ("T1", "k", "B") if n in self.targets)
        if {"k", "B"} <= set(est):
            raise ValueError("RIM: targets k and B are one quantity (B = 1 + k); give one")
        b, h, w, _ = images.shape
        xs = jnp.zeros((b, h, w, len(est)))
        hidden = jnp.zeros((b, h, w, self.features))
        norm = jnp.sqrt(jnp.mean(images**2, axis=-1, keepdims=True)) + 1e-6
        y = images / norm  # the data term in units of the voxel's signal level
        k_range = tuple(self.k_range)
        grad_fn = jax.grad(lambda x: jnp.sum(profiled_nll(x, y, prot, est, k_range)[0]))
        gru = ConvGRU(self.features)
        encode = nn.Conv(self.features, (3, 3))
        decode = nn.Conv(len(est), (3, 3), kernel_init=nn.initializers.zeros)
        for _ in range(self.num_iterations):
            g = grad_fn(xs)
            g = g / (1.0 + jnp.abs(g))  # bounded input whatever the gradient scale
            inp = nn.relu(encode(jnp.concatenate([xs, g, y], -1)))
            hidden = gru(hidden, inp)
            xs = jnp.clip(xs + decode(hidden), -1.0, 1.0)
        pd = jax.nn.softplus(nn.Conv(1, (3, 3))(jnp.concatenate([hidden, y], -1)))[..., 0]
        out = {"PD": pd}
        for i, n in enumerate(est):
            out[n] = _unscale(xs[..., i], n, k_range)
        return jnp.stack([out[n] for n in self.targets], axis=-1)
