"""The Task protocol every training method implements, and helpers the tasks share.

A task owns its networks, optimisers, state and steps; the engine (:mod:`qmri_jax.engine`) only
compiles and runs them, and :mod:`qmri_jax.predict` only calls ``predict``:

- ``batch_keys``: the keys of a training batch its steps read (e.g. images, targets, mask);
- ``targets``: the names of the maps it predicts, in channel order;
- ``size_multiple``: spatial sizes its networks take must be multiples of this;
- ``create_state(key, batch) -> state``: any pytree (e.g. one :class:`~qmri_jax.engine.TrainState`,
  or one per network of a GAN); the task builds its optimisers itself;
- ``train_step(state, batch, key) -> (state, metrics)``: pure, compiled once by the engine;
  ``metrics`` holds scalars (all logged) and optionally ``finite`` for the NaN guard;
- ``eval_step(state, batch, key) -> metrics``: pure; ``metrics["loss"]`` picks the best checkpoint;
- ``predict(state, images [B, *S, C_in], key) -> {"mean": [B, *S, C], ["std", "samples"]}`` in
  physical units; pure (callers jit it);
- ``evaluate(state, data, out_dir) -> dict``: the end-of-training report on ``data["test"]``;
- optional ``evaluate_best = True``: the report uses the best-on-validation checkpoint instead of
  the last state (a GAN, whose last step need not be its best).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

__all__ = ["Task", "predict_in_batches", "tree_where"]


@runtime_checkable
class Task(Protocol):
    batch_keys: tuple[str, ...]
    targets: tuple[str, ...]
    size_multiple: int

    def create_state(self, key, batch: dict) -> Any: ...

    def train_step(self, state, batch: dict, key) -> tuple[Any, dict]: ...

    def eval_step(self, state, batch: dict, key) -> dict: ...

    def predict(self, state, images, key) -> dict: ...

    def evaluate(self, state, data: dict, out_dir: str) -> dict: ...


def tree_where(flag, new, old):
    """``new`` where the traced bool ``flag`` holds, else ``old`` (two pytrees of one structure):
    a step that updates one network and freezes another."""
    return jax.tree.map(lambda a, b: jax.numpy.where(flag, a, b), new, old)


def predict_in_batches(predict_fn, images: np.ndarray, batch_size: int, key=None,
                       outputs=("mean", "std")) -> dict[str, np.ndarray]:
    """``predict_fn(images [B, ...], key) -> dict`` over ``images [N, ...]`` in batches of
    ``batch_size`` (the last padded with copies of its last image, so one compiled shape serves
    all), batch ``i`` (its first index) with ``fold_in(key, i)``. Returns the ``outputs`` the
    function gives, as numpy ``[N, ...]``."""
    key = jax.random.key(0) if key is None else key
    n, out = len(images), {}
    for i in range(0, n, batch_size):
        x = np.asarray(images[i:i + batch_size])
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        res = predict_fn(x, jax.random.fold_in(key, i))
        for name in outputs:
            if name in res:
                out.setdefault(name, []).append(np.asarray(res[name])[:batch_size - pad])
    return {k: np.concatenate(v) for k, v in out.items()}
