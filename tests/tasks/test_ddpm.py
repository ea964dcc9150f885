"""The DDPM task: a tiny end-to-end run with posterior sampling, calibration and resume; its
train step with each option (saturation, fit condition and residual, per-voxel network and voxel
draws, re-simulation, PD drop, residual scale); refusals; workdirs written before the split."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ddpm as ddpm_config
from qmri_jax import train
from qmri_jax.diffusion.conditioning import (condition_images, fit_base, fit_sd,
                                             slice_noise_sigma)
from qmri_jax.engine.state import compiled_init
from qmri_jax.models import VoxelDenoiser
from qmri_jax.physics.protocol import get_protocol
from qmri_jax.physics.units import unscale_maps
from qmri_jax.tasks import DdpmTask
from tests.tiny import ddpm_config_tiny as tiny_ddpm
from tests.tiny import vir_data as make_vir_data


@pytest.fixture(scope="module")
def vir_data():
    return make_vir_data()


def _batch(arrays, n=4):
    return {k: jnp.asarray(arrays[k][:n]) for k in ("images", "targets", "mask")}


def _task_refuses(cfg, match, **ddpm_fields):
    """Setting ``cfg.ddpm``'s ``ddpm_fields`` makes ``DdpmTask(cfg)`` raise a ValueError matching
    ``match`` (the fields stay set)."""
    with cfg.unlocked():
        for name, value in ddpm_fields.items():
            cfg.ddpm[name] = value
    with pytest.raises(ValueError, match=match):
        DdpmTask(cfg)


def _zero_state(task, images):
    """A state whose parameters (and EMA) are all 0."""
    state = task.create_state(jax.random.key(0), {"images": images[:1]})
    zero = jax.tree.map(jnp.zeros_like, state.params)
    return state.replace(params=zero, ema_params=zero)


def test_ddpm_trains_samples_reports_and_resumes(vir_data, tmp_path):
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        wd = str(tmp_path / "w")
        # the main job's per-voxel model (the U-Net's steps: the fit-condition test below)
        _, m = train.train_and_evaluate(tiny_ddpm(3, preset=""), wd, data=vir_data)
        for name in ("T1", "PD", "k"):
            assert np.isfinite(m[name]["median_abs_pct"])
        unc = m["uncertainty"]
        assert -1 <= unc["spearman_std_abs_err"] <= 1 and 0 <= unc["coverage_2sigma"] <= 1
        on_disk = json.load(open(os.path.join(wd, "eval", "metrics.json")))
        assert set(on_disk["uncertainty"]) >= {"spearman_std_abs_err", "coverage_2sigma",
                                                "coverage_2sigma_calibrated", "std_scale"}
        assert on_disk["uncertainty"]["calibration_slices"] == 2 and unc["std_scale"] > 0
        exact = on_disk["uncertainty"]["exact"]  # against the exact posterior of 16 voxels
        # (3 steps: the EMA network is still ~0, so the model SD can round to 0 in float32)
        assert exact["voxels"] == 16 and exact["map"] == "T1" and exact["sd_ratio_median"] >= 0
        assert {"raw_coverage_2sd", "exact_coverage_2sd", "w2_median"} <= set(exact)
        for f in ("ddpm_T1map.nii.gz", "ddpm_desc-std_T1map.nii.gz",
                  "ddpm_desc-stdcal_T1map.nii.gz", "uncertainty.png", "maps.png"):
            assert os.path.exists(os.path.join(wd, "eval", f)), f
        # (stopped at step 5 of 6, as a killed run: no second evaluation)
        state, m = train.train_and_evaluate(tiny_ddpm(6, preset=""), wd, stop_at=5,
                                            data=vir_data)
        assert int(state.step) == 5 and m is None  # continued from step 3, not from scratch
        rows = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
        steps = [r["step"] for r in rows if "loss" in r]
        assert steps == [1, 2, 3, 4, 5]
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def test_saturation_augment_trains_on_clipped_images(vir_data):
    # With probability 1 and a fixed level, a train step equals the plain step on images that
    # were clipped and renormalised beforehand (same noise key after the augmentation's split).
    from qmri_jax.data.acquisition import saturate

    plain = tiny_ddpm(preset="")  # the main job's per-voxel model (compiles faster than the U-Net)
    aug = tiny_ddpm(preset="")
    for cfg in (plain, aug):  # without the validity mask: clipped samples fed as measured
        with cfg.unlocked():
            cfg.ddpm.update(validity=False, saturation_augment=0.0, missing_augment=0.0)
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
        task = DdpmTask(cfg)
        state = task.create_state(jax.random.key(0), {"images": batch["images"][:1]})
        outs.append(jax.jit(task.train_step)(state, b, k)[1]["loss"])
    np.testing.assert_allclose(float(outs[0]), float(outs[1]), rtol=1e-5)
    assert float(jnp.max(saturate(batch["images"], 0.6))) <= 1.0 + 1e-6
    with aug.unlocked():
        aug.ddpm.saturation_augment = 1.5
    with pytest.raises(ValueError, match="saturation_augment"):
        DdpmTask(aug)


def test_fit_condition_task_trains_samples_and_residual_returns_the_fit(vir_data):
    """condition='fit': the U-Net's first convolution takes the targets, the images and the 3
    fitted channels; a train step and a DDIM sample are finite. Residual: a network that predicts
    no correction (all parameters 0, x0 prediction) returns exactly the voxelwise fit, in every
    draw."""
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.condition = "fit"
    task = DdpmTask(cfg)
    batch = _batch(vir_data["train"])
    n_img = batch["images"].shape[-1]
    state = task.create_state(jax.random.key(0), {"images": batch["images"][:1]})
    first = jax.tree.leaves(state.params["Conv_0"])
    assert {leaf.shape for leaf in first} >= {(3, 3, len(cfg.targets) + n_img + 3,
                                               cfg.ddpm.features[0])}
    state, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    out = jax.jit(task.sample_fn("ddim", 4, 2))(state, batch["images"][:2], jax.random.key(2))
    assert out["mean"].shape == (2, *batch["images"].shape[1:3], len(cfg.targets))
    assert np.all(np.isfinite(np.asarray(out["mean"])))

    with cfg.unlocked():
        cfg.ddpm.residual = True
    task = DdpmTask(cfg)
    prot = get_protocol(cfg.data.protocol)
    out = jax.jit(task.sample_fn("ddim", 4, 2))(_zero_state(task, batch["images"]),
                                                 batch["images"][:2], jax.random.key(3))
    names = tuple(cfg.targets)
    fitted = jax.jit(lambda x: unscale_maps(  # jitted like the sampler: same rounding
        fit_base(condition_images(x, "fit", prot), names), names))
    ref = np.asarray(fitted(batch["images"][:2]))
    # Relative difference; where the fit is exactly 0 (an all-zero background voxel) the absolute.
    diff = np.abs(np.asarray(out["mean"]) - ref)
    rel = np.where(ref == 0, diff, diff / np.where(ref == 0, 1.0, np.abs(ref)))
    assert np.quantile(rel, 0.99) < 1e-5 and rel.max() < 2e-2, (np.quantile(rel, 0.99), rel.max())
    np.testing.assert_allclose(out["std"], 0.0, atol=1e-6 * float(jnp.abs(out["mean"]).max()))
    _task_refuses(cfg, "residual=True.*diffuses around the voxelwise fit", condition="images")
    _task_refuses(cfg, "condition='shape' was removed", condition="shape")
    # A protocol the IR model cannot fit is refused when the task is built.
    with cfg.unlocked():
        cfg.ddpm.condition = "fit"
        cfg.ddpm.residual = False
        cfg.data.protocol = "four_contrast_brain"
    with pytest.raises(ValueError, match="condition='fit' with config.data.protocol="
                                         "'four_contrast_brain'"):
        DdpmTask(cfg)


def test_voxel_network_task_trains_and_samples_each_voxel_on_its_own(vir_data):
    """ddpm.network='voxel': one train step and a DDIM posterior sample; with the same key, the
    posterior at a voxel does not move when another voxel's images change; unknown networks are
    refused by name."""
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.network = "voxel"
        cfg.ddpm.voxel_width = 16
        cfg.ddpm.voxel_depth = 2
    task = DdpmTask(cfg)
    batch = _batch(vir_data["train"])
    state = task.create_state(jax.random.key(0), {"images": batch["images"][:1]})
    assert "Conv_0" not in state.params and task.size_multiple == 1
    step = jax.jit(task.train_step)
    for i in range(2):
        state, metrics = step(state, batch, jax.random.key(i))
        assert np.isfinite(float(metrics["loss"]))
    sample = jax.jit(task.sample_fn("ddim", 4, 3))
    imgs = batch["images"][:2]
    a = sample(state, imgs, jax.random.key(2))
    assert a["mean"].shape == (2, *imgs.shape[1:3], len(cfg.targets))
    assert a["samples"].shape == (3, *a["mean"].shape)
    assert np.all(np.isfinite(np.asarray(a["mean"]))) and float(a["std"].max()) > 0
    b = sample(state, imgs.at[0, 10, 12].mul(1.5), jax.random.key(2))
    moved = np.any(np.asarray(a["mean"] != b["mean"]), axis=-1)
    assert moved[0, 10, 12] and moved.sum() == 1
    # voxel_batch: the step trains on that many voxels drawn from the batch (here 64 of 4 slices),
    # changes the parameters, and refuses more voxels than the batch has.
    with cfg.unlocked():
        cfg.ddpm.voxel_batch = 64
    vtask = DdpmTask(cfg)
    vstate, metrics = jax.jit(vtask.train_step)(state, batch, jax.random.key(5))
    assert np.isfinite(float(metrics["loss"]))
    assert any(float(jnp.abs(a - b).max()) > 0
               for a, b in zip(jax.tree.leaves(vstate.params), jax.tree.leaves(state.params)))
    with cfg.unlocked():
        cfg.ddpm.voxel_batch = batch["mask"][:1].size + 1  # one slice has mask.size voxels
    with pytest.raises(ValueError, match="voxel_batch"):
        DdpmTask(cfg).train_step(state, {k: v[:1] for k, v in batch.items()},
                                 jax.random.key(5))
    _task_refuses(cfg, "voxel_batch", network="unet")
    _task_refuses(cfg, "config.ddpm.network", network="mlp")
    # configs/ddpm.py's default and its :voxel preset (2000 steps) build a per-voxel
    # residual-around-the-fit task; :unet and :paper the U-Net on images.
    for preset, steps in [("", 1550), ("voxel", 2000)]:
        vcfg = ddpm_config.get_config(preset)
        vt = DdpmTask(vcfg)
        assert isinstance(vt.net, VoxelDenoiser) and vt.cfg.voxel_batch == 8192
        assert vt.cfg.condition == "fit" and vt.cfg.residual and vt.cfg.voxel_prior == "flat_T1"
        assert vt.cfg.voxel_background == 0.0 and vt.cfg.voxel_resimulate == 0.5
        np.testing.assert_array_equal(vt.residual_scale, [6.0, 16.0, 6.0])
        assert vt.cfg.num_samples == 48 and vt.cfg.exact_voxels == 1000
        assert vt.residual_crlb == ("T1", "k")  # over the SD of their fit
        assert vt.noise  # given the images' noise SD
        assert vcfg.train.num_steps == steps and vcfg.data.k_spread == 0.15
        assert vt.validity and vt.cfg.saturation_augment == 0.3 and vt.cfg.missing_augment == 0.2
    # :invivo_ir: the same model for the in-vivo IR protocol, with a wider apparent k.
    icfg = ddpm_config.get_config("invivo_ir")
    it = DdpmTask(icfg)
    assert it.protocol.name == "qmrlab_ir" and len(it.protocol) == 9 and it.validity
    assert icfg.data.k_spread == 0.3 and tuple(icfg.ddpm.voxel_k_range) == (0.5, 1.5)
    assert icfg.train.num_steps == 1300
    assert icfg.ddpm.voxel_resimulate == 1.0 and icfg.ddpm.num_samples == 20  # the stated prior
    np.testing.assert_array_equal(it.residual_scale, [6.0, 16.0, 6.0])  # as the main job
    assert it.noise and it.residual_crlb == ("T1", "k")
    for preset in ("unet", "paper"):
        ut = DdpmTask(ddpm_config.get_config(preset))
        assert not isinstance(ut.net, VoxelDenoiser) and ut.cfg.voxel_batch == 0
        assert ut.cfg.condition == "images" and not ut.cfg.residual
    with pytest.raises(ValueError, match="unknown preset 'voxels'"):
        ddpm_config.get_config("voxels")
    # :diffusor follows the seed paper; the ResNet and RIM baselines share its data and budget.
    from configs import resnet as resnet_config
    from configs import rim as rim_config
    dcfg = ddpm_config.get_config("diffusor")
    dt = DdpmTask(dcfg)
    assert dt.protocol is None and dcfg.data.protocol == "ir_fse_7ti"
    assert dt.names == ("T1", "PD", "B") and dt.cfg.map_scaling == "tanh"
    assert (dt.cfg.sampler, dt.cfg.num_steps, dt.cfg.num_samples, dt.cfg.prediction) == (
        "ddpm", 1000, 10, "eps") and dcfg.train.batch_size == 8
    for base in (resnet_config.get_config("diffusor"), rim_config.get_config("diffusor")):
        assert base.data.to_dict() == dcfg.data.to_dict() and base.targets == dcfg.targets
        assert (base.train.batch_size, base.train.num_steps) == (8, dcfg.train.num_steps)
    assert rim_config.get_config("diffusor").model.num_iterations == 9


def _voxel_steps_change_parameters(vir_data, **ddpm_fields):
    """A tiny per-voxel DDPM (64 voxels per step) with ``ddpm_fields`` set: two jitted train
    steps give a finite loss and move the parameters. Returns the config."""
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.network = "voxel"
        cfg.ddpm.voxel_width = 16
        cfg.ddpm.voxel_depth = 2
        cfg.ddpm.voxel_batch = 64
        for name, value in ddpm_fields.items():
            cfg.ddpm[name] = value
    task = DdpmTask(cfg)
    batch = _batch(vir_data["train"])
    state = task.create_state(jax.random.key(0), {"images": batch["images"][:1]})
    step = jax.jit(task.train_step)
    new, metrics = step(state, batch, jax.random.key(5))  # (warm-up: learning rate 0 at step 0)
    new, metrics = step(new, batch, jax.random.key(6))
    assert np.isfinite(float(metrics["loss"]))
    assert any(float(jnp.abs(a - b).max()) > 0
               for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))
    return cfg


def test_flat_t1_voxel_draw_trains_and_validation_leaves_out_an_undrawn_background(vir_data):
    """ddpm.voxel_prior='flat_T1': the train step draws with it and changes the parameters; the
    setting is refused without voxel_batch, without a T1 target, or by an unknown name."""
    cfg = _voxel_steps_change_parameters(vir_data, voxel_prior="flat_T1")
    # Trained on brain voxels only (voxel_background=0), the validation loss leaves the background
    # out too: changing the background's images (so its fit, and the residual around it) changes
    # it only when the background is drawn (-1: at its share of the batch).
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
        task = DdpmTask(vcfg)
        state = task.create_state(jax.random.key(0), {"images": jnp.asarray(val["images"][:1])})
        ev = jax.jit(task.eval_step)
        a, b = (float(ev(state, _batch(v, 2), jax.random.key(123))["loss"]) for v in (val, moved))
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


def test_resimulation_trains_and_bad_settings_are_refused(vir_data):
    cfg = _voxel_steps_change_parameters(vir_data, condition="fit", voxel_resimulate=0.5)
    _task_refuses(cfg, "voxel_snr_range", voxel_snr_range=(100.0, 50.0))
    _task_refuses(cfg, "voxel_resimulate=1.5", voxel_snr_range=(20.0, 1000.0),
                  voxel_resimulate=1.5)
    _task_refuses(cfg, "voxel_batch > 0 \\(got 0\\)", voxel_resimulate=0.5, voxel_batch=0)
    _task_refuses(cfg, "voxel_resimulate_pd='maybe'", voxel_batch=64,
                  voxel_resimulate_pd="maybe")
    _task_refuses(cfg, "needs config.ddpm.voxel_resimulate > 0", voxel_resimulate_pd="drop",
                  voxel_resimulate=0.0)


def test_noise_condition_trains_and_predict_needs_and_uses_sigma(vir_data):
    """ddpm.noise_condition: the per-voxel train step (voxels redrawn at their own SNR) and the
    validation step run with the background's sigma; predict refuses to guess sigma and its
    posterior moves with the sigma given; the test split is sampled with each slice's sigma."""
    cfg = _voxel_steps_change_parameters(vir_data, condition="fit", voxel_resimulate=0.5,
                                         noise_condition=True)
    task = DdpmTask(cfg)
    val = _batch(vir_data["validation"], 2)
    state = task.create_state(jax.random.key(0), {"images": val["images"][:1]})
    assert np.isfinite(float(jax.jit(task.eval_step)(state, val, jax.random.key(1))["loss"]))
    with pytest.raises(ValueError, match="pass sigma"):
        task.predict(state, val["images"], jax.random.key(2))
    # (the initial output layer is zero: perturb every parameter so the output sees the input)
    leaves, tree = jax.tree.flatten(state.params)
    noisy = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(jax.random.key(i), a.shape)
                                      for i, a in enumerate(leaves)])
    state = state.replace(params=noisy, ema_params=noisy)
    pred = jax.jit(lambda im, s: task.predict(state, im, jax.random.key(2), sigma=s)["mean"])
    lo, hi = (np.asarray(pred(val["images"], s)) for s in (0.002, 0.2))
    assert np.all(np.isfinite(lo)) and np.abs(lo - hi).max() > 0
    sub = {k: np.asarray(v) for k, v in val.items()}
    mean, std = task.sample_split(state, sub, num_samples=2)
    assert mean.shape == sub["targets"].shape and np.all(np.isfinite(std))
    # The per-voxel model samples the brain voxels only, packed into slices: a stand-in sampler
    # (each voxel's first images plus its noise SD) shows every voxel comes back to its place
    # with its own slice's noise SD, and 0 outside the brain.
    task.sample_fn = lambda *a, **k: (lambda st, x, key, sigma=None: {  # noqa: E731
        "mean": x[..., :3] + sigma[..., None], "std": jnp.ones(x.shape[:-1] + (3,))})
    brain = sub["mask"] > 0
    assert 0 < brain.mean() < 1
    mean, std = task.sample_split(state, sub)
    sig = np.asarray(slice_noise_sigma(jnp.asarray(sub["images"]), jnp.asarray(sub["mask"])))
    assert np.all(np.isfinite(sig))
    want = sub["images"][..., :3] + sig[:, None, None, None]
    np.testing.assert_allclose(mean[brain], want[brain], rtol=1e-6)
    assert np.all(mean[~brain] == 0) and np.all(std[brain] == 1) and np.all(std[~brain] == 0)


