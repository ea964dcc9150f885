"""The training loop: any task's pure steps, compiled once and sharded over the device mesh.

The engine knows no task, model or diffusion code. A task (see :mod:`qmri_jax.tasks.base`)
gives ``create_state(key, example_batch)``, ``train_step(state, batch, key) -> (state, metrics)``,
``eval_step(state, batch, key) -> metrics`` and the ``batch_keys`` its steps read; the loop

- compiles both steps with ``jax.jit(in_shardings=..., out_shardings=..., donate_argnums=0)``: the
  batch is split over the ``"data"`` axis of the mesh, the state replicated, so the same code runs on
  one CPU, N fake CPU devices, GPUs and several hosts;
- draws step ``s``'s batch as a function of ``s`` only and its key as ``fold_in(key(seed), s)``,
  so a killed and resumed run ends with bit-identical parameters;
- logs every scalar a step returns (``metrics.jsonl``, TensorBoard), raises on a non-finite loss
  (the last good checkpoint stays), evaluates the validation split every ``eval_every`` steps,
  keeps the best checkpoint on its smoothed ``loss``, stops early after ``early_stopping_patience``
  evaluations without improvement, and at a wall-clock budget;
- on a stop request (:mod:`~qmri_jax.engine.preemption`: SIGTERM / SIGUSR1 from a cluster that
  preempts the job or reaches its time limit) saves a checkpoint at the current step and returns
  unfinished.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import numpy as np

from qmri_jax.engine import checkpoint as ckpt_lib
from qmri_jax.engine import preemption
from qmri_jax.engine import sharding as sharding_lib
from qmri_jax.engine.loader import Loader
from qmri_jax.engine.metrics_log import MetricWriter, scalars
from qmri_jax.engine.state import compiled_init

__all__ = ["LoopConfig", "NonFiniteError", "train", "init_state", "evaluate_split"]

_INIT_FOLD = 2**31 - 1  # key(seed) folded with this initialises the state
_EVAL_KEY = 123  # validation noise draws: the same at every evaluation


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN/Inf."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What the loop needs of ``config.train`` (see ``configs/default.py`` for each key)."""

    batch_size: int
    num_steps: int
    log_every: int = 25
    eval_every: int = 200
    checkpoint_every: int = 200
    early_stopping_patience: int = 0
    smoothing: float = 0.6
    time_limit_minutes: float = 0.0
    eval_batches: int = 0  # validation batches per evaluation; 0: the whole split
    progress_bar: bool = True

    def __post_init__(self):
        for name in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"config.train.{name}={getattr(self, name)}: expected >= 1")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"config.train.smoothing={self.smoothing}: expected [0, 1)")

    @classmethod
    def from_config(cls, train_cfg) -> "LoopConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(train_cfg).items() if k in names})


def _check_finite(m: dict, step: int, last_good: int, workdir: str) -> None:
    ok = bool(m["finite"]) if "finite" in m else all(
        np.isfinite(v) for v in scalars(m).values())
    if not ok:
        raise NonFiniteError(
            f"non-finite loss/gradients at step {step} (loss={m.get('loss')}); the last good "
            f"checkpoint is step {last_good} in {workdir}/checkpoints. Lower "
            "train.learning_rate or check the data.")


