"""Optimisers and learning-rate schedules from a config section (``config.train`` or a task's own
section with the same keys, e.g. a GAN's discriminator)."""

from __future__ import annotations

import optax

__all__ = ["OPTIMIZERS", "SCHEDULES", "create_schedule", "create_optimizer"]

OPTIMIZERS = ("adam", "adamw", "nadam", "sgd")
SCHEDULES = ("constant", "exponential", "cosine")


def create_schedule(cfg, num_steps: int) -> optax.Schedule:
    """``cfg.schedule``: constant, exponential (``decay_rate`` per ``decay_steps`` after
    ``decay_after`` steps) or cosine (to 0 at ``num_steps``), after a linear warm-up over
    ``warmup_steps``."""
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
        raise ValueError(f"train.schedule={cfg.schedule!r}: expected one of {SCHEDULES}")
    if cfg.warmup_steps > 0:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, cfg.warmup_steps), sched],
                                     [cfg.warmup_steps])
    return sched


def create_optimizer(cfg, num_steps: int) -> optax.GradientTransformation:
    """Optax optimiser: ``cfg.optimizer`` from :data:`OPTIMIZERS` on :func:`create_schedule`,
    global-norm clipping at ``cfg.grad_clip`` (0: none)."""
    sched = create_schedule(cfg, num_steps)
    if cfg.optimizer == "adam":
        opt = optax.adam(sched)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "nadam":
        opt = optax.nadam(sched)
    elif cfg.optimizer == "sgd":
        opt = optax.sgd(sched, momentum=0.9)
    else:
        raise ValueError(f"train.optimizer={cfg.optimizer!r}: expected one of {OPTIMIZERS}")
    if cfg.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
    return opt
