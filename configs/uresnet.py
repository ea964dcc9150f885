"""Residual U-Net on the four-contrast brain protocol.

Run: python -m qmri_jax.main --config=configs/uresnet.py --workdir=/tmp/qmri_uresnet
GPU preset: --config=configs/uresnet.py:paper
"""

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "uresnet"
    return presets.apply(config, preset, "uresnet")
