"""Supervised image-to-map regression: a network from :mod:`qmri_jax.models` (the U-Net family,
HighResNet, ResNet, the RIM) trained on a masked loss of its maps against the true maps.

The loss compares ``pred / target_scale`` with ``targets / target_scale`` (``config.target_scale``:
the typical value of each map), so maps in ms and in a.u. weigh alike.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from qmri_jax import losses as losses_lib
from qmri_jax.engine import create_optimizer, create_state, eval_params
from qmri_jax.engine.state import apply_gradients
from qmri_jax.models import create_model
from qmri_jax.tasks.base import predict_in_batches

__all__ = ["RegressionTask", "build_model", "apply_network"]


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def build_model(config, **overrides):
    """``config.model`` (``name`` plus the network's keyword arguments, lists as tuples) as a
    Flax module, with ``overrides`` of those arguments."""
    kw = {k: _tuples(v) for k, v in dict(config.model).items()}
    kw.update(overrides)
    name = kw.pop("name")
    return create_model(name, out_scale=tuple(config.target_scale), **kw)


def apply_network(model, params, batch_stats, images, train, key=None):
    """``(output, batch_stats)`` of ``model`` on ``images``: in training the batch statistics
    are updated (when the network has them) and ``key`` drives dropout."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train:
        out, updates = model.apply(variables, images, train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"] if batch_stats else [])
        return out, updates.get("batch_stats", batch_stats)
    return model.apply(variables, images, train=False), batch_stats


class RegressionTask:
    """One network, one optimiser (``config.train``), a masked loss (``config.train.loss``)."""

    batch_keys = ("images", "targets", "mask")

    def __init__(self, config, model=None):
        self.config = config
        self.targets = tuple(config.targets)
        self.model = model if model is not None else build_model(config)
        feats = getattr(self.model, "features", None)  # a U-Net halves its size per level
        self.size_multiple = 2 ** (len(feats) - 1) if isinstance(feats, (tuple, list)) else 1
        self.loss_fn = losses_lib.get_loss(config.train.loss, **dict(config.train.loss_kwargs))
        self.tx = create_optimizer(config.train, config.train.num_steps)
        self.ema_decay = float(config.train.ema_decay)
        self.crop = tuple(int(c) for c in config.train.get("crop", ()))
        self.flip = bool(config.train.get("flip", False))
        if self.crop and (len(self.crop) != 2 or min(self.crop) < 1
                          or any(c % self.size_multiple for c in self.crop)):
            raise ValueError(f"config.train.crop={self.crop}: expected (height, width), each a "
                             f"multiple of {self.size_multiple} (the network's levels)")
        self.scale = jnp.asarray(config.target_scale, jnp.float32)
        if self.scale.shape != (len(self.targets),):
            raise ValueError(f"config.target_scale={tuple(config.target_scale)}: expected one "
                             f"typical value per target {self.targets}")

    def create_state(self, key, batch):
        variables = self.model.init({"params": key, "dropout": key}, batch["images"],
                                    train=False)
        return create_state(variables["params"], self.tx, variables.get("batch_stats", {}))

    def _loss(self, pred, batch):
        return self.loss_fn(pred / self.scale, batch["targets"] / self.scale, batch["mask"])

    def augment(self, batch, key):
        """Training-time augmentation of a ``[B, X, Y, ...]`` batch (``images``, ``targets``,
        ``mask``): a random ``config.train.crop`` window per example and, with
        ``config.train.flip``, a left-right flip (axis X) of half the examples."""
        if not (self.crop or self.flip):
            return batch
        out = {k: batch[k] for k in self.batch_keys}
        n, size = out["images"].shape[0], out["images"].shape[1:3]
        k_x, k_y, k_flip = jax.random.split(key, 3)
        if self.crop:
            if any(c > s for c, s in zip(self.crop, size)):
                raise ValueError(f"config.train.crop={self.crop} is larger than the images {size}")
            ox = jax.random.randint(k_x, (n,), 0, size[0] - self.crop[0] + 1)
            oy = jax.random.randint(k_y, (n,), 0, size[1] - self.crop[1] + 1)

            def cut(a, ox, oy):
                return jax.lax.dynamic_slice(a, (ox, oy) + (0,) * (a.ndim - 2),
                                             self.crop + a.shape[2:])

            out = {k: jax.vmap(cut)(v, ox, oy) for k, v in out.items()}
        if self.flip:
            flip = jax.random.bernoulli(k_flip, 0.5, (n,))
            out = {k: jnp.where(flip.reshape((n,) + (1,) * (v.ndim - 1)), jnp.flip(v, 1), v)
                   for k, v in out.items()}
        return {**batch, **out}

    def train_step(self, state, batch, key):
        if self.crop or self.flip:
            key, k_aug = jax.random.split(key)
            batch = self.augment(batch, k_aug)

        def loss_of(params):
            pred, stats = apply_network(self.model, params, state.batch_stats, batch["images"], True,
                                 key)
            return self._loss(pred, batch), stats

        (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return apply_gradients(state, grads, loss, self.tx, self.ema_decay, stats)

    def eval_step(self, state, batch, key):
        pred = self.predict(state, batch["images"], key)["mean"]
        return {"loss": self._loss(pred, batch)}

    def predict(self, state, images, key=None):
        """``{"mean": maps [B, *S, C]}`` (physical units) from ``images [B, *S, C_in]``."""
        params = eval_params(state, self.ema_decay)
        return {"mean": apply_network(self.model, params, state.batch_stats, images, False)[0]}

    def predict_split(self, state, images, batch_size=None):
        """Maps ``[N, *S, C]`` (numpy) for a whole split, in its stored order."""
        fn = jax.jit(self.predict)
        return predict_in_batches(lambda x, k: fn(state, x, k), images, batch_size or self.config.train.batch_size,
                                  outputs=("mean",))["mean"]

    def evaluate(self, state, data, out_dir):
        """Test-split report: ``metrics.json`` and figures in ``out_dir``."""
        from qmri_jax.evaluation import report
        pred = self.predict_split(state, data["test"]["images"])
        os.makedirs(out_dir, exist_ok=True)
        return report.write_report(out_dir, pred, data["test"], self.targets,
                                   figures=self.config.eval.figures)
