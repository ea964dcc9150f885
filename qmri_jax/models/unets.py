"""U-Net family for image-to-map regression: ``[B, H, W, C_in] -> [B, H, W, C_out]``.

* ``UNet`` (Ronneberger et al., MICCAI 2015): conv blocks, max-pool down, transposed-conv up;
* ``UResNet``: residual blocks at every level;
* ``UAttenNet``: additive attention gates on the skips (Oktay et al., 2018);
* ``UNetQiu``: average pooling, bilinear up-sampling and three conv-BN-ReLU per scale
  (the L1 + SSIM qMRI U-Net variant).

All are one :class:`UNet` module with switches; the spatial size must divide by ``2**(levels-1)``.
Outputs are positive, in physical units (``out_scale``).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from qmri_jax.models.layers import (AttentionGate, ConvBlock, PositiveHead, ResidualBlock, UpConv2x,
                                    conv)

__all__ = ["UNet", "UResNet", "UAttenNet", "UNetQiu", "pool2x"]


@jax.custom_vjp
def _max_pool2x(x):
    """2x max pooling (window = stride = 2 on every spatial axis) as a reshape + max.

    Same values as ``nn.max_pool``, and the same gradient: each window's cotangent goes to its first
    maximal element in row-major order, as XLA's select-and-scatter (and PyTorch) give it. The
    custom VJP writes that gradient as one elementwise pass; JAX's own gradient of ``max`` splits
    ties with a count reduction and a division, which XLA:CPU also fuses into the neighbouring
    convolution's YNNPACK call, together ~3% of a U-Net training step on 2 cores."""
    return _max_pool2x_fwd(x)[0]