def test_resimulate_pd_drop_leaves_the_redrawn_voxels_pd_out_of_the_loss(vir_data):
    """ddpm.voxel_resimulate_pd='drop': with every drawn voxel re-simulated (fraction 1, brain
    voxels only) the train step's loss does not depend on the PD targets at all, while with
    'keep' it does."""
    cfg = tiny_ddpm(preset="")  # the main job's model: brain voxels only (voxel_background 0)
    with cfg.unlocked():
        cfg.ddpm.voxel_resimulate = 1.0
    batch = _batch(vir_data["train"], 2)
    pd = np.asarray(batch["targets"]).copy()
    pd[..., cfg.targets.index("PD")] *= 1.3
    other_pd = dict(batch, targets=jnp.asarray(pd))
    losses = {}
    for mode in ("keep", "drop"):
        with cfg.unlocked():
            cfg.ddpm.voxel_resimulate_pd = mode
        task = DdpmTask(cfg)
        state = task.create_state(jax.random.key(0), {"images": batch["images"][:1]})
        step = jax.jit(task.train_step)
        losses[mode] = [float(step(state, b, jax.random.key(5))[1]["loss"])
                        for b in (batch, other_pd)]
    assert losses["keep"][0] != pytest.approx(losses["keep"][1], rel=1e-3), losses
    assert losses["drop"][0] == pytest.approx(losses["drop"][1], rel=1e-6), losses
    assert np.isfinite(losses["drop"][0])


