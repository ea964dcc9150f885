"""The contrast-transfer GAN task: the physics layer, the scale-free maps, pre-training stages,
sharded == single device after 3 steps, exact resume, and the report's structure."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax import engine
from qmri_jax.tasks import GanTask, create_task
from qmri_jax.tasks.gan import MAP_BOUNDS, synthesize
from tests.tiny import check_sharded_and_resumed, gan_config_tiny, se5_data


@pytest.fixture(scope="module")
def data():
    return se5_data()


def _cfg(steps=3):
    return gan_config_tiny(steps)


def test_synthesis_is_the_spin_echo_equation():
    maps = jnp.asarray([[[[2.0, 1000.0, 100.0]]]])
    got = synthesize(maps, jnp.asarray([100.0]), jnp.asarray([1000.0]))
    assert float(got[0, 0, 0]) == pytest.approx(2.0 * (1 - np.exp(-1)) * np.exp(-1), rel=1e-6)


def test_maps_are_bounded_and_pd_scales_with_the_image(data):
    task = create_task(_cfg())
    assert isinstance(task, GanTask)
    x = jnp.asarray(data["test"]["images"][:2, ..., 2])
    state = engine.init_state(task, {k: data["train"][k][:1] for k in task.batch_keys}, 0)
    te, tr = jnp.full((2,), 8.0), jnp.full((2,), 400.0)
    m1 = task.maps_from(state, x, te, tr)
    m2 = task.maps_from(state, 3.0 * x, te, tr)
    np.testing.assert_allclose(np.asarray(m2[..., 0]), 3.0 * np.asarray(m1[..., 0]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(m2[..., 1:]), np.asarray(m1[..., 1:]), rtol=1e-4)
    # data consistency: the input is re-synthesised exactly; without it PD is the generator's
    dc = task.maps_from(state, x, te, tr, data_consistency=True)
    np.testing.assert_allclose(np.asarray(synthesize(dc, te, tr)), np.asarray(x), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(dc[..., 1:]), np.asarray(m1[..., 1:]))
    assert not np.allclose(np.asarray(dc[..., 0]), np.asarray(m1[..., 0]))
    for c, name in ((1, "T1"), (2, "T2")):
        lo, hi = MAP_BOUNDS[name]
        assert float(m1[..., c].min()) >= lo and float(m1[..., c].max()) <= hi
    assert float(m1[..., 0].min()) >= 0
    # the patch mask has the discriminator's output grid, also for odd sizes
    probs = task.class_probs(state, jnp.zeros((1, 30, 26)) + 1.0)
    assert task.patch_mask(jnp.ones((1, 30, 26))).shape == probs.shape[:-1]
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-5)


def test_pretraining_stages_freeze_the_other_network(data):
    """Step 0 trains the generator alone, step 1 the discriminator alone, then both."""
    cfg = _cfg()
    task = create_task(cfg)
    keys = task.batch_keys
    state = engine.init_state(task, {k: data["train"][k][:1] for k in keys}, 0)
    batch = {k: jnp.asarray(data["train"][k][:4]) for k in keys}
    step = jax.jit(task.train_step)
    changed = []
    for i in range(3):
        new, metrics = step(state, batch, jax.random.key(i))
        assert bool(metrics["finite"])
        changed.append(tuple(
            any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new[n].params),
                                                         jax.tree.leaves(state[n].params)))
            for n in ("gen", "disc")))
        state = new
    assert changed == [(True, False), (False, True), (True, True)]
    assert int(state["step"]) == 3


def test_generator_ema_is_averaged_and_is_what_maps_from_uses(data):
    cfg = _cfg()
    with cfg.unlocked():
        cfg.train.ema_decay = 0.5
    task, plain = create_task(cfg), create_task(_cfg())  # plain: no EMA, the live weights
    keys = task.batch_keys
    state = engine.init_state(task, {k: data["train"][k][:1] for k in keys}, 0)
    batch = {k: jnp.asarray(data["train"][k][:4]) for k in keys}
    new, _ = jax.jit(task.train_step)(state, batch, jax.random.key(0))  # step 0: the generator
    g0, g1 = state["gen"], new["gen"]
    for e, p0, p1 in zip(*(jax.tree.leaves(t) for t in (g1.ema_params, g0.params, g1.params))):
        np.testing.assert_allclose(np.asarray(e), 0.5 * np.asarray(p0) + 0.5 * np.asarray(p1),
                                   rtol=1e-5, atol=1e-7)
    x = jnp.asarray(data["test"]["images"][:2, ..., 2])
    te, tr = jnp.full((2,), 8.0), jnp.full((2,), 400.0)
    got = np.asarray(task.maps_from(new, x, te, tr))
    want = plain.maps_from({**new, "gen": g1.replace(params=g1.ema_params)}, x, te, tr)
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5)
    assert not np.allclose(got, np.asarray(plain.maps_from(new, x, te, tr)))


def _params(state):
    return jax.device_get((state["gen"].params, state["gen"].batch_stats, state["disc"].params))


def test_sharded_training_equals_one_device_and_resume_is_exact(data, tmp_path):
    _, wd = check_sharded_and_resumed(_cfg(3), data, _params, str(tmp_path))
    rows = [json.loads(r) for r in open(os.path.join(wd, "metrics.jsonl"))]
    assert {"loss_recon", "loss_adv", "disc_acc", "val_loss"} <= set().union(*rows)


def test_report_has_every_section(data, tmp_path):
    cfg = _cfg(1)
    task = create_task(cfg)
    state = engine.init_state(task, {k: data["train"][k][:1] for k in task.batch_keys}, 0)
    m = task.evaluate(state, data, str(tmp_path))
    on_disk = json.load(open(tmp_path / "metrics.json"))
    assert on_disk["transfer"]["psnr"] == m["transfer"]["psnr"]
    for key in ("mse", "nrmse", "psnr", "ssim"):
        assert set(m["transfer"][key]) == {"baseline", "model"}
        assert set(m["transfer"][key]["model"]) == {"mean", "sd"}
    assert np.asarray(m["transfer"]["nrmse_matrix"]["model"]).shape == (5, 5)
    for name in ("T1", "T2", "PD"):
        assert {"median_abs_pct", "by_tissue", "by_input"} <= set(m["maps"][name])
        assert m["maps_fit"][name]["median_abs_pct"] < 15  # the fit of all five contrasts
    assert set(m["unseen_settings"]) == {"interpolated", "extrapolated"}
    for name in ("nrmse_matrix.png", "class_map.png", "example.png"):
        assert (tmp_path / name).stat().st_size > 0
