"""Forward process and training objectives.

``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the network predicts ``eps`` (Ho et al. 2020)
or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho, ICLR 2022). Shapes: ``x_0``
``[B, *S, C]``, ``t`` ``[B]`` int.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qmri_jax.diffusion.schedules import Schedule

__all__ = ["q_sample", "predict_x0", "predict_eps", "diffusion_loss", "PREDICTIONS"]

PREDICTIONS = ("eps", "v")


def _bcast(a, x):
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(schedule: Schedule, x0, t, noise):
    """Sample ``x_t ~ q(x_t | x_0)``."""
    ab = _bcast(schedule.alpha_bars[t], x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise


def predict_x0(schedule: Schedule, x_t, t, out, prediction: str = "eps"):
    """``x_0`` implied by the network output ``out`` at ``(x_t, t)``."""
    ab = _bcast(schedule.alpha_bars[t], x_t)
    if prediction == "eps":
        return (x_t - jnp.sqrt(1 - ab) * out) / jnp.sqrt(ab)
    if prediction == "v":
        return jnp.sqrt(ab) * x_t - jnp.sqrt(1 - ab) * out
    raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")


def predict_eps(schedule: Schedule, x_t, t, out, prediction: str = "eps"):
    """``eps`` implied by the network output."""
    if prediction == "eps":
        return out
    ab = _bcast(schedule.alpha_bars[t], x_t)
    if prediction == "v":
        return jnp.sqrt(1 - ab) * x_t + jnp.sqrt(ab) * out
    raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")


def diffusion_loss(net_fn, schedule: Schedule, x0, key, mask=None, prediction: str = "eps"):
    """Mean squared error of the ``eps`` (or ``v``) prediction at uniformly drawn ``t``.

    Args:
      net_fn: ``(x_t [B, *S, C], t [B]) -> [B, *S, C]``.
      schedule: the noise schedule.
      x0: clean (scaled) maps ``[B, *S, C]``.
      key: PRNG key.
      mask: optional ``[B, *S]``: the loss is averaged over masked voxels only.
      prediction: ``"eps"`` or ``"v"``.
    """
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(kn, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    out = net_fn(x_t, t)
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        ab = _bcast(schedule.alpha_bars[t], x0)
        target = jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0
    else:
        raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")
    err = (out - target) ** 2
    if mask is None:
        return jnp.mean(err)
    m = jnp.broadcast_to(mask[..., None].astype(err.dtype), err.shape)
    return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0)
