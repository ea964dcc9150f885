"""Training engine for image-to-map networks: state, pure steps, the loop, evaluation at the end.

``train_step(state, batch, key) -> (state, metrics)`` is pure and compiled once with
``jax.jit(in_shardings=..., out_shardings=..., donate_argnums=0)``: the batch is sharded over the
``"data"`` axis of a mesh, parameters are replicated, so the same code runs on 1 CPU, N fake CPU
devices, GPUs/TPUs and several hosts. RNG per step is ``fold_in(key(seed), step)`` and batch ``s``
is a function of ``s`` only (see :class:`~qmri_jax.data.loader.Loader`), so a killed and resumed run
ends with bit-identical parameters.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qmri_jax import checkpoint as ckpt_lib
from qmri_jax import losses as losses_lib
from qmri_jax import sharding as sharding_lib
from qmri_jax.models import create_model
from qmri_jax.physics.protocol import get_protocol

__all__ = ["TrainState", "compiled_init", "create_optimizer", "create_train_state",
           "make_train_step", "make_predict_fn", "train_and_evaluate", "load_data",
           "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN/Inf."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (no RNG, learning rate or config)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any


def create_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
    """Optax optimiser from ``config.train``: ``optimizer`` adam/adamw/sgd; ``schedule`` constant,
    exponential (``decay_rate`` per ``decay_steps`` after ``decay_after`` steps), cosine; linear
    warm-up over ``warmup_steps``; global-norm clipping ``grad_clip`` (0: none)."""
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        sched = optax.constant_schedule(lr)
    elif cfg.schedule == "exponential":
        sched = optax.exponential_decay(lr, transition_steps=max(cfg.decay_steps, 1),
                                        decay_rate=cfg.decay_rate,
                                        transition_begin=cfg.decay_after)
    elif cfg.schedule == "cosine":
        sched = optax.cosine_decay_schedule(lr, max(num_steps - cfg.warmup_steps, 1))
    else:
        raise ValueError(f"train.schedule={cfg.schedule!r}: expected constant, exponential, cosine")
    if cfg.warmup_steps > 0:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps), sched],
                                     [cfg.warmup_steps])
    if cfg.optimizer == "adam":
        opt = optax.adam(sched)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = optax.sgd(sched, momentum=0.9)
    else:
        raise ValueError(f"train.optimizer={cfg.optimizer!r}: expected adam, adamw or sgd")
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt


def compiled_init(init_fn, *args, jit_kwargs=None, **static_kwargs):
    """``init_fn(*args, **static_kwargs)`` (a Flax ``Module.init``, or a function that builds a
    train state with one) as one compiled call instead of op-by-op dispatch, compiled at XLA's
    lowest backend optimisation level on the CPU: it runs once, and its random initialisers are
    slow to optimise (a small DiffusionUNet on 2 cores: 28.5 s eager, 14.8 s compiled at the
    default level, 3.9 s at level 0). ``jit_kwargs`` go to ``jax.jit`` (e.g. ``out_shardings``).
    Called while tracing (inside another ``jit``), it is ``init_fn`` itself."""
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
        return init_fn(*args, **static_kwargs)
    fn = jax.jit(functools.partial(init_fn, **static_kwargs), **(jit_kwargs or {}))
    lowered = fn.lower(*args)
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    return lowered.compile(compiler_options=opts)(*args)


def create_train_state(key, model, tx, sample_images) -> TrainState:
    """Initialise parameters from a sample batch ``[B, *S, C_in]``."""
    variables = compiled_init(model.init, {"params": key, "dropout": key}, sample_images,
                              train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      ema_params=params)


def _apply(model, params, batch_stats, images, train, key=None):
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train:
        out, updates = model.apply(variables, images, train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"] if batch_stats else [])
        return out, updates.get("batch_stats", batch_stats)
    return model.apply(variables, images, train=False), batch_stats


def make_train_step(model, tx, loss_fn, target_scale, ema_decay: float = 0.0):
    """``train_step(state, batch, key) -> (state, metrics)``; ``batch`` has ``images``
    ``[B, *S, C_in]``, ``targets`` ``[B, *S, C_out]`` (physical units) and ``mask`` ``[B, *S]``.
    The loss compares ``pred / target_scale`` with ``targets / target_scale``."""
    scale = jnp.asarray(target_scale, jnp.float32)

    def train_step(state: TrainState, batch, key):
        def loss_of(params):
            pred, new_stats = _apply(model, params, state.batch_stats, batch["images"], True, key)
            return loss_fn(pred / scale, batch["targets"] / scale, batch["mask"]), new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        return apply_gradients(state, grads, loss, tx, ema_decay, new_stats)

    return train_step


def apply_gradients(state: TrainState, grads, loss, tx, ema_decay: float, batch_stats=None):
    """One optimiser update with EMA, shared by every task's step: ``(state, metrics)`` with
    ``loss``, ``grad_norm`` and ``finite`` (both finite; checked by the NaN guard)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = params if ema_decay <= 0 else jax.tree.map(
        lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
    gnorm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    metrics = {"loss": loss, "grad_norm": gnorm,
               "finite": jnp.isfinite(loss) & jnp.isfinite(gnorm)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema,
                              batch_stats=state.batch_stats if batch_stats is None
                              else batch_stats)
    return new_state, metrics


def make_predict_fn(model):
    """``predict(params, batch_stats, images [B, *S, C_in]) -> maps [B, *S, C_out]``."""

    def predict(params, batch_stats, images):
        return _apply(model, params, batch_stats, images, False)[0]

    return predict


# --------------------------------------------------------------------------------------------------
# Data


def data_config(config):
    from qmri_jax.data import datasets
    d = config.data
    return datasets.DataConfig(
        protocol=d.protocol, field=d.field, resolution_mm=d.resolution_mm,
        num_subjects=d.num_subjects, geometric_fraction=d.geometric_fraction,
        pathology_fraction=d.pathology_fraction, slices_per_subject=d.slices_per_subject,
        snr=float(d.snr), receive_bias=d.receive_bias, transmit_bias=d.transmit_bias,
        k_spread=float(d.get("k_spread", 0.0)), slice_thickness_vox=d.slice_thickness_vox,
        geometric_radius=tuple(d.get("geometric_radius", datasets.DataConfig.geometric_radius)),
        normalisation=d.normalisation, seed=d.seed)


def _as_batch_arrays(arrays, targets, crop=None):
    out = {"images": arrays["images"].astype(np.float32),
           "targets": np.stack([arrays[t] for t in targets], axis=-1).astype(np.float32),
           "mask": arrays["brain"].astype(np.float32)}
    for k in ("GM", "WM", "CSF", "lesion", "subject", "slice"):
        if k in arrays:
            out[k] = arrays[k]
    return out


def load_data(config, workdir: str) -> dict:
    """``{split: arrays}`` for train/validation/test, built with TFDS (or on the fly for train)."""
    from qmri_jax.data import datasets
    dcfg = data_config(config)
    data_dir = config.data.data_dir or os.path.join(os.path.expanduser("~"), ".cache", "qmri_jax",
                                                    "tfds")
    builder = datasets.build(dcfg, data_dir, dims=2)
    out = {s: _as_batch_arrays(datasets.load_split_arrays(builder, s), config.targets)
           for s in datasets.SPLITS}
    if config.data.on_the_fly:
        out["train_fn"] = lambda epoch: _as_batch_arrays(
            datasets.epoch_arrays(dcfg, "train", epoch), config.targets)
    out["protocol"] = get_protocol(dcfg.protocol).to_dict()
    return out


# --------------------------------------------------------------------------------------------------
# The loop


def _on_all_processes(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (itself where there is one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def _write_json(path, obj):
    from qmri_jax.io.nifti import write_json
    write_json(path, obj)


class _Logger:
    """JSONL + TensorBoard scalars (process 0 only)."""

    def __init__(self, workdir):
        self.main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.main:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(workdir, "tb"))
            except ImportError:  # TensorBoard scalars are optional
                self.tb = None

    def write(self, step, **scalars):
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}})
                    + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, float(v), int(step))
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def build_model(config):
    kw = dict(config.model)
    name = kw.pop("name")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    return create_model(name, config.target_scale, **kw)


