"""Shared presets for the learned-mapping configs: ``""`` (CPU default, minutes on 2 cores) and
``"paper"`` (the published sizes, for GPUs: 97 subjects, 64-512 channels, 30k steps)."""

PAPER_MODEL = {
    "unet": {"features": (64, 128, 256, 512)},
    "uresnet": {"features": (64, 128, 256, 512)},
    "uattennet": {"features": (64, 128, 256, 512)},
    "unet_qiu": {"features": (64, 128, 256, 512)},
    "highresnet": {"features": (16, 32, 64), "blocks_per_stage": 3},
    "resnet": {"features": 64, "num_blocks": 8},
}


def apply(config, preset: str, name: str):
    if preset == "":
        return config
    if preset != "paper":
        raise ValueError(f"configs/{name}.py: unknown preset {preset!r} (available: paper)")
    for k, v in PAPER_MODEL[name].items():
        config.model[k] = v
    config.data.num_subjects = 97
    config.data.slices_per_subject = 40
    config.train.batch_size = 16
    config.train.num_steps = 30000
    config.train.learning_rate = 1e-3
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.early_stopping_patience = 10
    return config
