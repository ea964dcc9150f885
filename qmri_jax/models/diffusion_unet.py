"""Time-conditioned U-Net for conditional DDPMs (the "qMRI Diffusor" network).

``DiffusionUNet(x_t [B, H, W, C_map], t [B], condition [B, H, W, C_img]) -> [B, H, W, C_map]``:
the noisy maps and the weighted images are concatenated on the channel axis; ``t`` enters through a
sinusoidal embedding and an MLP added to every residual block. The layout is Ho et al. (2020)'s, as in MONAI's ``DiffusionModelUNet``: GroupNorm/SiLU
residual blocks, stride-2 convolutions down, nearest-neighbour up-sampling plus a convolution up,
every intermediate activation of the way down fed to one residual block of the way up,
self-attention at the levels listed in ``attention_levels`` and always in the bottleneck.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.models.layers import GroupNorm

__all__ = ["DiffusionUNet", "UpConv", "VoxelDenoiser", "timestep_embedding", "upsample_conv"]


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding ``[B, dim]`` of integer steps ``t [B]`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _gn(x):
    return GroupNorm(num_groups=min(32, x.shape[-1] // 4 or 1))(x)


class ResBlock(nn.Module):
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.silu(_gn(x)))
        h = h + nn.Dense(self.features, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.silu(_gn(h)))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), dtype=self.dtype)(x)
        return x + h


class SelfAttention(nn.Module):
    heads: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = _gn(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(y, y)
        return x + y.reshape(b, h, w, c)


def _down2x(x, features, name, dtype):
    """Stride-2 3x3 convolution (the DDPM / MONAI down-sampler)."""
    return nn.Conv(features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name=name,
                   dtype=dtype)(x)


# Nearest 2x up-sampling followed by a 3x3 convolution (padding 1), computed without forming the
# up-sampled image: output pixel (2i + a, 2j + b) sees input rows {i-1, i, i} (a = 0) or
# {i, i, i+1} (a = 1), and likewise for columns, so each of the four output phases is a 2x2
# convolution of the input with the 3x3 kernel's taps summed as ``_PHASE_ROWS[a] @ W @
# _PHASE_ROWS[b]^T``; zero padding maps onto zero padding at the borders. The same function and
# parameters with 16 instead of 36 multiply-adds per output pixel (4/9).
_PHASE_ROWS = (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], np.float32),
               np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32))
_PHASE_PAD = ((1, 0), (0, 1))


def upsample_conv(x, kernel, bias):
    """``conv3x3(nearest_up2x(x), kernel) + bias`` for ``x [B, H, W, C]``, ``kernel [3, 3, C, O]``
    (HWIO, padding 1, as ``flax.linen.Conv``) -> ``[B, 2H, 2W, O]``, by four 2x2 phase
    convolutions at the input resolution."""
    b, h, w, _ = x.shape
    rows = []
    for a in range(2):
        cols = []
        for c in range(2):
            k = jnp.einsum("ij,kl,jlxo->ikxo", _PHASE_ROWS[a], _PHASE_ROWS[c], kernel)
            cols.append(jax.lax.conv_general_dilated(
                x, k.astype(x.dtype), (1, 1), (_PHASE_PAD[a], _PHASE_PAD[c]),
                dimension_numbers=("NHWC", "HWIO", "NHWC")))
        rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (b), O]
    y = jnp.stack(rows, axis=2)  # [B, H, 2 (a), W, 2 (b), O]
    return y.reshape(b, 2 * h, 2 * w, -1) + bias.astype(x.dtype)


class UpConv(nn.Module):
    """Nearest-neighbour 2x up-sampling then a 3x3 convolution (the DDPM / MONAI up-sampler), with
    ``flax.linen.Conv``'s parameters (``kernel [3, 3, C, O]``, ``bias``) and initialisers, computed
    by :func:`upsample_conv`."""

    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return upsample_conv(x, kernel, bias)


class DiffusionUNet(nn.Module):
    """Attributes: ``features`` per level (e.g. ``(128, 256, 256)``), ``out_channels``,
    ``blocks_per_level`` (residual blocks per level on the way down; the way up has one more, each
    consuming one stored activation as in Ho et al. 2020 and MONAI's ``DiffusionModelUNet``),
    ``attention_levels`` (indices), ``emb_dim`` (time-embedding width; 0: 4 x
    ``features[0]``, the sinusoid itself ``features[0]`` wide, as MONAI), ``dtype`` (computation
    dtype: ``jnp.bfloat16`` runs the convolutions, dense layers and attention in bfloat16 with
    float32 parameters and GroupNorm statistics; the output is always float32)."""

    features: Sequence[int] = (32, 64, 64)
    out_channels: int = 3
    blocks_per_level: int = 1
    attention_levels: Sequence[int] = ()
    emb_dim: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_t, t, condition):
        factor = 2 ** (len(self.features) - 1)
        if any(s % factor for s in x_t.shape[1:3]):
            raise ValueError(f"DiffusionUNet: spatial shape {x_t.shape[1:3]} must divide by "
                             f"{factor}")
        emb_dim = self.emb_dim or 4 * self.features[0]
        emb = timestep_embedding(t, self.features[0])
        dt = self.dtype
        emb = nn.Dense(emb_dim, dtype=dt)(nn.silu(nn.Dense(emb_dim, dtype=dt)(emb)))
        # The top-level convolutions keep the names Flax gave them when the up-sampler was an
        # nn.Conv (Conv_0, Conv_1, ... in call order), so checkpoints stay interchangeable.
        n_conv = itertools.count()

        def conv_name():
            return f"Conv_{next(n_conv)}"

        x = nn.Conv(self.features[0], (3, 3), name=conv_name(), dtype=dt)(
            jnp.concatenate([x_t, condition], axis=-1).astype(dt))
        skips = [x]
        last = len(self.features) - 1
        for i, f in enumerate(self.features):
            for _ in range(self.blocks_per_level):
                x = ResBlock(f, dt)(x, emb)
                if i in self.attention_levels:
                    x = SelfAttention(dtype=dt)(x)
                skips.append(x)
            if i < last:
                x = _down2x(x, f, conv_name(), dt)
                skips.append(x)
        x = ResBlock(self.features[-1], dt)(x, emb)
        x = SelfAttention(dtype=dt)(x)
        x = ResBlock(self.features[-1], dt)(x, emb)
        for i in reversed(range(len(self.features))):
            for _ in range(self.blocks_per_level + 1):
                x = ResBlock(self.features[i], dt)(jnp.concatenate([x, skips.pop()], axis=-1),
                                                   emb)
                if i in self.attention_levels:
                    x = SelfAttention(dtype=dt)(x)
            if i > 0:
                x = UpConv(self.features[i], name=conv_name())(x)
        x = nn.silu(_gn(x))
        x = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros,
                    name=conv_name(), dtype=dt)(x)
        return x.astype(jnp.float32)


class VoxelDenoiser(nn.Module):
    """A per-voxel denoiser with the :class:`DiffusionUNet` call signature: ``(x_t [B, ..., C_map],
    t [B], condition [B, ..., C_img]) -> [B, ..., C_map]`` for any number
    of spatial axes (none included).

    Every layer acts on one voxel's channels (the noisy maps concatenated with that voxel's
    weighted images): an input projection to ``width``, ``depth`` residual blocks (LayerNorm,
    SiLU, Dense, plus the time embedding, LayerNorm, SiLU, Dense), and a zero-initialised
    output layer. The output at a voxel depends on that voxel's inputs only, so the posterior it
    learns is the per-voxel one, ``p(maps | that voxel's signal curve)`` under the training
    data's distribution of tissue values; unlike the U-Net it has no spatial prior to carry from
    the training anatomy to an image of another kind (a phantom's spheres)."""

    width: int = 128
    depth: int = 3
    out_channels: int = 3
    emb_dim: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_t, t, condition):
        dt = self.dtype
        emb_dim = self.emb_dim or self.width
        emb = timestep_embedding(t, self.width)
        emb = nn.Dense(emb_dim, dtype=dt)(nn.silu(nn.Dense(emb_dim, dtype=dt)(emb)))
        emb = emb.reshape(emb.shape[0], *(1,) * (x_t.ndim - 2), emb_dim)
        h = nn.Dense(self.width, dtype=dt)(jnp.concatenate([x_t, condition], axis=-1).astype(dt))
        for _ in range(self.depth):
            r = nn.Dense(self.width, dtype=dt)(nn.silu(nn.LayerNorm(dtype=dt)(h)))
            r = r + nn.Dense(self.width, dtype=dt)(nn.silu(emb))
            r = nn.Dense(self.width, dtype=dt)(nn.silu(nn.LayerNorm(dtype=dt)(r)))
            h = h + r
        h = nn.silu(nn.LayerNorm(dtype=dt)(h))
        out = nn.Dense(self.out_channels, kernel_init=nn.initializers.zeros, dtype=dt)(h)
        return out.astype(jnp.float32)