def train_and_evaluate(config, workdir: str, stop_at: int | None = None, data: dict | None = None):
    """Train (resuming from ``workdir`` if it holds a checkpoint), then evaluate on the test split.

    Args:
      config: the ml_collections config (see ``configs/default.py``).
      workdir: output folder: ``config.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``,
        ``checkpoints_best/``, ``eval/``.
      stop_at: stop after this global step without the final evaluation, as a killed run would
        (for resume tests).
      data: pre-loaded data (tests); default :func:`load_data`.

    Returns:
      ``(state, metrics)`` with the evaluation metrics (``None`` if stopped early).
    """
    from tqdm import tqdm

    from qmri_jax.data.loader import Loader

    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    tc = config.train
    mesh = sharding_lib.create_mesh()
    sharding_lib.check_batch_size(tc.batch_size, mesh)
    data = data if data is not None else load_data(config, workdir)
    keys = ["images", "targets", "mask"]
    train_loader = Loader(data.get("train_fn") or data["train"], tc.batch_size, seed=config.seed,
                          mesh=mesh, keys=keys)
    task = create_task(config)
    tx = create_optimizer(tc, tc.num_steps)
    key = jax.random.key(config.seed)
    sample = jnp.zeros((1, *data["train"]["images"].shape[1:]), jnp.float32)
    repl, bsh = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    state = compiled_init(lambda k: task.create_state(k, tx, sample),
                          jax.random.fold_in(key, 2**31 - 1), jit_kwargs={"out_shardings": repl})
    latest, best = ckpt_lib.create_managers(workdir)
    extra = {"best_val": math.inf, "smoothed_val": None, "bad_evals": 0, "stopped": False}
    restored = ckpt_lib.restore_latest(latest, state)
    if restored is not None:
        state, extra, step0 = restored
        state = jax.device_put(state, repl)
        print(f"resumed from {workdir}/checkpoints step {step0}")
    _write_json(os.path.join(workdir, "protocol.json"), data["protocol"])

    step_fn = jax.jit(task.make_train_step(tx), in_shardings=(repl, bsh, repl),
                      out_shardings=(repl, repl), donate_argnums=0)
    logger = _Logger(workdir)
    start = int(state.step)
    end = tc.num_steps if stop_at is None else min(stop_at, tc.num_steps)
    bar = tqdm(total=tc.num_steps, initial=start, desc="train", dynamic_ncols=True,
               disable=jax.process_index() != 0 or not tc.progress_bar)
    t0, last_good = time.time(), start
    limit_s = 60.0 * float(tc.get("time_limit_minutes", 0.0) or 0.0)
    timed_out = False
    step = start
    while step < end and not extra["stopped"] and not timed_out:
        batch = train_loader.batch_at(step)
        state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
        step += 1
        check = step % tc.log_every == 0 or step % tc.checkpoint_every == 0 or step == end
        if check:
            m = jax.device_get(metrics)
            if not m["finite"]:
                raise NonFiniteError(
                    f"non-finite loss/gradients at step {step} (loss={m['loss']}); the last good "
                    f"checkpoint is step {last_good} in {workdir}/checkpoints. Lower "
                    "train.learning_rate or check the data.")
            rate = (step - start) / max(time.time() - t0, 1e-9)
            logger.write(step, loss=m["loss"], grad_norm=m["grad_norm"], steps_per_s=rate)
            bar.set_postfix(loss=f"{m['loss']:.4f}", steps_s=f"{rate:.2f}")
        bar.update(1)
        if step % tc.eval_every == 0 or step == tc.num_steps:
            val = task.validation_loss(state, data["validation"])
            prev = extra["smoothed_val"]
            sm = val if prev is None else tc.smoothing * prev + (1 - tc.smoothing) * val
            extra["smoothed_val"] = sm
            if sm < extra["best_val"] - 1e-6:
                extra["best_val"], extra["bad_evals"] = sm, 0
                ckpt_lib.save(best, step, state, extra, metrics={"val_loss": float(val)})
            else:
                extra["bad_evals"] += 1
                if tc.early_stopping_patience and extra["bad_evals"] >= tc.early_stopping_patience:
                    extra["stopped"] = True
                    print(f"early stopping at step {step}: smoothed validation loss has not "
                          f"improved for {extra['bad_evals']} evaluations")
            logger.write(step, val_loss=val, val_loss_smoothed=sm)
        if limit_s and step < end and (jax.process_count() == 1 or step % tc.log_every == 0):
            # Every process must take the same decision: with several, process 0's clock decides,
            # at steps all of them reach (log_every).
            timed_out = _on_all_processes(time.time() - t0 >= limit_s)
            if timed_out:
                print(f"time limit: stopping at step {step} after {tc.time_limit_minutes:g} min "
                      f"(train.time_limit_minutes); resume the workdir to continue")
        if step % tc.checkpoint_every == 0 or step == end or extra["stopped"] or timed_out:
            ckpt_lib.save(latest, step, state, extra)
            last_good = step
    bar.close()
    logger.close()
    if stop_at is not None and step < tc.num_steps and not extra["stopped"]:
        return state, None
    metrics = task.evaluate(state, data["test"], os.path.join(workdir, "eval"),
                            calibration=data.get("validation"))
    return state, metrics


