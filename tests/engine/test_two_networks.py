"""The engine trains a task it has never seen: two networks with two optimisers in one state
pytree (as a GAN's generator and discriminator), with its own batch keys and metrics; a killed
and resumed run ends where an uninterrupted one does."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qmri_jax import engine
from qmri_jax.engine.state import apply_gradients
from qmri_jax.tasks import Task


class TwoNetworks:
    """``gen`` regresses ``y`` from ``x``; ``disc`` learns to tell ``y`` from ``gen(x)``."""

    batch_keys = ("x", "y")
    targets = ("y",)
    size_multiple = 1

    def __init__(self):
        self.gen, self.disc = nn.Dense(1), nn.Dense(1)
        self.tx_gen, self.tx_disc = optax.adam(1e-2), optax.sgd(1e-2, momentum=0.9)

    def create_state(self, key, batch):
        kg, kd = jax.random.split(key)
        return {"gen": engine.create_state(self.gen.init(kg, batch["x"])["params"], self.tx_gen),
                "disc": engine.create_state(self.disc.init(kd, batch["y"])["params"],
                                            self.tx_disc)}

    def _losses(self, gp, dp, batch):
        fake = self.gen.apply({"params": gp}, batch["x"])
        real_logit = self.disc.apply({"params": dp}, batch["y"])
        fake_logit = self.disc.apply({"params": dp}, fake)
        d_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(real_logit, 1.0)
                          + optax.sigmoid_binary_cross_entropy(fake_logit, 0.0))
        g_loss = jnp.mean((fake - batch["y"]) ** 2) + 0.1 * jnp.mean(
            optax.sigmoid_binary_cross_entropy(fake_logit, 1.0))
        return g_loss, d_loss

    def train_step(self, state, batch, key):
        g_loss, gg = jax.value_and_grad(
            lambda p: self._losses(p, state["disc"].params, batch)[0])(state["gen"].params)
        gen, gm = apply_gradients(state["gen"], gg, g_loss, self.tx_gen)
        d_loss, dg = jax.value_and_grad(
            lambda p: self._losses(gen.params, p, batch)[1])(state["disc"].params)
        disc, dm = apply_gradients(state["disc"], dg, d_loss, self.tx_disc)
        return {"gen": gen, "disc": disc}, {"loss": g_loss, "disc_loss": d_loss,
                                            "finite": gm["finite"] & dm["finite"]}

    def eval_step(self, state, batch, key):
        g_loss, d_loss = self._losses(state["gen"].params, state["disc"].params, batch)
        return {"loss": g_loss, "disc_loss": d_loss}

    def predict(self, state, images, key):
        return {"mean": self.gen.apply({"params": state["gen"].params}, images)}

    def evaluate(self, state, data, out_dir):
        return {}


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    return {"train": {"x": x[:24], "y": y[:24]}, "validation": {"x": x[24:], "y": y[24:]}}


def test_a_two_optimiser_task_trains_logs_and_resumes_exactly(tmp_path):
    task = TwoNetworks()
    assert isinstance(task, Task)
    cfg = engine.LoopConfig(batch_size=8, num_steps=6, log_every=1, eval_every=3,
                            checkpoint_every=3, progress_bar=False)
    full, done = engine.train(task, str(tmp_path / "full"), cfg, _data(), seed=1)
    assert done and int(full["gen"].step) == int(full["disc"].step) == 6
    wd = str(tmp_path / "killed")
    _, done = engine.train(task, wd, cfg, _data(), seed=1, stop_at=3)
    assert not done
    resumed, done = engine.train(task, wd, cfg, _data(), seed=1)
    assert done
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(r) for r in open(os.path.join(wd, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "disc_loss" in r and "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert any("val_disc_loss" in r for r in rows)
    # the generator learned: its validation error fell from the initial state's
    val = {k: jnp.asarray(v) for k, v in _data()["validation"].items()}
    start = engine.init_state(task, {k: v[:1] for k, v in val.items()}, seed=1)
    assert float(task.eval_step(full, val, None)["loss"]) < float(
        task.eval_step(start, val, None)["loss"])
