"""HighResNet (dilated residual convolutions, no down-sampling) on the four-contrast protocol.

Run: python -m qmri_jax.main --config=configs/highresnet.py --workdir=/tmp/qmri_highresnet
GPU preset: --config=configs/highresnet.py:paper
"""

import ml_collections

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model = ml_collections.ConfigDict({"name": "highresnet", "features": (16, 32, 32),
                                              "blocks_per_stage": 1, "norm": "batch",
                                              "dropout": 0.0})
    config.train.num_steps = 300
    return presets.apply(config, preset, "highresnet")
