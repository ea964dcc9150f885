"""Average-pool / bilinear U-Net with three conv-BN-ReLU per scale, L1 + SSIM loss.

Run: python -m qmri_jax.main --config=configs/unet_qiu.py --workdir=/tmp/qmri_unet_qiu
GPU preset: --config=configs/unet_qiu.py:paper

Qiu et al.'s setting (MPRAGE + GRE + 3D FLAIR in, T1 and T2 out; 18 subjects, 6-fold CV):
  ``:qiu``      their sizes (GPU): 4 down-samplings (64-1024 channels), 2x2 convolution after each
                bilinear up-sampling, inputs divided by their in-brain 95th percentile per slice,
                maps divided by 3 s, L1 + SSIM, Adam 1e-4 for 300 epochs then x exp(-0.02) per
                epoch for 200, 160 x 128 random crops and left-right flips, batch 16, 1 mm;
  ``:qiu_cpu``  the same network and data pipeline for 2 CPU cores (8-128 channels, 2 mm, 64 x 80
                crops, batch 8, 600 steps; learning rate 1e-3, as 1e-4 barely moves in 600 steps).
The cross-validation over subjects is the sweep configs/sweeps/qiu_cv.py.
"""

import math

import ml_collections

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "unet_qiu"
    config.train.loss = "l1_ssim"
    config.train.loss_kwargs = ml_collections.ConfigDict({"lam": 1.0, "data_range": 4.0})
    if preset in ("qiu", "qiu_cpu"):
        return _qiu(config, cpu=preset == "qiu_cpu")
    return presets.apply(config, preset, "unet_qiu")


def _qiu(config, cpu: bool):
    config.data.protocol = "qiu_mprage_gre_flair"
    config.data.field = "3T"
    config.data.normalisation = "p95_slice"
    config.targets = ("T1", "T2")  # their network maps T1 and T2 (no PD)
    config.target_scale = (3000.0, 3000.0)  # both divided by 3 s
    config.model.up_kernel = 2
    config.train.loss_kwargs = ml_collections.ConfigDict({"lam": 1.0, "data_range": 2.0})
    config.train.optimizer = "adam"
    config.train.schedule = "exponential"
    config.train.warmup_steps = 0
    config.train.grad_clip = 0.0
    config.train.flip = True
    # 6-fold CV of 18 subjects (as theirs): 15 outside the test fold, 10% of those for validation.
    paper_epoch = math.ceil(13 * 40 / 16)
    sizes = ({"features": (8, 16, 32, 64, 128), "mm": 2, "subjects": 12, "slices": 12,
              "crop": (64, 80), "batch": 8, "lr": 1e-3, "steps": 600, "eval": 200} if cpu else
             {"features": (64, 128, 256, 512, 1024), "mm": 1, "subjects": 18, "slices": 40,
              "crop": (128, 160), "batch": 16, "lr": 1e-4, "steps": 500 * paper_epoch,
              "eval": 10 * paper_epoch})
    config.model.features = sizes["features"]
    config.data.resolution_mm = sizes["mm"]
    config.data.num_subjects = sizes["subjects"]
    config.data.slices_per_subject = sizes["slices"]
    config.train.crop = sizes["crop"]
    config.train.batch_size = sizes["batch"]
    config.train.learning_rate = sizes["lr"]
    config.train.num_steps = sizes["steps"]
    config.train.eval_every = config.train.checkpoint_every = sizes["eval"]
    # Constant for 300 of 500 epochs, then x exp(-0.02) per epoch (smoothly, per step): the same
    # shape over any number of steps.
    decay = config.train.num_steps - 3 * config.train.num_steps // 5
    config.train.decay_after = config.train.num_steps - decay
    config.train.decay_steps = 1
    config.train.decay_rate = math.exp(-0.02 * 200 / decay)
    return config