def _windows(x):
    """``[B, *S, C] -> [B, S1/2, 2, S2/2, 2, ..., C]``."""
    shape = [x.shape[0]]
    for s in x.shape[1:-1]:
        shape += [s // 2, 2]
    return x.reshape(*shape, x.shape[-1])


def _window_axes(x):
    """The within-window axes of ``_windows(x)``."""
    return tuple(2 + 2 * i for i in range(x.ndim - 2))


def _max_pool2x_fwd(x):
    y = _windows(x).max(axis=_window_axes(x))
    return y, (x, y)


def _max_pool2x_bwd(res, g):
    x, y = res
    nd = x.ndim - 2
    xw, expand = _windows(x), _window_axes(x)
    yb, gb = jnp.expand_dims(y, expand), jnp.expand_dims(g, expand)
    taken = jnp.zeros(yb.shape, bool)
    parts = {}
    for offsets in itertools.product((0, 1), repeat=nd):  # row-major order: the first max wins
        idx = [slice(None)] * xw.ndim
        for ax, o in zip(expand, offsets):
            idx[ax] = slice(o, o + 1)
        hit = (xw[tuple(idx)] == yb) & ~taken
        taken = taken | hit
        parts[offsets] = jnp.where(hit, gb, 0.0)

    def assemble(prefix, level):  # concatenate the 2**nd pieces back along the window axes
        if level == nd:
            return parts[prefix]
        return jnp.concatenate([assemble(prefix + (o,), level + 1) for o in (0, 1)],
                               axis=expand[level])

    return (assemble((), 0).reshape(x.shape),)


_max_pool2x.defvjp(_max_pool2x_fwd, _max_pool2x_bwd)


def pool2x(x, kind):
    """2x max/average pooling as a reshape + reduction: the same values (and, for max, the same
    gradient) as ``nn.max_pool`` / ``nn.avg_pool`` with window = stride = 2, with a ~8x cheaper
    gradient on XLA:CPU than the select-and-scatter of ``reduce_window`` (divisibility is checked
    by the caller)."""
    if kind == "max":
        return _max_pool2x(x)
    if kind == "avg":
        return _windows(x).mean(axis=_window_axes(x))
    raise ValueError(f"pool={kind!r}: expected 'max' or 'avg'")


class UNet(nn.Module):
    """Configurable U-Net.

    Attributes:
      features: channels per level, e.g. ``(32, 64, 128, 256)``.
      out_scale: one scale per output channel (physical units of a typical value).
      convs_per_level: conv-norm-ReLU per block.
      norm: ``"batch"``, ``"group"`` or ``"none"``.
      dropout: dropout rate at the bottleneck (``dropout_at="bottleneck"``) or, with
        ``dropout_at="paths"`` (the thesis), on the output of the down-path and on the input of
        every up-path block.
      dropout_at: ``"bottleneck"`` or ``"paths"``.
      pool: ``"max"`` or ``"avg"``.
      up: ``"transpose"`` (learned 2x2 transposed conv) or ``"bilinear"`` (resize + conv).
      up_kernel: kernel size of the convolution after a bilinear up-sampling (Qiu et al.: 2).
      residual: residual blocks instead of plain conv blocks.
      attention: attention gates on the skips.
      attention_levels: with ``attention``, gate only this many of the deepest skips (0: every
        skip; the thesis's U-AttenNet has one gate, assumed at the deepest skip).
      head: ``"positive"`` (softplus x ``out_scale``, physical units) or ``"linear"`` (a 1x1
        conv to ``len(out_scale)`` unbounded channels, for a task that bounds them itself).
    """

    features: Sequence[int] = (32, 64, 128, 256)
    out_scale: Sequence[float] = (1000.0, 100.0, 1.0)
    convs_per_level: int = 2
    norm: str = "batch"
    dropout: float = 0.0
    dropout_at: str = "bottleneck"
    pool: str = "max"
    up: str = "transpose"
    up_kernel: int = 3
    residual: bool = False
    attention: bool = False
    attention_levels: int = 0
    head: str = "positive"

    def _block(self, f, x, train, dropout=0.0):
        if self.residual:
            return ResidualBlock(f, self.norm, dropout=dropout)(x, train)
        return ConvBlock(f, self.convs_per_level, self.norm, dropout)(x, train)

    @nn.compact
    def __call__(self, x, train: bool = False):
        nd = x.ndim - 2
        factor = 2 ** (len(self.features) - 1)
        if any(s % factor for s in x.shape[1:-1]):
            raise ValueError(f"{type(self).__name__}: spatial shape {x.shape[1:-1]} must divide by "
                             f"{factor} ({len(self.features)} levels)")
        skips = []
        for i, f in enumerate(self.features[:-1]):
            x = self._block(f, x, train)
            skips.append(x)
            x = pool2x(x, self.pool)
        if self.dropout_at not in ("bottleneck", "paths"):
            raise ValueError(f"dropout_at={self.dropout_at!r}: expected 'bottleneck' or 'paths'")
        paths = self.dropout_at == "paths" and self.dropout > 0
        if paths:  # the down-path's output
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = self._block(self.features[-1], x, train, 0.0 if paths else self.dropout)
        for depth, (f, skip) in enumerate(zip(reversed(self.features[:-1]), reversed(skips))):
            if self.up == "transpose":
                x = UpConv2x(f)(x)
            elif self.up == "bilinear":
                x = jax.image.resize(x, (*skip.shape[:-1], x.shape[-1]), "linear")
                x = conv(x, f, self.up_kernel)
            else:
                raise ValueError(f"up={self.up!r}: expected 'transpose' or 'bilinear'")
            if self.attention and (self.attention_levels <= 0 or depth < self.attention_levels):
                skip = AttentionGate(max(f // 2, 1))(skip, x)
            x = jax.numpy.concatenate([skip, x], axis=-1)
            if paths:  # the input of every up-path block
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x = self._block(f, x, train)
        if self.head == "linear":
            return conv(x, len(self.out_scale), 1)
        if self.head != "positive":
            raise ValueError(f"head={self.head!r}: expected 'positive' or 'linear'")
        return PositiveHead(tuple(self.out_scale))(x)


def UResNet(**kw) -> UNet:  # noqa: N802 - reads as a class at call sites
    """U-Net with residual blocks."""
    return UNet(residual=True, **kw)


def UAttenNet(**kw) -> UNet:  # noqa: N802
    """U-Net with additive attention gates on the skips."""
    return UNet(attention=True, **kw)


def UNetQiu(**kw) -> UNet:  # noqa: N802
    """Average pooling, bilinear up-sampling, three conv-BN-ReLU per scale."""
    kw.setdefault("convs_per_level", 3)
    kw.setdefault("norm", "batch")
    return UNet(pool="avg", up="bilinear", **kw)
