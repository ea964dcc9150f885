"""The GE -> TSE translation task: sharded and resumable training (network and learned kernel),
the learned kernel's phase freezes the network, the report's sections for both modes."""

import json
import os

import jax
import numpy as np
import pytest

from qmri_jax import engine
from qmri_jax.physics.thick_slices import downsample_slices
from qmri_jax.tasks import create_task
from tests.tiny import check_sharded_and_resumed, translation_config_tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_translation"))


def _params(state):
    return jax.device_get((state["net"].params, state["net"].batch_stats,
                           state["kernel"].params))


def test_sharded_training_equals_one_device_and_resume_is_exact(data_dir, tmp_path):
    cfg = translation_config_tiny("learned+mind", num_steps=3, data_dir=data_dir)
    with cfg.unlocked():
        cfg.translation.kernel_learn_steps = (2, 3)  # the network 2 steps, then the kernel
    data = create_task(cfg).load_data(cfg)
    s4, wd = check_sharded_and_resumed(cfg, data, _params, str(tmp_path))
    rows = [json.loads(r) for r in open(os.path.join(wd, "metrics.jsonl"))]
    phases = [r["kernel_phase"] for r in rows if "kernel_phase" in r]
    assert phases == [0.0, 0.0, 1.0]
    assert all(r["loss_mind"] > 0 for r in rows if "loss_mind" in r)
    # the kernel phase moved the kernel (still positive, summing to 1) and froze the network
    kern = np.asarray(create_task(cfg).kernel(s4))
    assert kern.sum() == pytest.approx(1.0, abs=1e-5) and np.all(kern > 0)
    assert np.abs(kern - np.array([1, 2, 2, 1]) / 6).max() > 1e-5
    two = engine.train(create_task(cfg), str(tmp_path / "two"), engine.LoopConfig.from_config(
        cfg.train), data, seed=0, stop_at=2)[0]
    for a, b in zip(jax.tree.leaves(jax.device_get(two["net"].params)),
                    jax.tree.leaves(jax.device_get(s4["net"].params))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("preset", ["", "low_to_low+unet"])
def test_report_has_both_resolutions_and_the_interpolation(preset, data_dir, tmp_path):
    from qmri_jax import train
    cfg = translation_config_tiny(preset, num_steps=2, data_dir=data_dir)
    _, metrics = train.train_and_evaluate(cfg, str(tmp_path / "w"))
    saved = json.load(open(tmp_path / "w" / "eval" / "metrics.json"))
    for section in ("low_res", "high_res", "high_res_consistent", "high_res_interpolation"):
        assert set(saved[section]) >= {"mae", "mi", "ssim", "per_subject"}
        assert np.isfinite([saved[section][k] for k in ("mae", "mi", "ssim")]).all()
    assert saved["mode"] == ("low_to_low" if preset else "high_to_low")
    assert ("high_res_cubic" in saved) == bool(preset)
    assert set(saved["high_res"]["by_tissue"]) == {"GM", "WM", "CSF"}
    # high_res_consistent: the network made consistent with the acquired thick slices (1 step)
    assert saved["consistency"] == 1
    assert saved["high_res"]["mae"] != saved["high_res_consistent"]["mae"]
    # the interpolation baseline does not depend on the model: the same in both runs
    assert saved["high_res_interpolation"]["mae"] == pytest.approx(
        metrics["high_res_interpolation"]["mae"])
    assert os.path.isfile(tmp_path / "w" / "eval" / "translation.png")


def test_predict_mode_translates_a_ge_nifti(data_dir, tmp_path):
    import nibabel as nib

    from qmri_jax import predict, train
    from qmri_jax.io import nifti
    cfg = translation_config_tiny("", num_steps=2, data_dir=data_dir)
    wd = str(tmp_path / "w")
    train.train_and_evaluate(cfg, wd)
    ge = create_task(cfg).load_data(cfg)["test"]["ge"][0]
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    nifti.write_nifti(str(tmp_path / "ge.nii.gz"), 1234.0 * ge, affine)  # any scanner scale
    with cfg.unlocked():
        cfg.predict.inputs = str(tmp_path / "ge.nii.gz")
    out = predict.predict_files(cfg, wd)
    thin = nib.load(os.path.join(out, "pred_TSE.nii.gz"))
    thick = nib.load(os.path.join(out, "pred_TSE_thick.nii.gz"))
    assert thin.shape == ge.shape and thick.shape == (*ge.shape[:2], ge.shape[2] // 4)
    assert np.isfinite(thin.get_fdata()).all()
    np.testing.assert_allclose(thick.affine[:3, 2], [0, 0, 16.0])  # 4 x 4 mm slices
    np.testing.assert_allclose(thick.affine[:3, 3], [0, 0, 6.0])  # centred on thin slices 0-3
    # with the acquired thick slices (any scanner scale), the output is made consistent with them
    tse = create_task(cfg).load_data(cfg)["test"]["tse_lr"][0]
    nifti.write_nifti(str(tmp_path / "tse.nii.gz"), 567.0 * tse, thick.affine)
    with cfg.unlocked():
        cfg.predict.thick_tse = str(tmp_path / "tse.nii.gz")
        cfg.predict.output = str(tmp_path / "dc")
    out = predict.predict_files(cfg, wd)
    task = create_task(cfg)
    kernel = np.asarray(task.kernel0)

    def thick_error(name):
        x = nib.load(os.path.join(out, name)).get_fdata().astype(np.float32)
        lr = np.asarray(downsample_slices(x[..., None], kernel, 4))[..., 0]
        return np.abs(lr - 567.0 * tse).mean() / np.abs(567.0 * tse).mean()

    assert thick_error("pred_TSE_consistent.nii.gz") < 0.5 * thick_error("pred_TSE.nii.gz")
    with cfg.unlocked():
        cfg.predict.thick_tse = str(tmp_path / "ge.nii.gz")
    with pytest.raises(ValueError, match="config.predict.thick_tse has shape"):
        predict.predict_files(cfg, wd)
    with cfg.unlocked():
        cfg.predict.thick_tse = ""
        cfg.predict.inputs = str(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match="expected one 3D GE NIfTI file"):
        predict.predict_files(cfg, wd)


def test_moving_kernel_shifts_the_kernel_at_random_and_fixed_does_not():
    rng = np.random.default_rng(0)
    batch = {"input": rng.random((2, 8, 8, 16, 1)).astype(np.float32),
             "target": rng.random((2, 8, 8, 3, 1)).astype(np.float32),
             "mask": np.ones((2, 8, 8, 3), np.float32),
             "mask_in": np.ones((2, 8, 8, 16), np.float32),
             "offset": np.array([1, 2], np.int32)}
    losses = {}
    for mode in ("fixed", "moving"):
        cfg = translation_config_tiny()
        with cfg.unlocked():
            cfg.translation.update(kernel_mode=mode, kernel_shift=2)
        task = create_task(cfg)
        state = task.create_state(jax.random.key(0), batch)
        step = jax.jit(task.train_step)
        losses[mode] = [float(step(state, batch, jax.random.key(k))[1]["loss"]) for k in range(4)]
    assert len(set(losses["fixed"])) == 1  # the key does not move a fixed kernel
    assert len(set(losses["moving"])) > 1  # a moving kernel sees other slices per key


@pytest.mark.parametrize("region", ["all", "brain"])
def test_loss_region_is_the_l1_of_the_thick_slices_over_the_patch_or_the_brain(region):
    rng = np.random.default_rng(1)
    mask = np.zeros((2, 8, 8, 4), np.float32)
    mask[:, 2:6, 1:7] = 1.0  # a "brain" in the middle; the background target differs
    batch = {"input": rng.random((2, 8, 8, 16, 1)).astype(np.float32),
             "target": rng.random((2, 8, 8, 4, 1)).astype(np.float32) + 0.5 * (1 - mask[..., None]),
             "mask": mask, "mask_in": np.ones((2, 8, 8, 16), np.float32),
             "offset": np.zeros((2,), np.int32)}
    cfg = translation_config_tiny()
    with cfg.unlocked():
        cfg.translation.update(loss_region=region, kernel_offset=0)
    task = create_task(cfg)
    state = task.create_state(jax.random.key(0), batch)
    thick = np.asarray(task.predict(state, batch["input"])["thick"])  # kernel taps from slice 0
    err = np.abs(thick - batch["target"])[..., 0]
    expected = err.mean() if region == "all" else err[mask > 0].mean()
    assert abs(err.mean() - err[mask > 0].mean()) > 1e-3  # the two regions differ here
    np.testing.assert_allclose(float(task.eval_step(state, batch, None)["loss"]), expected,
                               rtol=1e-5)


@pytest.mark.parametrize("field,value,message", [
    ("loss_region", "head", r"config.translation.loss_region='head'"),
    ("consistency", -1, r"config.translation.consistency=-1: expected >= 0")])
def test_bad_settings_name_the_field(field, value, message):
    cfg = translation_config_tiny()
    with cfg.unlocked():
        cfg.translation[field] = value
    with pytest.raises(ValueError, match=message):
        create_task(cfg)
