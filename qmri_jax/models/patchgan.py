"""PatchGAN discriminator with a softmax over classes per patch (pix2pix-style, multi-class).

``[B, H, W, C] -> [B, H / 2^n, W / 2^n, num_classes]`` logits, ``n = len(features)``: Gaussian
noise on the input (training only), ``n`` blocks of conv 3x3 stride 2 + LeakyReLU(0.2), then
``extra_convs`` conv 3x3 stride 1 + LeakyReLU at the last width, then a 1x1 conv to the class
logits. Each output logit sees one patch of the input (:func:`receptive_field`): the published
contrast-transfer discriminator (blocks 128 -> 512, 256 x 256 input, 8 x 8 output map, 190 x 190
receptive field) is ``features=(128, 256, 512, 512, 512), extra_convs=2`` (191 pixels).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

__all__ = ["PatchGAN", "receptive_field"]


def receptive_field(num_strided: int, extra_convs: int, kernel: int = 3) -> int:
    """Side (pixels) of the input patch one output logit sees."""
    r, jump = 1, 1
    for _ in range(num_strided):
        r, jump = r + (kernel - 1) * jump, jump * 2
    return r + extra_convs * (kernel - 1) * jump


class PatchGAN(nn.Module):
    """Attributes: ``num_classes`` (e.g. K acquired contrasts + 1 "synthetic"), ``features``
    (channels of the strided blocks), ``extra_convs``, ``noise_std`` (input noise in training)."""

    num_classes: int
    features: Sequence[int] = (64, 128, 256)
    extra_convs: int = 1
    noise_std: float = 0.05

    @nn.compact
    def __call__(self, x, train: bool = False):
        if train and self.noise_std > 0:
            x = x + self.noise_std * jax.random.normal(self.make_rng("noise"), x.shape, x.dtype)
        for f in self.features:
            x = nn.leaky_relu(nn.Conv(f, (3, 3), strides=(2, 2))(x), 0.2)
        for _ in range(self.extra_convs):
            x = nn.leaky_relu(nn.Conv(self.features[-1], (3, 3))(x), 0.2)
        return nn.Conv(self.num_classes, (1, 1))(x)