def test_residual_scale_scales_the_diffused_residual_and_divides_it_back(vir_data):
    """ddpm.residual_scale: the validation target is (maps - fit) x scale per map, so with a
    network that predicts 0 the x0 loss is quadratic in each map's factor; sampling divides a
    prediction by the factor (and clips at 2 x factor) before adding the fit back."""
    cfg = tiny_ddpm(preset="")  # per-voxel, condition 'fit', residual around it
    with cfg.unlocked():
        cfg.ddpm.noise_condition = False  # (sampled below without a noise SD)
        cfg.ddpm.residual_crlb = ()  # (which needs it)
    names = tuple(cfg.targets)
    prot = get_protocol(cfg.data.protocol)
    images = jnp.asarray(vir_data["validation"]["images"][:2])
    base = jax.jit(lambda im: fit_base(condition_images(im, "fit", prot, cfg.ddpm.validity),
                                       names))(images)
    val = _batch(vir_data["validation"], 2)

    def task_with(scale):
        with cfg.unlocked():
            cfg.ddpm.residual_scale = scale
        return DdpmTask(cfg)

    np.testing.assert_array_equal(task_with(()).residual_scale, [1.0, 1.0, 1.0])
    for scale, want in [((3.0,), [3.0] * 3), ((2.0, 1.0, 1.0), [2.0, 1.0, 1.0])]:
        np.testing.assert_array_equal(task_with(scale).residual_scale, want)

    def loss(scale):
        task = task_with(scale)
        return float(jax.jit(task.eval_step)(_zero_state(task, images), val,
                                             jax.random.key(123))["loss"])

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

    with cfg.unlocked():
        cfg.ddpm.prediction = "x0"
    for scale, value, expect in [((8.0, 1.0, 1.0), 0.4, (0.05, 0.4, 0.4)),
                                 ((8.0, 1.0, 1.0), 10.0, (1.25, 2.0, 2.0))]:
        task = task_with(scale)
        state = _zero_state(task, images)
        task.net = Constant(value)
        out = jax.jit(task.sample_fn("ddim", 4, 2))(state, images, jax.random.key(1))
        want = unscale_maps(base + jnp.asarray(expect), names)
        np.testing.assert_allclose(out["mean"], want, rtol=1e-4)
    _task_refuses(cfg, "residual_scale", residual_scale=(1.0, 2.0))
    _task_refuses(cfg, "residual_scale", residual_scale=(0.0,))
    with cfg.unlocked():
        cfg.ddpm.residual = False
    _task_refuses(cfg, "residual=True for factors other than 1", residual_scale=(2.0,))


