"""The training engine: sharded == single device, metrics/config/checkpoints, exact resume,
truncated checkpoints, NaN guard, time limit, schedules."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax import engine, train
from qmri_jax.engine import checkpoint as ckpt_lib
from qmri_jax.engine import preemption, sharding
from qmri_jax.engine.loader import Loader
from qmri_jax.tasks import RegressionTask
from tests.tiny import four_contrast_data, unet_config_tiny as tiny_config


@pytest.fixture(scope="module")
def tiny_data():
    return four_contrast_data()


def _one_step(cfg, data, mesh):
    task = RegressionTask(cfg)
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    ld = Loader(data["train"], 8, seed=0, mesh=mesh, keys=list(task.batch_keys))
    batch = ld.batch_at(0)
    state = engine.init_state(task, {"images": data["train"]["images"][:1]}, 0, mesh)
    step = jax.jit(task.train_step, in_shardings=(repl, bsh, repl), out_shardings=(repl, repl))
    assert len(batch["images"].sharding.device_set) == mesh.devices.size
    state, metrics = step(state, batch, jax.random.key(1))
    return jax.device_get(state.params), float(metrics["loss"]), jax.device_get(state.batch_stats)


def test_sharded_step_equals_single_device(tiny_data):
    assert len(jax.devices()) == 4, "conftest sets 4 fake CPU devices"
    cfg = tiny_config(batch_size=8)
    p4, l4, s4 = _one_step(cfg, tiny_data, sharding.create_mesh())
    p1, l1, s1 = _one_step(cfg, tiny_data, sharding.create_mesh(1))
    assert l4 == pytest.approx(l1, rel=1e-5)
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s4), jax.tree.leaves(s1)):  # BatchNorm saw the global batch
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_init_matches_eager_init_and_works_inside_jit():
    """engine.compiled_init (one compile at the lowest CPU optimisation level) gives the eager
    init's parameters and batch statistics, passes static keywords through, and is the plain
    init while tracing."""
    import flax.linen as nn

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
            return nn.Dense(2)(nn.Dropout(0.1, deterministic=not train)(x))

    model = Small()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 16, 16, 3)), jnp.float32)
    rngs = {"params": jax.random.key(3), "dropout": jax.random.key(3)}
    eager = model.init(rngs, x, train=False)
    compiled = engine.compiled_init(model.init, rngs, x, train=False)
    traced = jax.jit(lambda r: engine.compiled_init(model.init, r, x, train=False))(rngs)
    assert jax.tree.structure(compiled) == jax.tree.structure(eager)
    for got in (compiled, traced):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(eager)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(compiled["params"]))


def test_batch_size_must_divide_device_count(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="not divisible by the 4 devices"):
        train.train_and_evaluate(tiny_config(batch_size=6), str(tmp_path), data=tiny_data)


def test_run_writes_outputs_and_kill_resume_is_exact(tiny_data, tmp_path):
    cfg = tiny_config()
    full, _ = train.train_and_evaluate(cfg, str(tmp_path / "full"), data=tiny_data)
    wd = str(tmp_path / "killed")
    _, m = train.train_and_evaluate(cfg, wd, stop_at=2, data=tiny_data)
    assert m is None and sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]
    resumed, metrics = train.train_and_evaluate(cfg, wd, data=tiny_data)
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = [json.loads(x) for x in open(os.path.join(wd, "metrics.jsonl"))]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    assert any("val_loss" in x for x in lines)
    assert json.load(open(os.path.join(wd, "config.json")))["model"]["name"] == "unet"
    ev = json.load(open(os.path.join(wd, "eval", "metrics.json")))
    for name in ("T1", "T2", "PD"):
        assert set(ev[name]) >= {"median_abs_pct", "mean_abs_pct", "psnr", "ssim", "rmse",
                                 "by_tissue"}
        assert set(ev[name]["by_tissue"]) == {"WM", "GM", "CSF", "putamen", "thalamus"}
    assert os.listdir(os.path.join(wd, "checkpoints_best"))
    assert os.listdir(os.path.join(wd, "tb"))
    # A further call with more steps continues from step 4 rather than starting over.
    cfg6 = tiny_config(num_steps=6)
    more, _ = train.train_and_evaluate(cfg6, wd, data=tiny_data)
    assert int(more.step) == 6


def test_truncated_checkpoint_is_reported_not_reinitialised(tiny_data, tmp_path):
    cfg = tiny_config(num_steps=2)
    wd = str(tmp_path / "w")
    train.train_and_evaluate(cfg, wd, data=tiny_data)
    state_dir = os.path.join(wd, "checkpoints", "2", "state")
    for root, _, files in os.walk(state_dir):
        for f in files:
            open(os.path.join(root, f), "w").close()  # truncate every file
    with pytest.raises(ckpt_lib.CheckpointError, match="cannot be restored"):
        train.train_and_evaluate(tiny_config(num_steps=4), wd, data=tiny_data)
    shutil.rmtree(os.path.join(wd, "checkpoints", "2"))
    os.makedirs(os.path.join(wd, "checkpoints", "3"))  # a half-copied step folder
    with pytest.raises(ckpt_lib.CheckpointError):
        train.train_and_evaluate(tiny_config(num_steps=4), wd, data=tiny_data)


def test_time_limit_stops_saves_evaluates_and_resumes(tiny_data, tmp_path, capsys):
    # A budget of ~0 s: the first step runs, then the run stops, checkpoints that step and
    # still writes the test-split evaluation; the same workdir then continues to num_steps.
    cfg = tiny_config(time_limit_minutes=1e-9)
    wd = str(tmp_path / "w")
    state, metrics = train.train_and_evaluate(cfg, wd, data=tiny_data)
    assert int(state.step) == 1 and metrics is not None
    assert "time limit: stopping at step 1" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["1"]
    assert os.path.isfile(os.path.join(wd, "eval", "metrics.json"))
    resumed, _ = train.train_and_evaluate(tiny_config(), wd, data=tiny_data)
    assert int(resumed.step) == 4



def test_stop_request_checkpoints_the_current_step_and_resume_is_exact(tiny_data, tmp_path,
                                                                       capsys):
    # A preemption signal sets the request: the loop finishes the step it is in (step 1, not a
    # checkpoint step), saves it, returns without evaluating; the rerun ends bit-identical.
    cfg = tiny_config()
    full, _ = train.train_and_evaluate(cfg, str(tmp_path / "full"), data=tiny_data)
    wd = str(tmp_path / "w")
    preemption.request_stop()
    try:
        state, metrics = train.train_and_evaluate(cfg, wd, data=tiny_data)
    finally:
        preemption.clear()
    assert int(state.step) == 1 and metrics is None
    assert "stop requested" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["1"]
    assert not os.path.exists(os.path.join(wd, "eval"))
    resumed, metrics = train.train_and_evaluate(cfg, wd, data=tiny_data)
    assert int(resumed.step) == 4 and metrics is not None
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_signal_outside_the_loop_exits_with_the_preempted_code():
    import signal
    with pytest.raises(preemption.Preempted) as e:
        preemption.request_stop(signal.SIGTERM, None)
    preemption.clear()
    assert e.value.code == preemption.PREEMPTED_EXIT_CODE == 75
    with preemption.in_training_loop():
        preemption.request_stop(signal.SIGTERM, None)  # inside: only the flag
    assert preemption.stop_requested()
    preemption.clear()

def test_nan_guard_stops_with_clear_message(tiny_data, tmp_path):
    bad = dict(tiny_data)
    tr = dict(bad["train"])
    tr["images"] = tr["images"].copy()
    tr["images"][:] = np.nan
    bad["train"] = tr
    with pytest.raises(engine.NonFiniteError, match="last good checkpoint"):
        train.train_and_evaluate(tiny_config(), str(tmp_path), data=bad)


@pytest.mark.parametrize("schedule,expect", [
    ("constant", [0.0, 1.0, 1.0, 1.0]),
    ("exponential", [0.0, 1.0, 1.0, 0.5]),
    ("cosine", None),
])
def test_optimizer_schedules(schedule, expect):
    cfg = tiny_config(schedule=schedule, learning_rate=1.0, warmup_steps=1, decay_after=1,
                      decay_steps=1, decay_rate=0.5, grad_clip=0.0, optimizer="sgd")
    tx = engine.create_optimizer(cfg.train, 5)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    lrs = []
    for _ in range(4):
        upd, state = tx.update({"w": jnp.ones(())}, state, params)
        lrs.append(float(-upd["w"]))
    # SGD with momentum 0.9: update_t = lr_t * sum_k 0.9^k g; with g = 1 the trace grows.
    trace = np.cumsum([0.9**k for k in range(4)])
    if expect is None:  # cosine over the 4 steps after warm-up: 1, cos-decayed after
        lr = np.asarray(lrs) / trace
        assert lr[0] == 0.0 and lr[1] == pytest.approx(1.0)
        np.testing.assert_allclose(lr[2:], 0.5 * (1 + np.cos(np.pi * np.array([1, 2]) / 4)),
                                   rtol=1e-5)
    else:
        np.testing.assert_allclose(lrs, np.asarray(expect) * trace, rtol=1e-5)
