"""3D GE -> TSE contrast translation with thick-slice targets: High-to-low against low-to-low.

Run: python -m qmri_jax.main --config=configs/high_to_low.py --workdir=/tmp/qmri_h2l

Data (qmri_jax.data.translation): synthetic brains at 2 mm isotropic, a T1-weighted 3D spoiled
gradient echo (the input) and a T2-weighted spin echo acquired with 8 mm slices (4x, spin-echo
slice profile), Rician noise (in-brain median SNR 40 each), receive and transmit fields, 16 subjects
(12 / 2 / 2 train / validation / test); the true 2 mm TSE kept for
evaluation. The test report (W/eval/metrics.json) scores the thick slices (low_res), the thin
slices against the truth (high_res) and cubic interpolation of the thick slices
(high_res_interpolation).

Presets:
  ""          CPU default = hr_net: the redesigned HighResNet (no stem, 1x1x1 projections,
              channels 8 / 16 / 16 with dilations (1,1,1) / (2,2,1) / (4,4,2) (the paper
              doubles them: 16 / 32 / 64 in :paper), reflection padding), High-to-low, 400
              steps, L1 through the fixed kernel [1/6, 1/3, 1/3, 1/6] over the whole patch
              (translation.loss_region = "all"; "brain": the brain only); the thin-slice
              output made consistent with the acquired thick slices where they are given
              (translation.consistency = 1 back-projection step; 0: the network alone);
  hr_net      the same;
  unet        a 3D U-Net (12/24/48, bilinear up-sampling) instead, same training;
  low_to_low  the HighResNet trained on thick slices (the GE averaged over 4 slices), dilations
              (1,1,1) / (2,2,1) / (4,4,1);
  mind        hr_net plus 0.1 x the 3D MIND loss against the input GE;
  learned     hr_net with the kernel learned (network frozen) over steps 350-400;
  encoded     16 hat functions of the GE intensity as extra input channels
              (model.input_encoding: the first layer can hold a look-up table from the start);
  paper       the published sizes for a GPU: patches 56x56x32 (low-to-low 56x56x8), HighResNet
              16/32/64 with 3 blocks per stage, 20 subjects of 1 mm, 20000 steps.
Several presets combine with "+", e.g. "unet+mind", "low_to_low+unet".
"""

import ml_collections

from configs import default


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.task = "translation"
    config.targets = ("TSE",)
    config.target_scale = (1.0,)

    config.data.protocol = "ge_tse_3d"
    config.data.resolution_mm = 2
    config.data.slice_factor = 4
    config.data.num_subjects = 16
    config.data.pathology_fraction = 0.25
    config.data.snr = 40.0
    config.data.receive_bias = 0.1
    config.data.transmit_bias = 0.05

    config.model = ml_collections.ConfigDict()
    config.model.name = "highresnet"
    config.model.features = (8, 16, 16)
    config.model.blocks_per_stage = 1
    config.model.dilations = ((1, 1, 1), (2, 2, 1), (4, 4, 2))
    config.model.stem = False
    config.model.padding = "REFLECT"
    config.model.norm = "batch"

    t = config.translation  # its keys and defaults: configs/default.py

    config.train.optimizer = "adam"
    config.train.learning_rate = 2e-3
    config.train.schedule = "cosine"
    config.train.warmup_steps = 20
    config.train.grad_clip = 1.0
    config.train.batch_size = 4
    config.train.num_steps = 400
    config.train.eval_every = 100
    config.train.checkpoint_every = 100
    config.train.log_every = 25
    config.train.loss = "mae"

    for name in [p for p in preset.split("+") if p]:
        if name == "hr_net":
            pass
        elif name == "unet":
            config.model = ml_collections.ConfigDict(dict(
                name="unet", features=(12, 24, 48), norm="batch", up="bilinear"))
        elif name == "low_to_low":
            t.mode = "low_to_low"
            if config.model.name == "highresnet":
                config.model.dilations = ((1, 1, 1), (2, 2, 1), (4, 4, 1))
        elif name == "mind":
            t.mind_weight = 0.1
        elif name == "encoded":
            if config.model.name != "highresnet":
                raise ValueError("configs/high_to_low.py: preset 'encoded' is for the HighResNet "
                                 f"(model.input_encoding), not {config.model.name!r}")
            config.model.input_encoding = 16
        elif name == "learned":
            t.kernel_mode = "learned"
            t.kernel_learn_steps = (350, 400)
        elif name == "paper":
            config.data.resolution_mm = 1
            config.data.num_subjects = 20
            t.patch = (56, 56, 32)
            t.patches_per_epoch = 512
            config.model.features = (16, 32, 64)
            config.model.blocks_per_stage = 3
            config.train.batch_size = 8
            config.train.num_steps = 20000
            config.train.eval_every = 1000
            config.train.checkpoint_every = 1000
        else:
            raise ValueError(f"configs/high_to_low.py: unknown preset {name!r} (available: "
                             "hr_net, unet, low_to_low, mind, learned, encoded, paper; join with '+')")
    return config
