"""Plain residual network baseline (full resolution) on the four-contrast protocol.

Run: python -m qmri_jax.main --config=configs/resnet.py --workdir=/tmp/qmri_resnet
GPU preset: --config=configs/resnet.py:paper
"""

import ml_collections

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model = ml_collections.ConfigDict({"name": "resnet", "features": 32, "num_blocks": 4,
                                              "norm": "batch"})
    config.train.num_steps = 300
    return presets.apply(config, preset, "resnet")
