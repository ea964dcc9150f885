"""Plain residual network baseline (full resolution) on the four-contrast protocol.

Run: python -m qmri_jax.main --config=configs/resnet.py --workdir=/tmp/qmri_resnet
GPU preset: --config=configs/resnet.py:paper
NIST VIR preset (T1 / PD / k on configs/ddpm.py:unet's data, the DDPM's ResNet baseline for
experiments/nist_phantom.py): --config=configs/resnet.py:nist_vir
The qMRI Diffusor's ResNet baseline (configs/ddpm.py:diffusor's data, targets T1 / PD / B, batch 8
and step budget; 8 residual blocks of 64 channels): --config=configs/resnet.py:diffusor
"""

import ml_collections

from configs import default, presets


def get_config(preset: str = ""):
    if preset == "diffusor":  # the qMRI Diffusor's ResNet baseline: its data, batch and budget
        from configs import ddpm
        config = ddpm.get_config("diffusor")
        config.task = "regression"
        config.model = ml_collections.ConfigDict({"name": "resnet", "features": 64,
                                                  "num_blocks": 8, "norm": "batch"})
        config.train.loss = "nmae"
        config.train.ema_decay = 0.0
        return config
    if preset == "nist_vir":
        from configs import ddpm
        config = ddpm.get_config("unet")
        config.task = "regression"
        config.model = ml_collections.ConfigDict({"name": "resnet", "features": 32,
                                                  "num_blocks": 4, "norm": "batch"})
        config.train.loss = "nmae"
        config.train.num_steps = 600
        config.train.batch_size = 8
        config.train.ema_decay = 0.0
        config.train.eval_every = 200
        config.train.checkpoint_every = 200
        return config
    config = default.get_config()
    config.mode = "train"
    config.model = ml_collections.ConfigDict({"name": "resnet", "features": 32, "num_blocks": 4,
                                              "norm": "batch"})
    config.train.num_steps = 300
    return presets.apply(config, preset, "resnet")
