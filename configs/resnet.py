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


def _on_ddpm_data(ddpm_preset: str, features: int, num_blocks: int):
    """The ResNet regressing the maps of ``configs/ddpm.py:<ddpm_preset>``'s data (nMAE, no EMA)."""
    from configs import ddpm
    config = ddpm.get_config(ddpm_preset)
    config.task = "regression"
    config.model = ml_collections.ConfigDict({"name": "resnet", "features": features,
                                              "num_blocks": num_blocks, "norm": "batch"})
    config.train.loss = "nmae"
    config.train.ema_decay = 0.0
    return config


def get_config(preset: str = ""):
    if preset == "diffusor":  # the qMRI Diffusor's ResNet baseline: its data, batch and budget
        return _on_ddpm_data("diffusor", 64, 8)
    if preset == "nist_vir":
        config = _on_ddpm_data("unet", 32, 4)
        config.train.num_steps = 600
        config.train.batch_size = 8
        config.train.eval_every = 200
        config.train.checkpoint_every = 200
        return config
    if preset not in ("", "paper"):
        raise ValueError(f"configs/resnet.py: unknown preset {preset!r} (available: paper, "
                         "nist_vir, diffusor)")
    config = default.get_config()
    config.mode = "train"
    config.model = ml_collections.ConfigDict({"name": "resnet", "features": 32, "num_blocks": 4,
                                              "norm": "batch"})
    config.train.num_steps = 300
    return presets.apply(config, preset, "resnet")
