"""The regression and RIM tasks: the protocol they implement, the loss in units of the typical
value, prediction in physical units, and the RIM built from the data's protocol and targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rim as rim_config
from qmri_jax import engine
from qmri_jax.models import RIM
from qmri_jax.tasks import RegressionTask, RimTask, Task, create_task
from tests.tiny import unet_config_tiny


def test_regression_task_loss_is_in_units_of_the_typical_value():
    cfg = unet_config_tiny()
    task = create_task(cfg)
    assert isinstance(task, RegressionTask) and isinstance(task, Task)
    assert task.size_multiple == 2  # a 2-level U-Net halves the image once
    images = jnp.ones((4, 8, 8, 4))
    state = engine.init_state(task, {"images": images[:1]}, 0)
    pred = task.predict(state, images, None)["mean"]
    assert pred.shape == (4, 8, 8, 3) and bool(jnp.all(pred > 0))
    # targets off by exactly one typical value everywhere: MAE of 1 in scaled units
    batch = {"images": images, "targets": pred + jnp.asarray(cfg.target_scale),
             "mask": jnp.ones((4, 8, 8))}
    assert float(task.eval_step(state, batch, None)["loss"]) == pytest.approx(1.0, rel=1e-5)
    with cfg.unlocked():
        cfg.target_scale = (1.0, 1.0)
    with pytest.raises(ValueError, match="one typical value per target"):
        RegressionTask(cfg)


def test_crop_and_flip_cut_the_same_window_of_images_targets_and_mask():
    cfg = unet_config_tiny()
    with cfg.unlocked():
        cfg.train.crop = (4, 6)
        cfg.train.flip = True
    task = create_task(cfg)
    x = jnp.arange(3 * 8 * 10, dtype=jnp.float32).reshape(3, 8, 10)
    batch = {"images": jnp.stack([x, 2 * x], -1), "targets": jnp.stack([x, -x, x + 1], -1),
             "mask": x > -1, "other": jnp.ones(3)}
    seen_flip, seen_plain = False, False
    for seed in range(8):
        out = task.augment(batch, jax.random.key(seed))
        assert out["images"].shape == (3, 4, 6, 2) and out["mask"].shape == (3, 4, 6)
        assert out["other"] is batch["other"]
        np.testing.assert_array_equal(out["images"][..., 1], 2 * out["images"][..., 0])
        np.testing.assert_array_equal(out["targets"][..., 0], out["images"][..., 0])
        np.testing.assert_array_equal(out["targets"][..., 1], -out["images"][..., 0])
        for i in range(3):  # each example is a window of its own slice, maybe flipped along X
            win = np.asarray(out["images"][i, ..., 0])
            src = np.asarray(x[i])
            found = [(ox, oy, f) for f in (False, True) for ox in range(5) for oy in range(5)
                     if np.array_equal((src[::-1] if f else src)[ox:ox + 4, oy:oy + 6], win)]
            assert found, (seed, i)
            seen_flip |= any(f for *_, f in found)
            seen_plain |= any(not f for *_, f in found)
    assert seen_flip and seen_plain
    with cfg.unlocked():
        cfg.train.crop = (5, 6)
    with pytest.raises(ValueError, match=r"config.train.crop=\(5, 6\).*multiple of 2"):
        RegressionTask(cfg)
    with cfg.unlocked():
        cfg.train.crop = (16, 6)
    with pytest.raises(ValueError, match="larger than the images"):
        RegressionTask(cfg).augment(batch, jax.random.key(0))



def test_intensity_scale_multiplies_images_and_pd_by_one_gain_per_example():
    """train.intensity_scale: each example's images and its PD target times the same gain
    (log-uniform in the range), T1 and T2 untouched; the gains differ between examples and stay
    in range; a train step runs with it; bad ranges are refused by name."""
    cfg = unet_config_tiny()
    with cfg.unlocked():
        cfg.train.intensity_scale = (0.5, 2.0)
    task = create_task(cfg)
    rng = np.random.default_rng(0)
    batch = {"images": jnp.asarray(rng.uniform(0.1, 1, (6, 8, 8, 4)), jnp.float32),
             "targets": jnp.asarray(rng.uniform(0.1, 1, (6, 8, 8, 3)), jnp.float32),
             "mask": jnp.ones((6, 8, 8), bool)}
    out = task.scale_intensity(batch, jax.random.key(3))
    gain = np.asarray(out["images"] / batch["images"])
    g = gain[:, 0, 0, 0]
    np.testing.assert_allclose(gain, g[:, None, None, None] * np.ones_like(gain), rtol=1e-6)
    assert np.all((g >= 0.5) & (g <= 2.0)) and np.ptp(g) > 0.3
    pd = cfg.targets.index("PD")
    np.testing.assert_allclose(out["targets"][..., pd] / batch["targets"][..., pd],
                               gain[..., 0], rtol=1e-6)
    for t in ("T1", "T2"):
        i = cfg.targets.index(t)
        np.testing.assert_array_equal(out["targets"][..., i], batch["targets"][..., i])
    state = task.create_state(jax.random.key(0), batch)
    _, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    with cfg.unlocked():
        cfg.train.intensity_scale = (2.0, 0.5)
    with pytest.raises(ValueError, match="intensity_scale"):
        create_task(cfg)

def test_rim_task_takes_protocol_and_targets_from_the_data():
    cfg = rim_config.get_config()
    with cfg.unlocked():
        cfg.model.features, cfg.model.num_iterations = 4, 1
    task = create_task(cfg)
    assert isinstance(task, RimTask) and isinstance(task.model, RIM)
    assert task.model.protocol == cfg.data.protocol == "nist_vir"
    assert tuple(task.model.targets) == tuple(cfg.targets) and task.size_multiple == 1
    state = engine.init_state(task, {"images": jnp.ones((1, 8, 8, 10))}, 0)
    out = jax.jit(task.predict)(state, jnp.ones((2, 8, 8, 10)), None)["mean"]
    assert out.shape == (2, 8, 8, 3) and np.all(np.isfinite(np.asarray(out)))
    with cfg.unlocked():
        cfg.model.name = "unet"
    with pytest.raises(ValueError, match="config.task='rim' trains the RIM"):
        create_task(cfg)
    with cfg.unlocked():
        cfg.task = "no_such_task"
    with pytest.raises(ValueError, match="config.task='no_such_task': expected one of"):
        create_task(cfg)


def test_3d_crops_are_windows_and_any_size_is_mapped_through_padding():
    cfg = unet_config_tiny()
    with cfg.unlocked():
        cfg.data.dims = 3
        cfg.train.crop = (4, 6, 2)
    task = create_task(cfg)
    x = jnp.arange(2 * 6 * 8 * 5, dtype=jnp.float32).reshape(2, 6, 8, 5)
    batch = {"images": x[..., None], "targets": jnp.stack([x, -x, x], -1), "mask": x > -1}
    for seed in range(4):
        out = task.augment(batch, jax.random.key(seed))
        assert out["images"].shape == (2, 4, 6, 2, 1) and out["mask"].shape == (2, 4, 6, 2)
        np.testing.assert_array_equal(out["targets"][..., 1], -out["images"][..., 0])
        for i in range(2):
            win, src = np.asarray(out["images"][i, ..., 0]), np.asarray(x[i])
            assert any(np.array_equal(src[a:a + 4, b:b + 6, c:c + 2], win)
                       for a in range(3) for b in range(3) for c in range(4)), (seed, i)
    with cfg.unlocked():
        cfg.train.crop = (4, 6)
    with pytest.raises(ValueError, match=r"expected 3 sizes \(config.data.dims=3\)"):
        RegressionTask(cfg)
    # A 5-voxel axis (not a multiple of 2) is padded with background and cut back: the output
    # on the volume is the padded volume's output, cut.
    images = jax.random.uniform(jax.random.key(1), (1, 6, 8, 5, 4))
    state = engine.init_state(task, {"images": images}, 0)
    pred = task.predict(state, images, None)["mean"]
    padded = jnp.pad(images, [(0, 0), (0, 0), (0, 0), (0, 1), (0, 0)])
    full = task.model.apply({"params": state.params, "batch_stats": state.batch_stats}, padded,
                            train=False)
    assert pred.shape == (1, 6, 8, 5, 3)
    np.testing.assert_allclose(pred, full[:, :, :, :5], rtol=1e-6)


def test_3d_training_is_scored_on_the_2d_test_slices(tmp_path):
    """data.dims=3 trains on volumes and scores the test volumes on exactly the 2D test split's
    slices: the same images, maps, masks, subjects and slice indices."""
    from qmri_jax.tasks.data import load_data, cut_test_slices
    from qmri_jax.train import train_and_evaluate
    cfg = unet_config_tiny()
    with cfg.unlocked():
        cfg.data.update(resolution_mm=4, num_subjects=6, slices_per_subject=3,
                        data_dir=str(tmp_path / "data"))
    d2 = load_data(cfg)["test"]
    with cfg.unlocked():
        cfg.data.dims = 3
        cfg.train.crop = (16, 16, 8)
    data = load_data(cfg)
    vol = data["test"]
    assert vol["images"].ndim == 5 and vol["images"].shape[1:4] == (48, 56, 46)
    pred, sliced = cut_test_slices(cfg, vol, vol["targets"])
    assert set(sliced) == set(d2)
    for k in d2:
        np.testing.assert_array_equal(sliced[k], d2[k], err_msg=k)
    np.testing.assert_array_equal(pred, d2["targets"])
    _, metrics = train_and_evaluate(cfg, str(tmp_path / "run"), data=data)
    assert metrics["T1"]["num_voxels"] == int(d2["mask"].sum())
    assert np.isfinite(metrics["T1"]["median_abs_pct"])