def test_residual_crlb_divides_each_voxels_residual_by_the_sd_of_its_fit(vir_data):
    """ddpm.residual_crlb: the T1 and k residuals are multiplied per voxel by residual_scale over
    the Cramer-Rao SD of the fit (diffusion.conditioning.fit_sd, held within [1e-3, 1]), PD's by
    its fixed factor; sampling divides a prediction by the same factors (and clips at 2 x them).
    It needs the noise level and targets among the task's."""
    cfg = tiny_ddpm(preset="")
    with cfg.unlocked():
        cfg.ddpm.prediction = "x0"
        cfg.ddpm.residual_scale = (1.0, 16.0, 2.0)
        cfg.ddpm.residual_crlb = ("T1", "k")
    names = tuple(cfg.targets)
    prot = get_protocol(cfg.data.protocol)
    val = _batch(vir_data["validation"], 2)
    sigma = slice_noise_sigma(val["images"], val["mask"])
    c = jax.jit(lambda im, s: condition_images(im, "fit", prot, True, s))(val["images"], sigma)
    base, sd = fit_base(c, names), fit_sd(c, prot, True)
    sd = jnp.where(jnp.isfinite(sd), sd, 1.0)  # a singular bound (background) counts as 1
    factor = jnp.stack([1.0 / jnp.clip(sd[..., 1], 1e-3, 1.0), jnp.full(sd.shape[:-1], 16.0),
                        2.0 / jnp.clip(sd[..., 2], 1e-3, 1.0)], -1)  # fit_sd order: PD, T1, k
    brain = np.asarray(val["mask"]) > 0  # T1 fits to a few percent there: a large factor
    assert np.median(np.asarray(factor[..., 0])[brain]) > 10
    task = DdpmTask(cfg)
    state = _zero_state(task, val["images"])  # (its training: the main job's tiny run above)

    class Constant:  # a "network" whose x0 prediction is the same value everywhere
        def __init__(self, value):
            self.value = value

        def apply(self, variables, x_t, t, c):
            return jnp.full(x_t.shape, self.value, x_t.dtype)

    for value, residual in [(0.5, 0.5 / factor), (1e6, 2.0)]:
        task.net = Constant(value)
        out = jax.jit(task.sample_fn("ddim", 4, 2))(state, val["images"], jax.random.key(1),
                                                     sigma)
        np.testing.assert_allclose(out["mean"], unscale_maps(base + residual, names), rtol=1e-4)
    _task_refuses(cfg, "residual_crlb", residual_crlb=("T1", "B"))
    with cfg.unlocked():
        cfg.ddpm.residual_crlb = ("T1",)
    _task_refuses(cfg, "residual_crlb", noise_condition=False)