def _on_all_processes(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (itself where there is one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def init_state(task, example_batch: dict, seed: int, mesh=None):
    """The task's fresh state, compiled once and replicated over ``mesh``."""
    mesh = mesh if mesh is not None else sharding_lib.create_mesh()
    example = {k: jax.numpy.asarray(v) for k, v in example_batch.items()}
    return compiled_init(lambda k: task.create_state(k, example),
                         jax.random.fold_in(jax.random.key(seed), _INIT_FOLD),
                         jit_kwargs={"out_shardings": sharding_lib.replicated(mesh)})


def evaluate_split(eval_step, state, arrays: dict, keys, batch_size: int, mesh,
                   max_batches: int = 0) -> dict[str, float]:
    """Mean over batches of ``eval_step``'s scalar metrics on ``arrays`` in stored order: full
    batches of ``batch_size``, at most ``max_batches`` (0: all) of them. A split smaller than a
    batch is one batch of as many examples as divide the device count; one smaller than the
    device count is repeated to fill one batch of it."""
    n = len(arrays[keys[0]])
    unit = mesh.devices.size * jax.process_count() // math.gcd(mesh.devices.size,
                                                               jax.process_count())
    bs = batch_size if n >= batch_size else max(n - n % unit, unit)
    loader = Loader({k: arrays[k] for k in keys}, bs, mesh=mesh, shuffle=False, keys=keys,
                    drop_remainder=n >= bs)
    steps = loader.steps_per_epoch()
    if max_batches:
        steps = min(steps, max_batches)
    rows = []
    for i in range(steps):
        batch = sharding_lib.put_batch(loader.host_batch(0, i), mesh)
        rows.append(scalars(jax.device_get(
            eval_step(state, batch, jax.random.fold_in(jax.random.key(_EVAL_KEY), i)))))
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train(task, workdir: str, cfg: LoopConfig, data: dict, seed: int = 0,
          stop_at: int | None = None, mesh=None) -> tuple[Any, bool]:
    """Train ``task`` in ``workdir`` (resuming from its latest checkpoint).

    Args:
      task: provides ``create_state``, ``train_step``, ``eval_step`` and ``batch_keys``.
      workdir: writes ``metrics.jsonl``, ``tb/``, ``checkpoints/`` (latest two) and
        ``checkpoints_best/`` (best smoothed validation loss).
      cfg: the loop's settings.
      data: ``{"train": {key: [N, ...]}, "validation": {...}}``, optionally ``"train_fn"``
        (``epoch -> arrays``: fresh training examples each epoch).
      seed: the run's seed (initialisation, batch order, step keys).
      stop_at: stop after this global step as a killed run would (resume tests).
      mesh: the device mesh (default: all devices).

    Returns:
      ``(state, finished)``: ``finished`` is False when stopped by ``stop_at`` before
      ``cfg.num_steps`` (and not by early stopping).
    """
    from tqdm import tqdm

    os.makedirs(workdir, exist_ok=True)
    mesh = mesh if mesh is not None else sharding_lib.create_mesh()
    sharding_lib.check_batch_size(cfg.batch_size, mesh)
    keys = tuple(task.batch_keys)
    missing = [k for k in keys if k not in data["train"]]
    if missing:
        raise ValueError(f"the training data has no {missing} (the task reads {keys}; "
                         f"the data has {sorted(data['train'])})")
    loader = Loader(data.get("train_fn") or data["train"], cfg.batch_size, seed=seed, mesh=mesh,
                    keys=list(keys))
    key = jax.random.key(seed)
    example = {k: np.asarray(data["train"][k][:1]) for k in keys}
    state = init_state(task, example, seed, mesh)
    latest, best = ckpt_lib.create_managers(workdir)
    extra = {"best_val": math.inf, "smoothed_val": None, "bad_evals": 0, "stopped": False}
    repl, bsh = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    restored = ckpt_lib.restore_latest(latest, state)
    start = 0
    if restored is not None:
        state, extra, start = restored
        state = jax.device_put(state, repl)
        print(f"resumed from {workdir}/checkpoints step {start}")

    step_fn = jax.jit(task.train_step, in_shardings=(repl, bsh, repl),
                      out_shardings=(repl, repl), donate_argnums=0)
    eval_fn = jax.jit(task.eval_step, in_shardings=(repl, bsh, repl), out_shardings=repl)
    writer = MetricWriter(workdir)
    end = cfg.num_steps if stop_at is None else min(stop_at, cfg.num_steps)
    bar = tqdm(total=cfg.num_steps, initial=start, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not cfg.progress_bar)
    t0, last_good, step, timed_out = time.time(), start, start, False
    limit_s = 60.0 * float(cfg.time_limit_minutes or 0.0)
    preempted = False
    with preemption.in_training_loop():
        while step < end and not extra["stopped"] and not timed_out and not preempted:
            state, metrics = step_fn(state, loader.batch_at(step), jax.random.fold_in(key, step))
            step += 1
            if step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == end:
                m = jax.device_get(metrics)
                _check_finite(m, step, last_good, workdir)
                rate = (step - start) / max(time.time() - t0, 1e-9)
                writer.write(step, {**scalars(m), "steps_per_s": rate})
                if "loss" in m:
                    bar.set_postfix(loss=f"{float(m['loss']):.4f}", steps_s=f"{rate:.2f}")
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.num_steps:
                _evaluate(eval_fn, state, data, keys, cfg, mesh, extra, best, writer, step)
            if step < end and (jax.process_count() == 1 or step % cfg.log_every == 0):
                # Every process must take the same decision: with several, process 0's clock and
                # signals decide, at steps all of them reach (log_every).
                if limit_s:
                    timed_out = _on_all_processes(time.time() - t0 >= limit_s)
                    if timed_out:
                        print(f"time limit: stopping at step {step} after "
                              f"{cfg.time_limit_minutes:g} min (train.time_limit_minutes); "
                              "resume the workdir to continue")
                preempted = _on_all_processes(preemption.stop_requested())
                if preempted:
                    print(f"stop requested (preemption or time-out): checkpoint at step {step}; "
                          "running the same workdir again resumes from there", flush=True)
            if (step % cfg.checkpoint_every == 0 or step == end or extra["stopped"] or timed_out
                    or preempted):
                ckpt_lib.save(latest, step, state, extra)
                last_good = step
    bar.close()
    writer.close()
    finished = not (stop_at is not None and step < cfg.num_steps and not extra["stopped"])
    return state, finished and not preempted


def _evaluate(eval_fn, state, data, keys, cfg, mesh, extra, best, writer, step):
    """Validation loss, its smoothed value, the best checkpoint and early stopping (in ``extra``)."""
    val = evaluate_split(eval_fn, state, data["validation"], keys, cfg.batch_size, mesh,
                         cfg.eval_batches)
    prev = extra["smoothed_val"]
    sm = val["loss"] if prev is None else (cfg.smoothing * prev
                                            + (1 - cfg.smoothing) * val["loss"])
    extra["smoothed_val"] = sm
    if sm < extra["best_val"] - 1e-6:
        extra["best_val"], extra["bad_evals"] = sm, 0
        ckpt_lib.save(best, step, state, extra, metrics={"val_loss": val["loss"]})
    else:
        extra["bad_evals"] += 1
        if cfg.early_stopping_patience and extra["bad_evals"] >= cfg.early_stopping_patience:
            extra["stopped"] = True
            print(f"early stopping at step {step}: smoothed validation loss has not "
                  f"improved for {extra['bad_evals']} evaluations")
    writer.write(step, {**{f"val_{k}": v for k, v in val.items()}, "val_loss_smoothed": sm})