class RegressionTask:
    """Supervised image-to-map regression (the U-Net family, HighResNet, ResNet)."""

    def __init__(self, config):
        self.config = config
        self.model = build_model(config)
        self.loss_fn = losses_lib.get_loss(config.train.loss, **dict(config.train.loss_kwargs))
        self.predict = jax.jit(make_predict_fn(self.model))

    def create_state(self, key, tx, sample):
        return create_train_state(key, self.model, tx, sample)

    def make_train_step(self, tx):
        return make_train_step(self.model, tx, self.loss_fn, self.config.target_scale,
                               self.config.train.ema_decay)

    def validation_loss(self, state, arrays) -> float:
        return evaluate_loss(self.predict, state, arrays, self.loss_fn, self.config)

    def evaluate(self, state, arrays, out_dir, calibration=None) -> dict:
        """Test-split report; ``calibration`` (validation arrays) is unused: point estimates."""
        from qmri_jax.evaluation import report
        pred = predict_split(self.predict, state, arrays, self.config)
        return report.write_report(out_dir, pred, arrays, self.config.targets,
                                   figures=self.config.eval.figures)


def create_task(config):
    """The training task of ``config.task``: ``"regression"`` or ``"ddpm"``."""
    task = config.get("task", "regression")
    if task == "regression":
        return RegressionTask(config)
    if task == "ddpm":
        from qmri_jax.diffusion.task import DdpmTask
        return DdpmTask(config)
    raise ValueError(f"config.task={task!r}: expected 'regression' or 'ddpm'")


def eval_params(state, config):
    """The parameters used for evaluation and sampling: the EMA when ``train.ema_decay > 0``."""
    return state.ema_params if config.train.ema_decay > 0 else state.params


def predict_split(predict, state, arrays, config, mesh=None, batch_size=None):
    """Predictions ``[N, *S, C_out]`` (numpy) for a whole split, in its stored order."""
    bs = batch_size or config.train.batch_size
    n = len(arrays["images"])
    out = []
    params = eval_params(state, config)
    for i in range(0, n, bs):
        x = arrays["images"][i:i + bs]
        pad = bs - len(x)
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        out.append(np.asarray(predict(params, state.batch_stats, jnp.asarray(x)))[:bs - pad])
    return np.concatenate(out)


def evaluate_loss(predict, state, arrays, loss_fn, config, mesh=None) -> float:
    pred = predict_split(predict, state, arrays, config, mesh)
    scale = np.asarray(config.target_scale, np.float32)
    return float(loss_fn(jnp.asarray(pred / scale), jnp.asarray(arrays["targets"] / scale),
                         jnp.asarray(arrays["mask"])))
