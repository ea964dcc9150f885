"""Full-resolution networks (no down-sampling): HighResNet and a plain ResNet baseline.

* ``HighResNet`` (Li et al., IPMI 2017): a 3x3 conv, then three stages of residual blocks with
  dilations 1, 2, 4 and widths ``(16, 32, 64)`` (projection shortcuts where the width changes), a
  1x1 head. 2D for ``[B, H, W, C]`` inputs and 3D for ``[B, X, Y, Z, C]`` (the kernels follow the
  input rank).
  The redesign of the High-to-low paper is the same class with ``stem=False`` (no initial
  convolution: the first block's 1x1 projection shortcut takes the input), per-axis
  ``dilations`` (e.g. ``((1, 1, 1), (2, 2, 1), (4, 4, 2))``: anisotropic, for volumes whose
  slices are thicker or fewer than their in-plane voxels), channels doubling with each dilation
  and ``padding="REFLECT"``; ``head="linear"`` for an image output (a signed intensity).
* ``ResNet``: the same without dilation (a plain residual image-to-image baseline).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from qmri_jax.models.layers import Norm, PositiveHead, ResidualBlock, conv, intensity_encoding

__all__ = ["HighResNet", "ResNet"]


class HighResNet(nn.Module):
    """Attributes: ``features`` per stage, ``blocks_per_stage``, ``dilations`` per stage (an int,
    or one per spatial axis), ``norm``, ``dropout`` (before the head), ``out_scale``, ``stem``
    (the initial 3x3 convolution), ``padding`` (``"SAME"``: zeros, or ``"REFLECT"``), ``head``
    (``"positive"``: softplus x ``out_scale``; ``"linear"``: a 1x1 conv to
    ``len(out_scale)`` channels), ``input_encoding`` (0, or the number of hat functions of the
    input intensity appended as channels: :func:`~qmri_jax.models.layers.intensity_encoding`)."""

    features: Sequence[int] = (16, 32, 64)
    blocks_per_stage: int = 3
    dilations: Sequence = (1, 2, 4)
    norm: str = "batch"
    dropout: float = 0.0
    out_scale: Sequence[float] = (1000.0, 100.0, 1.0)
    stem: bool = True
    padding: str = "SAME"
    head: str = "positive"
    input_encoding: int = 0

    @nn.compact
    def __call__(self, x, train: bool = False):
        nd = x.ndim - 2
        if self.input_encoding:
            x = intensity_encoding(x, self.input_encoding)
        if len(self.dilations) != len(self.features):
            raise ValueError(f"HighResNet: {len(self.features)} stages (features) but "
                             f"{len(self.dilations)} dilations")
        if self.stem:
            x = conv(x, self.features[0], 3, padding=self.padding)
            x = Norm(self.norm, relu=True)(x, train)
        for f, d in zip(self.features, self.dilations):
            d = tuple(d) if isinstance(d, (tuple, list)) else (int(d),) * nd
            if len(d) != nd:
                raise ValueError(f"HighResNet: dilation {d} for a {nd}D input")
            for _ in range(self.blocks_per_stage):
                x = ResidualBlock(f, self.norm, dilation=d, padding=self.padding)(x, train)
        x = Norm(self.norm, relu=True)(x, train)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.head == "linear":
            return conv(x, len(self.out_scale), 1)
        if self.head != "positive":
            raise ValueError(f"head={self.head!r}: expected 'positive' or 'linear'")
        return PositiveHead(tuple(self.out_scale))(x)


class ResNet(nn.Module):
    """Plain residual baseline: ``num_blocks`` residual blocks of ``features`` channels."""

    features: int = 64
    num_blocks: int = 8
    norm: str = "batch"
    out_scale: Sequence[float] = (1000.0, 100.0, 1.0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(x, self.features, 3)
        for _ in range(self.num_blocks):
            x = ResidualBlock(self.features, self.norm)(x, train)
        x = Norm(self.norm, relu=True)(x, train)
        return PositiveHead(tuple(self.out_scale))(x)
