"""U-Net mapping the four-contrast brain protocol (T1w, T2w, PDw, FLAIR) to T1/T2/PD.

Run: python -m qmri_jax.main --config=configs/unet.py --workdir=/tmp/qmri_unet
GPU preset (paper sizes): --config=configs/unet.py:paper
"""

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "unet"
    return presets.apply(config, preset, "unet")
