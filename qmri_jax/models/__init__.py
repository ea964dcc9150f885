"""Flax Linen networks for quantitative mapping, and the one model registry :data:`MODELS`.

Image-to-map networks (``[B, *S, C_in] -> [B, *S, C_out]``, physical units via ``out_scale``):
the U-Net family, HighResNet, ResNet, the RIM. Denoisers of a conditional DDPM
(``(x_t, t, condition) -> [B, *S, C_map]``): ``diffusion_unet``, ``voxel_denoiser``. The
contrast-transfer GAN's discriminator: ``patchgan``.
"""

from __future__ import annotations

from qmri_jax.models.diffusion_unet import DiffusionUNet, VoxelDenoiser
from qmri_jax.models.patchgan import PatchGAN
from qmri_jax.models.resnets import HighResNet, ResNet
from qmri_jax.models.rim import RIM
from qmri_jax.models.unets import UAttenNet, UNet, UNetQiu, UResNet

__all__ = ["UNet", "UResNet", "UAttenNet", "UNetQiu", "HighResNet", "ResNet", "RIM",
           "DiffusionUNet", "VoxelDenoiser", "PatchGAN", "create_model", "MODELS"]

MODELS = {"unet": UNet, "uresnet": UResNet, "uattennet": UAttenNet, "unet_qiu": UNetQiu,
          "highresnet": HighResNet, "resnet": ResNet, "rim": RIM,
          "diffusion_unet": DiffusionUNet, "voxel_denoiser": VoxelDenoiser, "patchgan": PatchGAN}


def create_model(name: str, out_scale=None, **kwargs):
    """The network ``name`` of :data:`MODELS` with its keyword arguments (e.g. ``config.model``
    minus ``name``); image-to-map networks take ``out_scale`` (one typical value per output)."""
    if name not in MODELS:
        raise ValueError(f"model {name!r}: expected one of {sorted(MODELS)}")
    if out_scale is not None:
        kwargs["out_scale"] = tuple(out_scale)
    return MODELS[name](**kwargs)
