"""Attention-gated U-Net on the four-contrast brain protocol (normalised MAE + MSE loss).

Run: python -m qmri_jax.main --config=configs/uattennet.py --workdir=/tmp/qmri_uattennet
GPU preset (the thesis's sizes): --config=configs/uattennet.py:paper
"""

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "uattennet"
    config.train.loss = "mae"
    return presets.apply(config, preset, "uattennet")
