"""The DDPM task inside the training engine: map scaling, a tiny end-to-end run with posterior
sampling and uncertainty metrics, resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm as ddpm_config
from qmri_jax import train
from qmri_jax.data import datasets
from qmri_jax.diffusion import task as ddpm_task
from qmri_jax.models.diffusion_unet import VoxelDenoiser
from qmri_jax.physics.protocol import get_protocol, simulate


def test_scaling_round_trip_and_range():
    names = ("T1", "PD", "k")
    t = jnp.asarray([[20.0, 0.5, 0.9], [3000.0, 1.0, 1.0], [150.0, 0.7, 1.15]])
    x = ddpm_task.scale_maps(t, jnp.ones((3,)), names)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    np.testing.assert_allclose(ddpm_task.unscale_maps(x, names), t, rtol=1e-5)
    bg = ddpm_task.scale_maps(t, jnp.zeros((3,)), names)
    np.testing.assert_array_equal(bg, -1.0)


@pytest.fixture(scope="module")
def vir_data():
    dcfg = datasets.DataConfig(protocol="nist_vir", resolution_mm=4, num_subjects=5,
                               slices_per_subject=3, geometric_fraction=0.4, snr=50.0,
                               transmit_bias=0.05, normalisation="p95")
    out = {}
    for split, idx in datasets.subject_split(dcfg).items():
        ex = [e for i in idx for e in datasets.subject_slices(dcfg, i)]
        arr = {k: v[:, 8:40, 12:44] if np.ndim(v) >= 3 else v
               for k, v in datasets._stack(ex).items()}
        out[split] = train._as_batch_arrays(arr, ("T1", "PD", "k"))
    out["protocol"] = get_protocol("nist_vir").to_dict()
    return out


def tiny_ddpm(num_steps=3, preset="unet"):
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
        cfg.train.batch_size = 4
        cfg.train.num_steps = num_steps
        cfg.train.log_every = 1
        cfg.train.eval_every = 2
        cfg.train.checkpoint_every = 2
        cfg.train.warmup_steps = 1
        cfg.train.progress_bar = False
    return cfg


def test_ddpm_trains_samples_reports_and_resumes(vir_data, tmp_path):
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        wd = str(tmp_path / "w")
        _, m = train.train_and_evaluate(tiny_ddpm(3), wd, data=vir_data)
        for name in ("T1", "PD", "k"):
            assert np.isfinite(m[name]["median_abs_pct"])
        unc = m["uncertainty"]
        assert -1 <= unc["spearman_std_abs_err"] <= 1 and 0 <= unc["coverage_2sigma"] <= 1
        on_disk = json.load(open(os.path.join(wd, "eval", "metrics.json")))
        assert set(on_disk["uncertainty"]) >= {"spearman_std_abs_err", "coverage_2sigma",
                                                "coverage_2sigma_calibrated", "std_scale"}
        assert on_disk["uncertainty"]["calibration_slices"] == 2 and unc["std_scale"] > 0
        for f in ("ddpm_T1map.nii.gz", "ddpm_desc-std_T1map.nii.gz",
                  "ddpm_desc-stdcal_T1map.nii.gz", "uncertainty.png", "maps.png"):
            assert os.path.exists(os.path.join(wd, "eval", f)), f
        state, _ = train.train_and_evaluate(tiny_ddpm(5), wd, data=vir_data)
        assert int(state.step) == 5  # continued from step 3, not from scratch
        rows = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
        steps = [r["step"] for r in rows if "loss" in r]
        assert steps == [1, 2, 3, 4, 5]
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def test_saturation_augment_trains_on_clipped_images(vir_data):
    # With probability 1 and a fixed level, a train step equals the plain step on images that
    # were clipped and renormalised beforehand (same noise key after the augmentation's split).
    from qmri_jax.data.acquisition import saturate
    from qmri_jax.train import create_optimizer

    plain = tiny_ddpm(preset="")  # the main job's per-voxel model (compiles faster than the U-Net)
    aug = tiny_ddpm(preset="")
    with aug.unlocked():
        aug.ddpm.saturation_augment = 1.0
        aug.ddpm.saturation_range = (0.6, 0.6)
    tr = vir_data["train"]
    batch = {k: jnp.asarray(tr[k][:4]) for k in ("images", "targets", "mask")}
    key = jax.random.key(7)
    outs = []
    for cfg, b, k in ((aug, batch, key),
                      (plain, dict(batch, images=saturate(batch["images"], 0.6)),
                       jax.random.split(key, 3)[0])):
        task = ddpm_task.DdpmTask(cfg)
        tx = create_optimizer(cfg.train, cfg.train.num_steps)
        state = task.create_state(jax.random.key(0), tx, batch["images"][:1])
        outs.append(jax.jit(task.make_train_step(tx))(state, b, k)[1]["loss"])
    np.testing.assert_allclose(float(outs[0]), float(outs[1]), rtol=1e-5)
    assert float(jnp.max(saturate(batch["images"], 0.6))) <= 1.0 + 1e-6
    with aug.unlocked():
        aug.ddpm.saturation_augment = 1.5
    with pytest.raises(ValueError, match="saturation_augment"):
        ddpm_task.DdpmTask(aug)


def test_intensity_augment_scales_images_and_pd(vir_data):
    # A fixed factor (low == high) gives the plain step on images x s with PD x s (T1, k unchanged),
    # with the noise key the augmentation's split leaves; a bad range or no PD target is refused.
    from qmri_jax.train import create_optimizer

    plain = tiny_ddpm(preset="")  # the main job's per-voxel model (compiles faster than the U-Net)
    aug = tiny_ddpm(preset="")
    with aug.unlocked():
        aug.ddpm.intensity_augment = (1.3, 1.3)
    tr = vir_data["train"]
    batch = {k: jnp.asarray(tr[k][:4]) for k in ("images", "targets", "mask")}
    names = list(plain.targets)
    factor = np.ones(len(names), np.float32)
    factor[names.index("PD")] = 1.3
    scaled = dict(batch, images=batch["images"] * 1.3, targets=batch["targets"] * factor)
    key = jax.random.key(7)
    losses = []
    for cfg, runs in ((aug, [(batch, key)]),
                      (plain, [(scaled, jax.random.split(key)[0]),
                               (batch, jax.random.split(key)[0])])):
        task = ddpm_task.DdpmTask(cfg)
        tx = create_optimizer(cfg.train, cfg.train.num_steps)
        state = task.create_state(jax.random.key(0), tx, batch["images"][:1])
        step = jax.jit(task.make_train_step(tx))  # one compile per config
        losses += [float(step(state, b, k)[1]["loss"]) for b, k in runs]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert abs(losses[0] - losses[2]) > 1e-4 * abs(losses[2])  # the augmentation changed the step
    for bad in ((0.0, 1.0), (1.4, 0.7), (1.0,)):
        with aug.unlocked():
            aug.ddpm.intensity_augment = bad
        with pytest.raises(ValueError, match="intensity_augment"):
            ddpm_task.DdpmTask(aug)
    with aug.unlocked():
        aug.ddpm.intensity_augment = (0.7, 1.4)
        aug.ddpm.residual_scale = (8.0, 1.0)
        aug.targets = ("T1", "k")
    with pytest.raises(ValueError, match="no PD"):
        ddpm_task.DdpmTask(aug)


def _task_refuses(cfg, match, **ddpm_fields):
    """Setting ``cfg.ddpm``'s ``ddpm_fields`` makes ``DdpmTask(cfg)`` raise a ValueError matching
    ``match`` (the fields stay set)."""
    with cfg.unlocked():
        for name, value in ddpm_fields.items():
            cfg.ddpm[name] = value
    with pytest.raises(ValueError, match=match):
        ddpm_task.DdpmTask(cfg)


def _train_and_sample_with_condition(vir_data, condition, extra_channels):
    """A tiny DDPM conditioned with ``condition``: its first convolution takes the targets, the
    images and ``extra_channels`` more; one train step and a 2-draw DDIM sample are finite."""
    from qmri_jax.train import create_optimizer
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.condition = condition
    task = ddpm_task.DdpmTask(cfg)
    tx = create_optimizer(cfg.train, cfg.train.num_steps)
    tr = vir_data["train"]
    batch = {k: jnp.asarray(tr[k][:4]) for k in ("images", "targets", "mask")}
    n_img = batch["images"].shape[-1]
    state = task.create_state(jax.random.key(0), tx, batch["images"][:1])
    first = jax.tree.leaves(state.params["Conv_0"])
    assert {leaf.shape for leaf in first} >= {(3, 3, len(cfg.targets) + n_img + extra_channels,
                                               cfg.ddpm.features[0])}
    state, metrics = jax.jit(task.make_train_step(tx))(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    out = jax.jit(task.make_sampler("ddim", 4, 0.0, 2))(state.params, batch["images"][:2],
                                                         jax.random.key(2))
    assert out["mean"].shape == (2, *batch["images"].shape[1:3], len(cfg.targets))
    assert np.all(np.isfinite(np.asarray(out["mean"])))
    return cfg, tx, state, batch


def test_shape_condition_values_scale_invariance_and_task(vir_data):
    # Closed form: each voxel's series over its own maximum, then the maximum; a zero series stays 0.
    images = jnp.asarray([[0.2, 0.4, 0.8], [0.0, 0.0, 0.0], [3.0, 1.5, 0.75]])
    np.testing.assert_allclose(ddpm_task.condition_images(images, "shape"),
                               [[0.25, 0.5, 1.0, 0.8], [0, 0, 0, 0], [1.0, 0.5, 0.25, 3.0]],
                               rtol=1e-6)
    np.testing.assert_array_equal(ddpm_task.condition_images(images, "images"), images)
    # The shape channels do not move when the series is scaled; only the level channel does.
    x = jnp.asarray(vir_data["train"]["images"][:2])
    a = ddpm_task.condition_images(x, "shape")
    b = ddpm_task.condition_images(1.37 * x, "shape")
    np.testing.assert_allclose(a[..., :-1], b[..., :-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(1.37 * a[..., -1], b[..., -1], rtol=1e-6)
    with pytest.raises(ValueError, match="condition"):
        ddpm_task.condition_images(x, "level")

    # The task feeds the network N + 1 condition channels, trains and samples with them.
    cfg, _, _, _ = _train_and_sample_with_condition(vir_data, "shape", 1)
    with cfg.unlocked():
        cfg.ddpm.condition = "level"
    with pytest.raises(ValueError, match="config.ddpm.condition"):
        ddpm_task.DdpmTask(cfg)


def test_fit_condition_values_scale_equivariance_and_task(vir_data):
    # Closed form: noiseless IR series of known maps -> the fitted channels are the scaled maps.
    prot = get_protocol("nist_vir")
    rng = np.random.default_rng(0)
    truth = {"PD": rng.uniform(0.3, 1.2, (2, 5, 6)),
             "T1": np.exp(rng.uniform(np.log(60.0), np.log(3000.0), (2, 5, 6))),
             "T2": np.full((2, 5, 6), 80.0), "k": rng.uniform(0.85, 1.0, (2, 5, 6))}
    images = simulate({n: jnp.asarray(v, jnp.float32) for n, v in truth.items()}, prot)
    c = ddpm_task.condition_images(images, "fit", prot)
    assert c.shape == (2, 5, 6, len(prot) + 3)
    np.testing.assert_array_equal(c[..., :len(prot)], images)
    fitted = ddpm_task.unscale_maps(c[..., len(prot):], ("PD", "T1", "k"))
    te_weight = np.exp(-6.9 / 80.0)  # TE weighting is absorbed in PD
    np.testing.assert_allclose(fitted[..., 0], truth["PD"] * te_weight, rtol=5e-3)
    np.testing.assert_allclose(fitted[..., 1], truth["T1"], rtol=5e-3)
    np.testing.assert_allclose(fitted[..., 2], truth["k"], atol=5e-3)
    # Scaling the images leaves the T1 and k channels and moves PD with them (inside +-2).
    x = jnp.asarray(vir_data["train"]["images"][:2])
    a = ddpm_task.condition_images(x, "fit", prot)
    b = ddpm_task.condition_images(0.8 * x, "fit", prot)
    brain = np.asarray(vir_data["train"]["mask"][:2]) > 0
    # (Each voxel is fitted in units of its own maximum, so only float32 rounding differs; after 5
    # unconverged steps it moves a few ill-conditioned voxels further: a fresh install on
    # 2026-11-23 moved one by 0.2 with a 99th percentile of 1.0e-3, so those are bounded by count.)
    diff = np.abs(np.asarray(a[..., -2:]) - np.asarray(b[..., -2:]))[brain]
    assert np.quantile(diff, 0.98) < 1e-3 and np.mean(diff > 2e-2) < 2e-3, (
        np.quantile(diff, 0.98), np.mean(diff > 2e-2))
    pd_a = ddpm_task.unscale_maps(a[..., -3:], ("PD", "T1", "k"))[..., 0]
    pd_b = ddpm_task.unscale_maps(b[..., -3:], ("PD", "T1", "k"))[..., 0]
    rel = np.abs(np.asarray(pd_b)[brain] / (0.8 * np.asarray(pd_a)[brain]) - 1)
    assert np.quantile(rel, 0.99) < 1e-3 and rel.max() < 2e-2, (np.quantile(rel, 0.99), rel.max())
    assert float(jnp.abs(a[..., -3:]).max()) <= 2.0  # noise-only voxels' fits are held at +-2
    with pytest.raises(ValueError, match="needs the acquisition protocol"):
        ddpm_task.condition_images(x, "fit")

    # The task conditions the network on N + 3 channels, trains and samples with them.
    cfg, _, state, batch = _train_and_sample_with_condition(vir_data, "fit", 3)
    # Residual: a network that predicts no correction (all parameters 0, x0 prediction) returns
    # exactly the voxelwise fit, in every draw.
    with cfg.unlocked():
        cfg.ddpm.residual = True
    task = ddpm_task.DdpmTask(cfg)
    zero = jax.tree.map(jnp.zeros_like, state.params)
    out = jax.jit(task.make_sampler("ddim", 4, 0.0, 2))(zero, batch["images"][:2],
                                                         jax.random.key(3))
    names = tuple(cfg.targets)
    fitted = jax.jit(lambda x: ddpm_task.unscale_maps(  # jitted like the sampler: same rounding
        ddpm_task.fit_base(ddpm_task.condition_images(x, "fit", prot), names), names))
    rel = np.abs(np.asarray(out["mean"]) / np.asarray(fitted(batch["images"][:2])) - 1)
    assert np.quantile(rel, 0.99) < 1e-5 and rel.max() < 2e-2, (np.quantile(rel, 0.99), rel.max())
    np.testing.assert_allclose(out["std"], 0.0, atol=1e-6 * float(jnp.abs(out["mean"]).max()))
    # (The residual train step is the main job's: the per-voxel model's tests train it.)
    _task_refuses(cfg, "residual=True diffuses around the voxelwise fit", condition="images")
    # A protocol the IR model cannot fit is refused when the task is built.
    with cfg.unlocked():
        cfg.ddpm.condition = "fit"
        cfg.ddpm.residual = False
        cfg.data.protocol = "four_contrast_brain"
    with pytest.raises(ValueError, match="condition='fit' with config.data.protocol="
                                         "'four_contrast_brain'"):
        ddpm_task.DdpmTask(cfg)


def test_voxel_network_task_trains_and_samples_each_voxel_on_its_own(vir_data):
    """ddpm.network='voxel': one train step and a DDIM posterior sample; with the same key, the
    posterior at a voxel does not move when another voxel's images change; unknown networks are
    refused by name."""
    from qmri_jax.train import create_optimizer
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.network = "voxel"
        cfg.ddpm.voxel_width = 16
        cfg.ddpm.voxel_depth = 2
    task = ddpm_task.DdpmTask(cfg)
    tx = create_optimizer(cfg.train, cfg.train.num_steps)
    tr = vir_data["train"]
    batch = {k: jnp.asarray(tr[k][:4]) for k in ("images", "targets", "mask")}
    state = task.create_state(jax.random.key(0), tx, batch["images"][:1])
    assert "Conv_0" not in state.params
    step = jax.jit(task.make_train_step(tx))
    for i in range(2):
        state, metrics = step(state, batch, jax.random.key(i))
        assert np.isfinite(float(metrics["loss"]))
    sample = jax.jit(task.make_sampler("ddim", 4, 0.0, 3))
    imgs = batch["images"][:2]
    a = sample(state.params, imgs, jax.random.key(2))
    assert a["mean"].shape == (2, *imgs.shape[1:3], len(cfg.targets))
    assert a["samples"].shape == (3, *a["mean"].shape)
    assert np.all(np.isfinite(np.asarray(a["mean"]))) and float(a["std"].max()) > 0
    b = sample(state.params, imgs.at[0, 10, 12].mul(1.5), jax.random.key(2))
    moved = np.any(np.asarray(a["mean"] != b["mean"]), axis=-1)
    assert moved[0, 10, 12] and moved.sum() == 1
    # voxel_batch: the step trains on that many voxels drawn from the batch (here 64 of 4 slices),
    # changes the parameters, and refuses more voxels than the batch has.
    with cfg.unlocked():
        cfg.ddpm.voxel_batch = 64
    vtask = ddpm_task.DdpmTask(cfg)
    vstate, metrics = jax.jit(vtask.make_train_step(tx))(state, batch, jax.random.key(5))
    assert np.isfinite(float(metrics["loss"]))
    assert any(float(jnp.abs(a - b).max()) > 0
               for a, b in zip(jax.tree.leaves(vstate.params), jax.tree.leaves(state.params)))
    with cfg.unlocked():
        cfg.ddpm.voxel_batch = batch["mask"][:1].size + 1  # one slice has mask.size voxels
    with pytest.raises(ValueError, match="voxel_batch"):
        ddpm_task.DdpmTask(cfg).make_train_step(tx)(state, {k: v[:1] for k, v in batch.items()},
                                                    jax.random.key(5))
    _task_refuses(cfg, "voxel_batch", network="unet")
    _task_refuses(cfg, "config.ddpm.network", network="mlp")
    # configs/ddpm.py's default and its :voxel preset (2000 steps) build a per-voxel
    # residual-around-the-fit task; :unet and :paper the U-Net on images.
    for preset, steps in [("", 1300), ("voxel", 2000)]:
        vcfg = ddpm_config.get_config(preset)
        vt = ddpm_task.DdpmTask(vcfg)
        assert isinstance(vt.net, VoxelDenoiser) and vt.voxel_batch == 8192
        assert vt.condition == "fit" and vt.residual and vt.voxel_prior == "flat_T1"
        assert vt.voxel_background == 0.0 and vt.resimulate == 0.5
        np.testing.assert_array_equal(vt.residual_scale, [8.0, 1.0, 1.0])
        assert vcfg.train.num_steps == steps and vcfg.data.k_spread == 0.15
    for preset in ("unet", "paper"):
        ut = ddpm_task.DdpmTask(ddpm_config.get_config(preset))
        assert not isinstance(ut.net, VoxelDenoiser) and ut.voxel_batch == 0
        assert ut.condition == "images" and not ut.residual
    with pytest.raises(ValueError, match="unknown preset 'voxels'"):
        ddpm_config.get_config("voxels")


def _voxel_steps_change_parameters(vir_data, **ddpm_fields):
    """A tiny per-voxel DDPM (64 voxels per step) with ``ddpm_fields`` set: two jitted train
    steps give a finite loss and move the parameters. Returns the config."""
    from qmri_jax.train import create_optimizer
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.network = "voxel"
        cfg.ddpm.voxel_width = 16
        cfg.ddpm.voxel_depth = 2
        cfg.ddpm.voxel_batch = 64
        for name, value in ddpm_fields.items():
            cfg.ddpm[name] = value
    task = ddpm_task.DdpmTask(cfg)
    tx = create_optimizer(cfg.train, cfg.train.num_steps)
    batch = {k: jnp.asarray(vir_data["train"][k][:4]) for k in ("images", "targets", "mask")}
    state = task.create_state(jax.random.key(0), tx, batch["images"][:1])
    step = jax.jit(task.make_train_step(tx))
    new, metrics = step(state, batch, jax.random.key(5))  # (warm-up: learning rate 0 at step 0)
    new, metrics = step(new, batch, jax.random.key(6))
    assert np.isfinite(float(metrics["loss"]))
    assert any(float(jnp.abs(a - b).max()) > 0
               for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))
    return cfg


def test_flat_t1_voxel_draw_is_uniform_over_log_t1_bins_and_keeps_background(vir_data):
    """ddpm.voxel_prior='flat_T1': each occupied log-T1 bin of the brain gets the same draw
    probability (bins rarer than FLAT_T1_MIN_COUNT voxels proportionally less), the background
    keeps its share of the batch; the train step draws with it and changes the parameters; the
    setting is refused without voxel_batch, without a T1 target, or by an unknown name."""
    names = ("T1", "PD", "k")
    t1 = np.r_[np.full(1000, 900.0), np.full(100, 150.0), np.full(40, 3000.0), np.full(2, 20.0),
               np.full(500, 900.0)]
    brain = np.r_[np.ones(1142, bool), np.zeros(500, bool)]
    scaled = ddpm_task.scale_maps(jnp.stack([jnp.asarray(t1), jnp.ones(t1.shape),
                                             jnp.ones(t1.shape)], -1), jnp.asarray(brain), names)
    p = np.asarray(ddpm_task.flat_t1_weights(scaled[:, 0], jnp.asarray(brain)))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1142:].sum(), 500 / 1642, rtol=1e-5)  # background share
    groups = [p[:1000].sum(), p[1000:1100].sum(), p[1100:1140].sum()]
    np.testing.assert_allclose(groups, groups[0], rtol=1e-5)  # 1000, 100 and 40 voxels alike
    rare = ddpm_task.FLAT_T1_MIN_COUNT
    np.testing.assert_allclose(p[1140:1142].sum(), groups[0] * 2 / rare, rtol=1e-5)
    np.testing.assert_allclose(np.ptp(p[:1000]), 0.0, atol=1e-12)  # one bin: equal weights
    # ddpm.voxel_background: the background gets that share, the brain bins keep their ratios.
    for share in (0.1, 0.0):
        q = np.asarray(ddpm_task.flat_t1_weights(scaled[:, 0], jnp.asarray(brain), share))
        np.testing.assert_allclose(q[1142:].sum(), share, atol=1e-7)
        np.testing.assert_allclose(q[:1142], p[:1142] * (1 - share) / p[:1142].sum(), rtol=1e-5)

    cfg = _voxel_steps_change_parameters(vir_data, voxel_prior="flat_T1")
    # Trained on brain voxels only (voxel_background=0), the validation loss leaves the background
    # out too: changing the background's images (so its fit, and the residual around it) changes
    # it only when the background is drawn (-1: at its share of the batch).
    from qmri_jax.train import create_optimizer
    vcfg = cfg.copy_and_resolve_references()
    with vcfg.unlocked():
        vcfg.ddpm.condition, vcfg.ddpm.residual = "fit", True
    val = {k: np.asarray(v[:2]) for k, v in vir_data["validation"].items()}
    bg = val["mask"] == 0
    moved = {**val, "images": np.where(bg[..., None], val["images"] + 0.3, val["images"]),
             "targets": np.where(bg[..., None], val["targets"] * 2.0 + 1.0, val["targets"])}
    for share, same in [(0.0, True), (-1.0, False)]:
        with vcfg.unlocked():
            vcfg.ddpm.voxel_background = share
        task = ddpm_task.DdpmTask(vcfg)
        state = task.create_state(jax.random.key(0), create_optimizer(vcfg.train, 3),
                                  jnp.asarray(val["images"][:1]))
        a, b = task.validation_loss(state, val), task.validation_loss(state, moved)
        assert np.isfinite(a) and (a == b) == same, (share, a, b)
    _task_refuses(cfg, "voxel_background=1.0", voxel_background=1.0)
    _task_refuses(cfg, "needs config.ddpm.voxel_prior='flat_T1'", voxel_prior="data",
                  voxel_background=0.1)
    with cfg.unlocked():
        cfg.ddpm.voxel_background = -1.0
    _task_refuses(cfg, "voxel_prior='uniform'", voxel_prior="uniform")
    _task_refuses(cfg, "needs config.ddpm.voxel_batch > 0", voxel_prior="flat_T1", voxel_batch=0)
    with cfg.unlocked():
        cfg.targets = ("PD", "k")
    _task_refuses(cfg, "T1 among the targets", voxel_batch=64)


def test_resimulated_voxels_follow_the_ir_model_at_their_new_t1_and_k(vir_data):
    """ddpm.voxel_resimulate: the chosen brain voxels get T1 / k from the given ranges and the IR
    model's series at their fitted amplitude (a refit returns the new T1 and k; the noise has std
    amplitude / SNR), their PD target and the other voxels are kept; the train step uses it; bad
    settings are refused."""
    from qmri_jax.fitting import fit_signals, get_model
    prot = get_protocol("nist_vir")
    model = get_model("ir")
    names = ("T1", "PD", "k")
    n = 1200
    rng = np.random.default_rng(0)
    amp = jnp.asarray(rng.uniform(0.3, 1.0, n), jnp.float32)
    images = model.signal({"PD": amp, "T1": jnp.full((n,), 900.0), "k": jnp.full((n,), 0.97)},
                          prot)
    targets = jnp.stack([jnp.full((n,), 900.0), 1.3 * amp, jnp.full((n,), 0.97)], -1)
    brain = jnp.arange(n) < 1000

    resim_jit = jax.jit(lambda k, fraction, snr: ddpm_task.resimulate_voxels(
        k, images, targets, brain, names, prot, fraction, (50.0, 3000.0), (0.8, 1.2),
        (snr, snr * (1 + 1e-6))))  # one compile: fraction and SNR are traced

    def resim(fraction, snr, seed=0):
        out = resim_jit(jax.random.key(seed), fraction, snr)
        changed = np.any(np.asarray(out[0]) != np.asarray(images), axis=-1)
        np.testing.assert_array_equal(np.asarray(out[2]), changed)  # redrawn: the changed ones
        return np.asarray(out[0]), np.asarray(out[1])

    x, y = resim(1.0, 1e7)
    np.testing.assert_array_equal(x[1000:], np.asarray(images)[1000:])  # background kept
    np.testing.assert_array_equal(y[1000:], np.asarray(targets)[1000:])
    np.testing.assert_array_equal(y[:, 1], np.asarray(targets)[:, 1])  # PD target kept
    assert 50.0 <= y[:1000, 0].min() and y[:1000, 0].max() <= 3000.0
    assert 0.8 <= y[:1000, 2].min() and y[:1000, 2].max() <= 1.2
    # Log-uniform T1: the median is near the geometric mean of the range (sqrt(50 * 3000) = 387).
    assert 330 < np.median(y[:1000, 0]) < 450, np.median(y[:1000, 0])
    fit = fit_signals(model, prot, jnp.asarray(x[:1000]), max_iter=20)
    rel = np.abs(np.asarray(fit["T1"]) / y[:1000, 0] - 1)
    assert np.median(rel) < 1e-4 and np.quantile(rel, 0.95) < 1e-2, np.quantile(rel, [0.5, 0.95])
    np.testing.assert_allclose(np.asarray(fit["PD"]), np.asarray(amp)[:1000], rtol=2e-2)
    # Noise: at SNR 50 the late, nearly relaxed samples scatter with std amplitude / 50.
    xn, yn = resim(1.0, 50.0)
    clean = model.signal({"PD": amp[:1000], "T1": jnp.asarray(yn[:1000, 0]),
                          "k": jnp.asarray(yn[:1000, 2])}, prot)
    z = (xn[:1000, -1] - np.asarray(clean)[:, -1]) / np.asarray(amp)[:1000] * 50.0
    keep = yn[:1000, 0] < 600  # TI 3000 ms: > 99% relaxed, Rician ~ Gaussian
    assert 0.85 < np.std(z[keep]) < 1.15 and abs(np.mean(z[keep])) < 0.15, (np.std(z[keep]),
                                                                            np.mean(z[keep]))
    xh, _ = resim(0.5, 1e7, seed=1)
    changed = np.any(xh[:1000] != np.asarray(images)[:1000], axis=-1).mean()
    assert 0.4 < changed < 0.6, changed

    cfg = _voxel_steps_change_parameters(vir_data, condition="fit", voxel_resimulate=0.5)
    _task_refuses(cfg, "voxel_snr_range", voxel_snr_range=(100.0, 50.0))
    _task_refuses(cfg, "voxel_resimulate=1.5", voxel_snr_range=(20.0, 1000.0),
                  voxel_resimulate=1.5)
    _task_refuses(cfg, "resimulate_blocks=\\(0,\\)", voxel_resimulate=0.5, voxel_batch=0,
                  resimulate_blocks=(0,))
    _task_refuses(cfg, "voxel_resimulate_pd='maybe'", voxel_batch=64, resimulate_blocks=(1, 2),
                  voxel_resimulate_pd="maybe")
    _task_refuses(cfg, "needs config.ddpm.voxel_resimulate > 0", voxel_resimulate_pd="drop",
                  voxel_resimulate=0.0)


def test_resimulated_blocks_are_constant_per_block_and_follow_the_ir_model():
    """ddpm.voxel_resimulate on whole slices (voxel_batch 0, e.g. the U-Net): each slice is cut
    into square blocks of one of the given sides; a chosen block's brain voxels share one new T1
    and k from the ranges, with the IR model's series at each voxel's own fitted amplitude (a
    refit returns them); the PD targets and the background are kept. The step: the next test."""
    from qmri_jax.fitting import fit_signals, get_model
    prot = get_protocol("nist_vir")
    model = get_model("ir")
    names = ("T1", "PD", "k")
    b, h, w = 8, 16, 12
    amp = jnp.asarray(np.random.default_rng(0).uniform(0.3, 1.0, (b, h, w)), jnp.float32)
    images = model.signal({"PD": amp, "T1": jnp.full((b, h, w), 900.0),
                           "k": jnp.full((b, h, w), 0.97)}, prot)
    targets = jnp.stack([jnp.full((b, h, w), 900.0), 1.3 * amp, jnp.full((b, h, w), 0.97)], -1)
    brain = jnp.ones((b, h, w), bool).at[:, :, :2].set(False)
    resim = jax.jit(lambda key, fraction: ddpm_task.resimulate_blocks(
        key, images, targets, brain, names, prot, fraction, (50.0, 3000.0), (0.8, 1.2),
        (1e7, 1e7 * (1 + 1e-6)), (2, 4)))
    x, y, on = (np.asarray(a) for a in resim(jax.random.key(0), 1.0))
    np.testing.assert_array_equal(on, np.asarray(brain))  # fraction 1: every brain voxel
    np.testing.assert_array_equal(x[:, :, :2], np.asarray(images)[:, :, :2])
    np.testing.assert_array_equal(y[..., 1], np.asarray(targets)[..., 1])  # PD target kept
    sides = []
    for i in range(b):  # the largest side whose blocks hold one (T1, k) over their brain voxels
        t1k = np.where(np.asarray(brain)[i, ..., None], y[i][..., [0, 2]], np.nan)
        ok = [s for s in (1, 2, 4) if all(
            np.unique(blk[~np.isnan(blk[..., 0])], axis=0).shape[0] <= 1
            for blk in (t1k[r:r + s, c:c + s] for r in range(0, h, s) for c in range(0, w, s)))]
        sides.append(max(ok))
    assert set(sides) == {2, 4}, sides  # both sides drawn, and never a finer pattern
    assert 50.0 <= y[on][:, 0].min() and y[on][:, 0].max() <= 3000.0
    assert 0.8 <= y[on][:, 2].min() and y[on][:, 2].max() <= 1.2
    fit = fit_signals(model, prot, jnp.asarray(x[on]), max_iter=20)
    rel = np.abs(np.asarray(fit["T1"]) / y[on][:, 0] - 1)
    assert np.median(rel) < 1e-4 and np.quantile(rel, 0.95) < 1e-2, np.quantile(rel, [0.5, 0.95])
    fractions = [np.asarray(resim(jax.random.key(s), 0.5)[2])[np.asarray(brain)].mean()
                 for s in range(4)]
    assert 0.3 < np.mean(fractions) < 0.7, fractions  # blocks of 4: few per slice


@pytest.mark.parametrize("whole_slices", [False, True])
def test_resimulate_pd_drop_leaves_the_redrawn_voxels_pd_out_of_the_loss(vir_data, whole_slices):
    """ddpm.voxel_resimulate_pd='drop': with every drawn voxel re-simulated (fraction 1, brain
    voxels only) the train step's loss does not depend on the PD targets at all, while with
    'keep' it does; on a voxel draw and on whole slices (blocks; the per-voxel network stands
    in for the U-Net there, the step's code path is the same and compiles faster)."""
    from qmri_jax.train import create_optimizer
    cfg = tiny_ddpm(preset="")  # the main job's model: brain voxels only (voxel_background 0)
    with cfg.unlocked():
        cfg.ddpm.voxel_resimulate = 1.0
        if whole_slices:
            cfg.ddpm.voxel_batch, cfg.ddpm.voxel_prior, cfg.ddpm.voxel_background = 0, "data", -1
    batch = {k: jnp.asarray(vir_data["train"][k][:2]) for k in ("images", "targets", "mask")}
    pd = np.asarray(batch["targets"]).copy()
    pd[..., cfg.targets.index("PD")] *= 1.3
    other_pd = dict(batch, targets=jnp.asarray(pd))
    losses = {}
    for mode in ("keep", "drop"):
        with cfg.unlocked():
            cfg.ddpm.voxel_resimulate_pd = mode
        task = ddpm_task.DdpmTask(cfg)
        tx = create_optimizer(cfg.train, cfg.train.num_steps)
        state = task.create_state(jax.random.key(0), tx, batch["images"][:1])
        step = jax.jit(task.make_train_step(tx))
        losses[mode] = [float(step(state, b, jax.random.key(5))[1]["loss"])
                        for b in (batch, other_pd)]
    assert losses["keep"][0] != pytest.approx(losses["keep"][1], rel=1e-3), losses
    assert losses["drop"][0] == pytest.approx(losses["drop"][1], rel=1e-6), losses
    assert np.isfinite(losses["drop"][0])


def test_residual_scale_scales_the_diffused_residual_and_divides_it_back(vir_data):
    """ddpm.residual_scale: the train and validation targets are (maps - fit) x scale per map, so
    with a network that predicts 0 the x0 loss is quadratic in each map's factor; sampling divides
    a prediction by the factor (and clips at 2 x factor) before adding the fit back."""
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.condition = "fit"
        cfg.ddpm.residual = True
    names = tuple(cfg.targets)
    prot = get_protocol(cfg.data.protocol)
    images = jnp.asarray(vir_data["validation"]["images"][:2])
    base = jax.jit(lambda im: ddpm_task.fit_base(ddpm_task.condition_images(im, "fit", prot),
                                                 names))(images)  # compiled, as the sampler is

    def task_with(scale):
        with cfg.unlocked():
            cfg.ddpm.residual_scale = scale
        return ddpm_task.DdpmTask(cfg)

    from qmri_jax.train import create_optimizer
    tx = create_optimizer(cfg.train, cfg.train.num_steps)
    task = task_with(())
    np.testing.assert_array_equal(task.residual_scale, [1.0, 1.0, 1.0])
    zero = jax.tree.map(jnp.zeros_like,
                        task.create_state(jax.random.key(0), tx, images[:1]).params)
    val = {k: v[:2] for k, v in vir_data["validation"].items()}

    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=zero, batch_stats={},
                             opt_state=None, ema_params=zero)
    for scale, want in [((3.0,), [3.0] * 3), ((2.0, 1.0, 1.0), [2.0, 1.0, 1.0])]:
        np.testing.assert_array_equal(task_with(scale).residual_scale, want)

    def loss(scale):  # one task, one compiled loss: the factors are an argument of it
        task.residual_scale = np.broadcast_to(np.asarray(scale, np.float32), (3,))
        return task.validation_loss(state, val)

    one = loss((1.0,))
    assert one > 0
    np.testing.assert_allclose(loss((3.0,)), 9 * one, rtol=1e-5)
    # Per map: (4 a + b + c) + (a + 4 b + 4 c) = 5 (a + b + c).
    np.testing.assert_allclose(loss((2.0, 1.0, 1.0)) + loss((1.0, 2.0, 2.0)), 5 * one, rtol=1e-5)

    class Constant:  # a "network" whose x0 prediction is the same value everywhere
        def __init__(self, value):
            self.value = value

        def apply(self, variables, x_t, t, c):
            return jnp.full(x_t.shape, self.value, x_t.dtype)

    for scale, value, expect in [((8.0, 1.0, 1.0), 0.4, (0.05, 0.4, 0.4)),
                                 ((8.0, 1.0, 1.0), 10.0, (1.25, 2.0, 2.0))]:
        task = task_with(scale)
        task.net = Constant(value)
        out = jax.jit(task.make_sampler("ddim", 4, 0.0, 2))(None, images, jax.random.key(1))
        want = ddpm_task.unscale_maps(base + jnp.asarray(expect), names)
        np.testing.assert_allclose(out["mean"], want, rtol=1e-4)
    _task_refuses(cfg, "residual_scale", residual_scale=(1.0, 2.0))
    _task_refuses(cfg, "residual_scale", residual_scale=(0.0,))
    with cfg.unlocked():
        cfg.ddpm.residual = False
    _task_refuses(cfg, "residual=True for factors other than 1", residual_scale=(2.0,))


