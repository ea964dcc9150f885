"""Average-pool / bilinear U-Net with three conv-BN-ReLU per scale, L1 + SSIM loss.

Run: python -m qmri_jax.main --config=configs/unet_qiu.py --workdir=/tmp/qmri_unet_qiu
GPU preset: --config=configs/unet_qiu.py:paper
"""

import ml_collections

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "unet_qiu"
    config.train.loss = "l1_ssim"
    config.train.loss_kwargs = ml_collections.ConfigDict({"lam": 1.0, "data_range": 4.0})
    return presets.apply(config, preset, "unet_qiu")
