"""Supervised image-to-map regression: a network from :mod:`qmri_jax.models` (the U-Net family,
HighResNet, ResNet, the RIM) trained on a masked loss of its maps against the true maps.

The loss compares ``pred / target_scale`` with ``targets / target_scale`` (``config.target_scale``:
the typical value of each map), so maps in ms and in a.u. weigh alike.

Slices ``[B, H, W, C]`` or volumes ``[B, X, Y, Z, C]`` (``config.data.dims = 3``): inputs whose
spatial sizes do not divide by the network's ``size_multiple`` are zero-padded at the far end of
each axis (background) and the output cut back, so whole volumes of any size can be mapped; 3D
training takes random ``config.train.crop = (X, Y, Z)`` patches, and the test report scores the
volumes on the 2D test split's slices (:func:`qmri_jax.tasks.data.cut_test_slices`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

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
        dims = int(config.data.get("dims", 2))
        if self.crop and (len(self.crop) != dims or min(self.crop) < 1
                          or any(c % self.size_multiple for c in self.crop)):
            raise ValueError(f"config.train.crop={self.crop}: expected {dims} sizes "
                             f"(config.data.dims={dims}), each a multiple of "
                             f"{self.size_multiple} (the network's levels)")
        self.intensity = tuple(float(v) for v in config.train.get("intensity_scale", ()))
        if self.intensity and not (len(self.intensity) == 2
                                   and 0 < self.intensity[0] <= self.intensity[1]):
            raise ValueError(f"config.train.intensity_scale={self.intensity}: expected (low, "
                             "high) with 0 < low <= high, or () (off)")
        self.scale = jnp.asarray(config.target_scale, jnp.float32)
        if self.scale.shape != (len(self.targets),):
            raise ValueError(f"config.target_scale={tuple(config.target_scale)}: expected one "
                             f"typical value per target {self.targets}")

    def create_state(self, key, batch):
        variables = self.model.init({"params": key, "dropout": key}, self._pad(batch["images"]),
                                    train=False)
        return create_state(variables["params"], self.tx, variables.get("batch_stats", {}))

    def _pad(self, images):
        """``images [B, *S, C]`` zero-padded at the end of each spatial axis to a multiple of
        ``size_multiple``."""
        m = self.size_multiple
        pad = [(0, 0)] + [(0, -s % m) for s in images.shape[1:-1]] + [(0, 0)]
        return jnp.pad(images, pad) if any(p[1] for p in pad) else images

    def _apply(self, params, batch_stats, images, train, key=None):
        """The network on ``images [B, *S, C]`` of any spatial size (padded, then cut back)."""
        out, stats = apply_network(self.model, params, batch_stats, self._pad(images), train, key)
        return out[(slice(None),) + tuple(slice(0, s) for s in images.shape[1:-1])], stats

    def _loss(self, pred, batch):
        return self.loss_fn(pred / self.scale, batch["targets"] / self.scale, batch["mask"])

    def augment(self, batch, key):
        """Training-time augmentation of a ``[B, X, Y, ...]`` batch (``images``, ``targets``,
        ``mask``): a random ``config.train.crop`` window (2 or 3 spatial sizes) per example and,
        with ``config.train.flip``, a left-right flip (axis X) of half the examples."""
        if not (self.crop or self.flip):
            return batch
        out = {k: batch[k] for k in self.batch_keys}
        nd = len(self.crop) or 2
        n, size = out["images"].shape[0], out["images"].shape[1:1 + nd]
        keys = jax.random.split(key, nd + 1)  # 2D: (x, y, flip), as it always was
        k_flip = keys[-1]
        if self.crop:
            if any(c > s for c, s in zip(self.crop, size)):
                raise ValueError(f"config.train.crop={self.crop} is larger than the images {size}")
            offsets = jnp.stack([jax.random.randint(k, (n,), 0, s - c + 1) for k, s, c in
                                 zip(keys, size, self.crop)], axis=1)

            def cut(a, o):
                return jax.lax.dynamic_slice(a, tuple(o) + (0,) * (a.ndim - nd),
                                             self.crop + a.shape[nd:])

            out = {k: jax.vmap(cut)(v, offsets) for k, v in out.items()}
        if self.flip:
            flip = jax.random.bernoulli(k_flip, 0.5, (n,))
            out = {k: jnp.where(flip.reshape((n,) + (1,) * (v.ndim - 1)), jnp.flip(v, 1), v)
                   for k, v in out.items()}
        return {**batch, **out}

    def scale_intensity(self, batch, key):
        """Each example's images times a receive gain drawn log-uniform in
        ``config.train.intensity_scale``, and its PD target with them (T1, T2, k are ratios of
        the images and stay): a network trained so cannot read T1 from the absolute intensity
        left by a normalisation, which differs between scans (skull, field of view)."""
        lo, hi = self.intensity
        n = batch["images"].shape[0]
        g = jnp.exp(jax.random.uniform(key, (n,), minval=np.log(lo), maxval=np.log(hi)))
        g_img = g.reshape((n,) + (1,) * (batch["images"].ndim - 1))
        is_pd = jnp.asarray([t == "PD" for t in self.targets])
        g_tgt = jnp.where(is_pd, g.reshape((n,) + (1,) * (batch["targets"].ndim - 1)), 1.0)
        return {**batch, "images": batch["images"] * g_img, "targets": batch["targets"] * g_tgt}

    def train_step(self, state, batch, key):
        if self.crop or self.flip:
            key, k_aug = jax.random.split(key)
            batch = self.augment(batch, k_aug)
        if self.intensity:
            key, k_int = jax.random.split(key)
            batch = self.scale_intensity(batch, k_int)

        def loss_of(params):
            pred, stats = self._apply(params, state.batch_stats, batch["images"], True, key)
            return self._loss(pred, batch), stats

        (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return apply_gradients(state, grads, loss, self.tx, self.ema_decay, stats)

    def eval_step(self, state, batch, key):
        pred = self.predict(state, batch["images"], key)["mean"]
        return {"loss": self._loss(pred, batch)}

    def predict(self, state, images, key=None):
        """``{"mean": maps [B, *S, C]}`` (physical units) from ``images [B, *S, C_in]``."""
        params = eval_params(state, self.ema_decay)
        return {"mean": self._apply(params, state.batch_stats, images, False)[0]}

    def predict_split(self, state, images, batch_size=None):
        """Maps ``[N, *S, C]`` (numpy) for a whole split, in its stored order."""
        fn = jax.jit(self.predict)
        return predict_in_batches(lambda x, k: fn(state, x, k), images, batch_size or self.config.train.batch_size,
                                  outputs=("mean",))["mean"]

    def evaluate(self, state, data, out_dir):
        """Test-split report: ``metrics.json`` and figures in ``out_dir``."""
        from qmri_jax.evaluation import report
        test = data["test"]
        pred = self.predict_split(state, test["images"])
        if pred.ndim == 5:  # volumes: scored on the 2D test split's slices
            from qmri_jax.tasks.data import cut_test_slices
            pred, test = cut_test_slices(self.config, test, pred)
        os.makedirs(out_dir, exist_ok=True)
        return report.write_report(out_dir, pred, test, self.targets,
                                   figures=self.config.eval.figures)