def test_workdir_config_written_before_the_split_loads_or_says_how_to_convert():
    """A config.json of an older workdir carries removed keys: at their 'off' values they are
    dropped; set, they stop with the commit to reproduce them at."""
    cfg = tiny_ddpm()
    with cfg.unlocked():
        cfg.ddpm.intensity_augment = ()
        cfg.ddpm.ddim_spacing = "uniform"
        cfg.ddpm.resimulate_blocks = (1, 2, 4, 8)
    assert DdpmTask(cfg).cfg.sample_steps == 4
    _task_refuses(cfg, "intensity_augment=\\(1.3, 1.3\\): this option was removed.*0f520f4",
                  intensity_augment=(1.3, 1.3))
    with cfg.unlocked():
        cfg.ddpm.intensity_augment = ()
    _task_refuses(cfg, "ddim_spacing='quadratic'", ddim_spacing="quadratic")
    with cfg.unlocked():
        cfg.ddpm.ddim_spacing = "uniform"
        cfg.ddpm.mystery = 1
    with pytest.raises(ValueError, match="unknown keys \\['mystery'\\]"):
        DdpmTask(cfg)


def test_validity_mask_trains_and_an_invalid_sample_never_reaches_the_posterior(vir_data):
    """ddpm.validity: a per-voxel step with clipped and dropped samples trains; at sampling a
    sample marked invalid (``valid=False``) leaves the posterior exactly where it is whatever
    its value, a valid one moves it; a model trained without the mask returns NaN for a NaN
    sample rather than a number; missing_augment without the mask is refused."""
    cfg = _voxel_steps_change_parameters(vir_data, validity=True, saturation_augment=0.5,
                                         missing_augment=0.5, missing_rate=0.2,
                                         condition="fit", residual=True)
    task = DdpmTask(cfg)
    imgs = jnp.asarray(vir_data["train"]["images"][:1])
    state = task.create_state(jax.random.key(0), {"images": imgs})
    valid = jnp.ones(imgs.shape, bool).at[0, 10, 12, 3].set(False)
    predict = jax.jit(task.predict)
    a = predict(state, imgs, jax.random.key(2), valid)
    b = predict(state, imgs.at[0, 10, 12, 3].mul(3.0), jax.random.key(2), valid)
    c = predict(state, imgs.at[0, 10, 12, 4].mul(3.0), jax.random.key(2), valid)
    assert np.all(np.isfinite(np.asarray(a["mean"])))
    np.testing.assert_array_equal(np.asarray(a["mean"]), np.asarray(b["mean"]))
    assert np.any(np.asarray(a["mean"][0, 10, 12] != c["mean"][0, 10, 12]))
    with cfg.unlocked():
        cfg.ddpm.validity = False
        cfg.ddpm.missing_augment = 0.0
    plain = DdpmTask(cfg)
    pstate = plain.create_state(jax.random.key(0), {"images": imgs})
    out = jax.jit(plain.predict)(pstate, imgs, jax.random.key(2), valid)
    assert np.isnan(np.asarray(out["mean"][0, 10, 12])).all()
    assert np.isfinite(np.asarray(out["mean"][0, 10, 13])).all()
    _task_refuses(cfg, "missing_augment", missing_augment=0.3)


