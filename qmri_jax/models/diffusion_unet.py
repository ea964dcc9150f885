"""Time-conditioned U-Net for conditional DDPMs (the "qMRI Diffusor" network).

``DiffusionUNet(x_t [B, H, W, C_map], t [B], condition [B, H, W, C_img], protocol [B, P] | None)
-> [B, H, W, C_map]``: the noisy maps and the weighted images are concatenated on the channel axis;
``t`` enters through a sinusoidal embedding and an MLP added to every residual block; an optional
protocol vector (e.g. TR/TE/TI in seconds) is embedded the same way so one network serves several
protocols. Residual blocks use GroupNorm and SiLU (Ho et al. 2020); self-attention at the levels
listed in ``attention_levels``, always in the bottleneck as in MONAI's ``DiffusionModelUNet``.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from qmri_jax.models.layers import UpConv2x

__all__ = ["DiffusionUNet", "timestep_embedding"]


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding ``[B, dim]`` of integer steps ``t [B]`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _gn(x):
    return nn.GroupNorm(num_groups=min(32, x.shape[-1] // 4 or 1))(x)


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


class DiffusionUNet(nn.Module):
    """Attributes: ``features`` per level (e.g. ``(128, 256, 256)``), ``out_channels``,
    ``blocks_per_level``, ``attention_levels`` (indices), ``emb_dim``."""

    features: Sequence[int] = (32, 64, 64)
    out_channels: int = 3
    blocks_per_level: int = 1
    attention_levels: Sequence[int] = ()
    emb_dim: int = 128

    @nn.compact
    def __call__(self, x_t, t, condition, protocol=None):
        factor = 2 ** (len(self.features) - 1)
        if any(s % factor for s in x_t.shape[1:3]):
            raise ValueError(f"DiffusionUNet: spatial shape {x_t.shape[1:3]} must divide by "
                             f"{factor}")
        emb = timestep_embedding(t, self.emb_dim)
        emb = nn.Dense(self.emb_dim)(nn.silu(nn.Dense(self.emb_dim)(emb)))
        if protocol is not None:
            emb = emb + nn.Dense(self.emb_dim)(nn.silu(nn.Dense(self.emb_dim)(protocol)))
        x = nn.Conv(self.features[0], (3, 3))(jnp.concatenate([x_t, condition], axis=-1))
        skips = []
        for i, f in enumerate(self.features):
            for _ in range(self.blocks_per_level):
                x = ResBlock(f)(x, emb)
                if i in self.attention_levels:
                    x = SelfAttention()(x)
            skips.append(x)
            if i < len(self.features) - 1:
                b, h, w, c = x.shape
                x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        x = ResBlock(self.features[-1])(x, emb)
        x = SelfAttention()(x)
        x = ResBlock(self.features[-1])(x, emb)
        for i in reversed(range(len(self.features))):
            if i < len(self.features) - 1:
                x = UpConv2x(self.features[i])(x)
            x = jnp.concatenate([x, skips[i]], axis=-1)
            for _ in range(self.blocks_per_level):
                x = ResBlock(self.features[i])(x, emb)
                if i in self.attention_levels:
                    x = SelfAttention()(x)
        x = nn.silu(_gn(x))
        return nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros)(x)
