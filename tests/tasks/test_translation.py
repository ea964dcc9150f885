"""The GE -> TSE translation task: sharded and resumable training (network and learned kernel),
the learned kernel's phase freezes the network, the report's sections for both modes."""

import json
import os

import jax
import numpy as np
import pytest

from qmri_jax import engine
from qmri_jax.engine import sharding
from qmri_jax.tasks import create_task
from tests.tiny import translation_config_tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds_translation"))


def _params(state):
    return jax.device_get((state["net"].params, state["net"].batch_stats,
                           state["kernel"].params))


def test_sharded_training_equals_one_device_and_resume_is_exact(data_dir, tmp_path):
    assert len(jax.devices()) == 4, "conftest sets 4 fake CPU devices"
    cfg = translation_config_tiny("learned+mind", num_steps=3, data_dir=data_dir)
    with cfg.unlocked():
        cfg.translation.kernel_learn_steps = (2, 3)  # the network 2 steps, then the kernel
    task = create_task(cfg)
    data = task.load_data(cfg)
    loop = engine.LoopConfig.from_config(cfg.train)
    s4, _ = engine.train(create_task(cfg), str(tmp_path / "d4"), loop, data, seed=0)
    s1, _ = engine.train(create_task(cfg), str(tmp_path / "d1"), loop, data, seed=0,
                         mesh=sharding.create_mesh(1))
    for a, b in zip(jax.tree.leaves(_params(s4)), jax.tree.leaves(_params(s1))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    wd = str(tmp_path / "killed")
    _, done = engine.train(create_task(cfg), wd, loop, data, seed=0, stop_at=2)
    assert not done
    resumed, done = engine.train(create_task(cfg), wd, loop, data, seed=0)
    assert done
    for a, b in zip(jax.tree.leaves(_params(s4)), jax.tree.leaves(_params(resumed))):
        np.testing.assert_array_equal(a, b)
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
    for section in ("low_res", "high_res", "high_res_interpolation"):
        assert set(saved[section]) >= {"mae", "mi", "ssim", "per_subject"}
        assert np.isfinite([saved[section][k] for k in ("mae", "mi", "ssim")]).all()
    assert saved["mode"] == ("low_to_low" if preset else "high_to_low")
    assert ("high_res_cubic" in saved) == bool(preset)
    assert set(saved["high_res"]["by_tissue"]) == {"GM", "WM", "CSF"}
    # the interpolation baseline does not depend on the model: the same in both runs
    assert saved["high_res_interpolation"]["mae"] == pytest.approx(
        metrics["high_res_interpolation"]["mae"])
    assert os.path.isfile(tmp_path / "w" / "eval" / "translation.png")