def _with_b(arrays):
    """The split with its k target replaced by B = 1 + k (0 outside the brain)."""
    t = np.array(arrays["targets"])
    t[..., 2] = np.where(arrays["mask"] > 0, 1 + t[..., 2], 0.0)
    return {**arrays, "targets": t}


def test_diffusor_preset_trains_on_b_and_samples_through_the_tanh_scaling(vir_data):
    """configs/ddpm.py:diffusor (shrunk): targets T1 / PD / B, maps diffused on 2 tanh(x/x0) - 1,
    ancestral sampling. A network that predicts x0 = 0 everywhere gives x0 * artanh(1/2) for
    every map: the tanh scaling's inverse, not the range scaling's (T1 245 ms there)."""
    from qmri_jax.physics.units import TANH_SCALE
    cfg = tiny_ddpm(3, preset="diffusor")
    with cfg.unlocked():
        cfg.data.protocol = "nist_vir"
        cfg.ddpm.attention_levels = ()
    assert cfg.ddpm.sampler == "ddpm" and cfg.ddpm.map_scaling == "tanh"
    task = DdpmTask(cfg)
    data = _with_b(vir_data["train"])
    batch = _batch(data)
    state = compiled_init(task.create_state, jax.random.key(0), batch)  # (eager: 38 s)
    state, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))  # (eager: 67 s)
    assert bool(metrics["finite"]) and float(metrics["loss"]) > 0
    with cfg.unlocked():
        cfg.ddpm.prediction = "x0"
    task = DdpmTask(cfg)
    zero = jax.tree.map(jnp.zeros_like, state.params)
    out = jax.jit(task.predict)(state.replace(params=zero, ema_params=zero),
                                batch["images"][:1], jax.random.key(2))
    want = [TANH_SCALE[n] * np.arctanh(0.5) for n in ("T1", "PD", "B")]
    np.testing.assert_allclose(out["mean"][0, 0, 0], want, rtol=1e-4)
    assert float(out["std"].max()) < 1e-3 * 2000
    _task_refuses(cfg, "map_scaling", residual=True, condition="fit")