def _fake_posterior(rng, n, sigma, reported):
    """Truth, a mean off by N(0, sigma) and a reported std ``reported * sigma`` on a [n, 8, 8]
    brain (relative units)."""
    truth = rng.uniform(500, 1500, size=(n, 8, 8, 1))
    sd = sigma * truth
    mean = truth + rng.normal(size=truth.shape) * sd
    return mean, reported * sd, {"targets": truth, "mask": np.ones((n, 8, 8)),
                                 "images": np.zeros((n, 8, 8, 2))}


@pytest.mark.parametrize("reported", [1 / 50, 1.0, 4.0])
def test_std_scale_recovers_the_miscalibration_on_held_out_data(reported):
    """Posterior std off by a known factor: the fitted scale undoes it (1.96 / 2 / factor for a
    Gaussian) and held-out coverage of mean +- 2 scaled std is the requested 95%."""
    from qmri_jax.diffusion.task import fit_std_scale, uncertainty_metrics
    rng = np.random.default_rng(0)
    mean, std, val = _fake_posterior(rng, 400, 0.05, reported)
    cal = fit_std_scale(mean, std, val, ("T1",), 0.95)
    np.testing.assert_allclose(cal["T1"]["std_scale"], 1.96 / 2 / reported, rtol=0.03)
    mean, std, test = _fake_posterior(rng, 400, 0.05, reported)
    unc = uncertainty_metrics(mean, std, test, ("T1",), cal)
    raw = {1 / 50: 0.032, 1.0: 0.954, 4.0: 1.0}[reported]  # P(|z| <= 2 * reported)
    assert abs(unc["coverage_2sigma"] - raw) < 0.01
    assert abs(unc["coverage_2sigma_calibrated"] - 0.95) < 0.01
    assert unc["std_scale"] == cal["T1"]["std_scale"]
    assert "coverage_2sigma_calibrated" not in uncertainty_metrics(mean, std, test, ("T1",))
    with pytest.raises(ValueError, match="calibration_coverage"):
        fit_std_scale(mean, std, val, ("T1",), 1.5)


