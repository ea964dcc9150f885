"""Time-conditioned U-Net for conditional DDPMs (the "qMRI Diffusor" network).

``DiffusionUNet(x_t [B, H, W, C_map], t [B], condition [B, H, W, C_img], protocol [B, P] | None)
-> [B, H, W, C_map]``: the noisy maps and the weighted images are concatenated on the channel axis;
``t`` enters through a sinusoidal embedding and an MLP added to every residual block; an optional
protocol vector (e.g. TR/TE/TI in seconds) is embedded the same way so one network serves several
protocols. The layout is Ho et al. (2020)'s, as in MONAI's ``DiffusionModelUNet``: GroupNorm/SiLU
residual blocks, stride-2 convolutions down, nearest-neighbour up-sampling plus a convolution up,
every intermediate activation of the way down fed to one residual block of the way up,
self-attention at the levels listed in ``attention_levels`` and always in the bottleneck.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from qmri_jax.models.layers import GroupNorm

__all__ = ["DiffusionUNet", "timestep_embedding"]


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

    @nn.compact
    def __call__(self, x, emb):
        h = nn.Conv(self.features, (3, 3))(nn.silu(_gn(x)))
        h = h + nn.Dense(self.features)(nn.silu(emb))[:, None, None, :]
        h = nn.Conv(self.features, (3, 3))(nn.silu(_gn(h)))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1))(x)
        return x + h


class SelfAttention(nn.Module):
    heads: int = 1

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = _gn(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
        return x + y.reshape(b, h, w, c)


def _down2x(x, features):
    """Stride-2 3x3 convolution (the DDPM / MONAI down-sampler)."""
    return nn.Conv(features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x)


def _up2x(x, features):
    """Nearest-neighbour 2x up-sampling then a 3x3 convolution (the DDPM / MONAI up-sampler)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)
    return nn.Conv(features, (3, 3))(x)


class DiffusionUNet(nn.Module):
    """Attributes: ``features`` per level (e.g. ``(128, 256, 256)``), ``out_channels``,
    ``blocks_per_level`` (residual blocks per level on the way down; the way up has one more, each
    consuming one stored activation as in Ho et al. 2020 and MONAI's ``DiffusionModelUNet``),
    ``attention_levels`` (indices), ``emb_dim`` (time-embedding width; 0: 4 x
    ``features[0]``, the sinusoid itself ``features[0]`` wide, as MONAI)."""

    features: Sequence[int] = (32, 64, 64)
    out_channels: int = 3
    blocks_per_level: int = 1
    attention_levels: Sequence[int] = ()
    emb_dim: int = 0

    @nn.compact
    def __call__(self, x_t, t, condition, protocol=None):
        factor = 2 ** (len(self.features) - 1)
        if any(s % factor for s in x_t.shape[1:3]):
            raise ValueError(f"DiffusionUNet: spatial shape {x_t.shape[1:3]} must divide by "
                             f"{factor}")
        emb_dim = self.emb_dim or 4 * self.features[0]
        emb = timestep_embedding(t, self.features[0])
        emb = nn.Dense(emb_dim)(nn.silu(nn.Dense(emb_dim)(emb)))
        if protocol is not None:
            emb = emb + nn.Dense(emb_dim)(nn.silu(nn.Dense(emb_dim)(protocol)))
        x = nn.Conv(self.features[0], (3, 3))(jnp.concatenate([x_t, condition], axis=-1))
        skips = [x]
        last = len(self.features) - 1
        for i, f in enumerate(self.features):
            for _ in range(self.blocks_per_level):
                x = ResBlock(f)(x, emb)
                if i in self.attention_levels:
                    x = SelfAttention()(x)
                skips.append(x)
            if i < last:
                x = _down2x(x, f)
                skips.append(x)
        x = ResBlock(self.features[-1])(x, emb)
        x = SelfAttention()(x)
        x = ResBlock(self.features[-1])(x, emb)
        for i in reversed(range(len(self.features))):
            for _ in range(self.blocks_per_level + 1):
                x = ResBlock(self.features[i])(jnp.concatenate([x, skips.pop()], axis=-1), emb)
                if i in self.attention_levels:
                    x = SelfAttention()(x)
            if i > 0:
                x = _up2x(x, self.features[i])
        x = nn.silu(_gn(x))
        return nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(x)
