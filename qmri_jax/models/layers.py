"""Shared Linen building blocks: conv-norm-act blocks, residual blocks, attention gates, heads.

Spatial rank (2D or 3D) follows the input: kernels are ``(k,) * (x.ndim - 2)`` for ``[B, *S, C]``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GroupNorm", "Norm", "ConvBlock", "ResidualBlock", "AttentionGate", "PositiveHead",
           "UpConv2x"]


def _ks(x, k):
    return (k,) * (x.ndim - 2)


class GroupNorm(nn.Module):
    """Group normalisation over ``[B, *S, C]`` (Wu & He, ECCV 2018), numerically the same as
    ``flax.linen.GroupNorm(num_groups)`` (its default fast variance ``E[x^2] - E[x]^2``, same
    parameter names ``scale``/``bias``, so checkpoints are interchangeable), computed as per-channel
    spatial sums, a tiny per-group reduction and one fused multiply-add. On XLA:CPU that is ~3x
    faster forward and ~2x faster forward+backward than Flax's reshape to ``[B, *S, G, C/G]``
    (8 x 64 x 64 x 128: 4.2 vs 12.1 ms and 14.9 vs 32.4 ms on 2 cores)."""

    num_groups: int = 32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels do not divide into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        axes = tuple(range(1, x.ndim - 1))
        b, g = x.shape[0], self.num_groups
        m1 = jnp.mean(x, axes).reshape(b, g, -1).mean(-1)  # [B, G]
        m2 = jnp.mean(jnp.square(x), axes).reshape(b, g, -1).mean(-1)
        inv = jax.lax.rsqrt(jnp.maximum(m2 - jnp.square(m1), 0.0) + self.epsilon)
        a = jnp.repeat(inv, c // g, axis=1) * scale  # [B, C]
        shift = bias - jnp.repeat(m1, c // g, axis=1) * a
        bshape = (b,) + (1,) * (x.ndim - 2) + (c,)
        return x * a.reshape(bshape) + shift.reshape(bshape)


class Norm(nn.Module):
    """``"batch"`` (running statistics in the ``batch_stats`` collection), ``"group"``, ``"none"``."""

    kind: str = "batch"

    @nn.compact
    def __call__(self, x, train: bool):
        if self.kind == "batch":
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        if self.kind == "group":
            return GroupNorm(num_groups=min(8, x.shape[-1]))(x)
        if self.kind == "none":
            return x
        raise ValueError(f"norm={self.kind!r}: expected 'batch', 'group' or 'none'")


class ConvBlock(nn.Module):
    """``num_convs`` x (conv k x k -> norm -> ReLU), optional dropout after the last."""

    features: int
    num_convs: int = 2
    norm: str = "batch"
    dropout: float = 0.0
    dilation: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(self.num_convs):
            x = nn.Conv(self.features, _ks(x, 3), kernel_dilation=self.dilation,
                        use_bias=self.norm == "none")(x)
            x = nn.relu(Norm(self.norm)(x, train))
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


class ResidualBlock(nn.Module):
    """Pre-activation residual block (norm-ReLU-conv x 2) with a 1x1 projection shortcut when the
    channel count changes (He et al., ECCV 2016)."""

    features: int
    norm: str = "batch"
    dilation: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool):
        shortcut = x
        if x.shape[-1] != self.features:
            shortcut = nn.Conv(self.features, _ks(x, 1), name="projection")(x)
        h = x
        for i in range(2):
            h = nn.relu(Norm(self.norm)(h, train))
            if i == 1 and self.dropout > 0:
                h = nn.Dropout(self.dropout, deterministic=not train)(h)
            h = nn.Conv(self.features, _ks(h, 3), kernel_dilation=self.dilation)(h)
        return shortcut + h


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al., MIDL 2018):
    ``alpha = sigmoid(psi(relu(W_x x + W_g g)))``, returns ``alpha * x``; ``g`` is the coarser gating
    signal, already resized to ``x``'s grid."""

    inter_features: int

    @nn.compact
    def __call__(self, x, g):
        theta = nn.Conv(self.inter_features, _ks(x, 1), use_bias=False)(x)
        phi = nn.Conv(self.inter_features, _ks(g, 1))(g)
        alpha = nn.sigmoid(nn.Conv(1, _ks(x, 1))(nn.relu(theta + phi)))
        return x * alpha


class PositiveHead(nn.Module):
    """1x1 conv to ``len(scale)`` channels, then ``softplus(.) * scale``: positive outputs in
    physical units (``scale`` e.g. ``(1000 ms, 100 ms, 1)`` for T1, T2, PD)."""

    scale: Sequence[float]

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(len(self.scale), _ks(x, 1))(x)
        return jax.nn.softplus(y) * jnp.asarray(self.scale, y.dtype)


class UpConv2x(nn.Module):
    """2x up-sampling by a transposed convolution with kernel 2 and stride 2 (2D or 3D).

    With stride equal to the kernel the output blocks do not overlap, so the transposed conv is
    one matmul ``[..., C_in] @ [C_in, 2^d C_out]`` followed by a depth-to-space shuffle: the same
    operation and parameter count as ``nn.ConvTranspose(features, (2,)*d, (2,)*d)`` (equal to it
    with the kernel flipped spatially, Flax's convention), but its gradient is ~20x cheaper on
    XLA:CPU than the dilated convolution XLA emits for ConvTranspose.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        nd = x.ndim - 2
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*(2,) * nd, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        k = jnp.moveaxis(kernel, -2, 0).reshape(x.shape[-1], -1)  # [C_in, 2^d * C_out]
        y = (x @ k).reshape(*x.shape[:-1], *(2,) * nd, self.features)
        # [B, s1, .., sd, 2, .., 2, C] -> [B, s1, 2, s2, 2, .., C] -> [B, 2 s1, .., 2 sd, C]
        perm = [0]
        for i in range(nd):
            perm += [1 + i, 1 + nd + i]
        y = jnp.transpose(y, perm + [1 + 2 * nd])
        shape = [x.shape[0]] + [2 * s for s in x.shape[1:-1]] + [self.features]
        return y.reshape(shape) + bias