def test_posterior_std_shrinks_with_more_information():
    """With an oracle denoiser that knows x0, every draw equals x0: mean = truth, std = 0."""
    from qmri_jax.diffusion import samplers, schedules
    sch = schedules.linear_schedule(50)
    x0 = jnp.full((2, 4, 4, 1), 0.25)

    def oracle(x_t, t):
        ab = sch.alpha_bars[t][:, None, None, None]
        return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

    out = samplers.posterior_summary(
        lambda k: samplers.ddim_sample(oracle, sch, x0.shape, k, 10, 1.0), jax.random.key(0), 5)
    np.testing.assert_allclose(out["mean"], x0, atol=1e-4)
    np.testing.assert_allclose(out["std"], 0.0, atol=1e-4)


def test_trained_ddpm_applies_to_real_phantom_scans(vir_data, tmp_path, nist_dir):
    """experiments/nist_phantom.py --checkpoint: a (tiny) workdir of the main job's default (the
    per-voxel DDPM around the fit, re-simulated voxels) trains, evaluates and applies to the real
    VIR DICOMs."""
    from experiments import nist_phantom
    from qmri_jax.io.dicom import read_dicom_series
    wd = str(tmp_path / "w")
    cfg = tiny_ddpm(2, preset="")
    assert cfg.ddpm.network == "voxel" and cfg.ddpm.voxel_resimulate > 0
    with cfg.unlocked():
        cfg.eval.figures = False
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        train.train_and_evaluate(cfg, wd, data=vir_data)
        vir = read_dicom_series(nist_phantom._series_dirs(nist_dir, "vir"), kind="ir", name="vir")
        labels = np.asarray(np.load(nist_dir / "rois.npz")["t1_labels"]).T
        out = nist_phantom.learned_t1(wd, vir, labels > 0, tmp_path)
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    assert out["T1"].shape == labels.shape and "T1_std" in out
    inside = labels > 0
    assert np.all(np.isfinite(out["T1"][inside])) and np.all(out["T1"][inside] > 0)
    assert np.all(np.isnan(out["T1"][~inside]))
