"""Tiny configs and data shared by the tests (seconds on 2 cores)."""

from __future__ import annotations

import numpy as np

from configs import ddpm as ddpm_config
from configs import unet as unet_config
from qmri_jax.data import datasets
from qmri_jax.physics.protocol import get_protocol
from qmri_jax.tasks.data import as_batch_arrays

CROP = (slice(None), slice(32, 64), slice(40, 72))


def _short_training(cfg, num_steps):
    """Batches of 4, ``num_steps`` steps, logged every step, evaluated and saved every 2."""
    cfg.train.update(batch_size=4, num_steps=num_steps, log_every=1, eval_every=2,
                     checkpoint_every=2, warmup_steps=1, progress_bar=False)


def unet_config_tiny(**train_overrides):
    """configs/unet.py with a 2-level U-Net, 4 steps, no figures."""
    cfg = unet_config.get_config()
    with cfg.unlocked():
        cfg.model.features = (4, 8)
        _short_training(cfg, 4)
        cfg.eval.figures = False
        cfg.train.update(train_overrides)
    return cfg


def ddpm_config_tiny(num_steps=3, preset="unet"):
    """configs/ddpm.py's ``preset`` (the U-Net by default; "" the main job's per-voxel model)
    shrunk to seconds."""
    cfg = ddpm_config.get_config(preset)
    with cfg.unlocked():
        cfg.ddpm.voxel_width = 16
        cfg.ddpm.voxel_depth = 2
        cfg.ddpm.voxel_batch = 64 if cfg.ddpm.voxel_batch else 0
        cfg.ddpm.features = (8, 16)
        cfg.ddpm.emb_dim = 16
        cfg.ddpm.num_steps = 20
        cfg.ddpm.sample_steps = 4
        cfg.ddpm.num_samples = 3
        cfg.ddpm.eval_slices = 2
        cfg.ddpm.eval_batch = 2
        cfg.ddpm.calibration_slices = 2
        cfg.ddpm.exact_voxels = 16
        _short_training(cfg, num_steps)
    return cfg


def _stack(examples):
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def split_arrays(dcfg, crop, targets) -> dict:
    """``{split: batch arrays}`` of a DataConfig, slices cropped to ``crop``, plus the protocol."""
    out = {}
    for split, idx in datasets.subject_split(dcfg).items():
        ex = [e for i in idx for e in datasets.subject_slices(dcfg, i)]
        arr = {k: v[crop] if np.ndim(v) >= 3 else v for k, v in _stack(ex).items()}
        out[split] = as_batch_arrays(arr, targets)
    out["protocol"] = get_protocol(dcfg.protocol).to_dict()
    return out


def four_contrast_data():
    """5 brains of the four-contrast protocol, 4 slices each, 32 x 32 crops: T1 / T2 / PD."""
    return split_arrays(datasets.DataConfig(num_subjects=5, slices_per_subject=4), CROP,
                        ("T1", "T2", "PD"))


def vir_data():
    """5 subjects (2 geometric) of the NIST VIR protocol at 4 mm, noisy, p95-normalised, 32 x 32
    crops: T1 / PD / k."""
    dcfg = datasets.DataConfig(protocol="nist_vir", resolution_mm=4, num_subjects=5,
                               slices_per_subject=3, geometric_fraction=0.4, snr=50.0,
                               transmit_bias=0.05, normalisation="p95")
    return split_arrays(dcfg, (slice(None), slice(8, 40), slice(12, 44)), ("T1", "PD", "k"))


def gan_config_tiny(num_steps=3):
    """configs/gan.py with a 2-level generator, a 2-block discriminator, batches of 4."""
    from configs import gan as gan_config
    cfg = gan_config.get_config()
    with cfg.unlocked():
        cfg.model.features = (4, 8)
        cfg.gan.update(disc_features=(4, 8), gen_pretrain_steps=1, disc_pretrain_steps=1)
        _short_training(cfg, num_steps)
        cfg.train.warmup_steps = 0
    return cfg


def se5_data():
    """5 subjects of the five-contrast spin-echo protocol at 4 mm, noisy, 32 x 32 crops:
    PD / T1 / T2."""
    dcfg = datasets.DataConfig(protocol="pelvis_se5", resolution_mm=4, num_subjects=5,
                               slices_per_subject=3, snr=50.0)
    return split_arrays(dcfg, (slice(None), slice(8, 40), slice(12, 44)), ("PD", "T1", "T2"))


def translation_config_tiny(preset="", num_steps=3, data_dir=""):
    """configs/high_to_low.py at 4 mm, 3 subjects, a 2-stage HighResNet of 4/8 channels on
    16^3 patches, ``num_steps`` steps."""
    from configs import high_to_low
    cfg = high_to_low.get_config(preset)
    with cfg.unlocked():
        cfg.data.update(resolution_mm=4, num_subjects=3, data_dir=data_dir)
        if cfg.model.name == "highresnet":
            cfg.model.features = (4, 8)
            cfg.model.dilations = tuple(cfg.model.dilations)[:2]
        else:
            cfg.model.features = (4, 8)
        cfg.translation.update(patch=(16, 16, 16), patches_per_epoch=8, validation_patches=4,
                               eval_batch=8, fusion_stride=0.5)
        _short_training(cfg, num_steps)
    return cfg


def check_sharded_and_resumed(cfg, data, params, tmp_path):
    """Trains ``cfg`` (its ``num_steps``) on 4 fake devices and on 1: the same ``params(state)``
    (rtol 2e-4); then killed after 2 steps and resumed: bit-identical to the 4-device run.
    Returns ``(state_4_devices, resumed_workdir)``."""
    import os

    import jax

    from qmri_jax import engine
    from qmri_jax.engine import sharding
    from qmri_jax.tasks import create_task
    assert len(jax.devices()) == 4, "conftest sets 4 fake CPU devices"
    loop = engine.LoopConfig.from_config(cfg.train)
    s4, _ = engine.train(create_task(cfg), os.path.join(tmp_path, "d4"), loop, data, seed=0)
    s1, _ = engine.train(create_task(cfg), os.path.join(tmp_path, "d1"), loop, data, seed=0,
                         mesh=sharding.create_mesh(1))
    for a, b in zip(jax.tree.leaves(params(s4)), jax.tree.leaves(params(s1))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    wd = os.path.join(tmp_path, "killed")
    _, done = engine.train(create_task(cfg), wd, loop, data, seed=0, stop_at=2)
    assert not done
    resumed, done = engine.train(create_task(cfg), wd, loop, data, seed=0)
    assert done
    for a, b in zip(jax.tree.leaves(params(s4)), jax.tree.leaves(params(resumed))):
        np.testing.assert_array_equal(a, b)
    return s4, wd
