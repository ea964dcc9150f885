"""Flax Linen networks for quantitative mapping, and :func:`create_model` (an explicit registry)."""

from __future__ import annotations

from qmri_jax.models.resnets import HighResNet, ResNet
from qmri_jax.models.rim import RIM
from qmri_jax.models.unets import UAttenNet, UNet, UNetQiu, UResNet

__all__ = ["UNet", "UResNet", "UAttenNet", "UNetQiu", "HighResNet", "ResNet", "RIM", "create_model",
           "MODELS"]

MODELS = {"unet": UNet, "uresnet": UResNet, "uattennet": UAttenNet, "unet_qiu": UNetQiu,
          "highresnet": HighResNet, "resnet": ResNet, "rim": RIM}


def create_model(name: str, out_scale, **kwargs):
    """A model by name with its keyword arguments (``config.model`` minus ``name``)."""
    if name not in MODELS:
        raise ValueError(f"model {name!r}: expected one of {sorted(MODELS)}")
    return MODELS[name](out_scale=tuple(out_scale), **kwargs)
