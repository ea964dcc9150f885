"""Samplers as pure ``lax.scan`` loops (unwrapped: the caller composes ``jit``/``vmap``).

* :func:`ddpm_sample`: ancestral sampling over all ``T`` steps (Ho et al. 2020, Alg. 2) with
  ``sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (the posterior variance);
* :func:`ddim_sample`: DDIM over ``num_steps`` evenly spaced steps with ``eta`` (Song et al., ICLR
  2021): ``eta = 0`` deterministic, ``eta = 1`` DDPM-like;
* :func:`posterior_summary`: ``K`` draws for the same condition as one ``vmap`` over keys (the
  network sees a batch of ``K x B``), returning mean, std and optionally the samples.

``model_fn(x_t [B, *S, C], t [B]) -> [B, *S, C]`` is the network output (``eps`` or ``v``) with
the condition already bound.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.diffusion.process import predict_x0
from qmri_jax.diffusion.schedules import Schedule

__all__ = ["ddpm_sample", "ddim_sample", "posterior_summary"]


def ddpm_sample(model_fn: Callable, schedule: Schedule, shape, key, prediction: str = "eps",
                clip: float | None = 1.0):
    """Ancestral DDPM sample of ``shape`` (all ``T`` network calls)."""
    key, k0 = jax.random.split(key)
    x = jax.random.normal(k0, shape)
    b = shape[0]
    abar_prev = jnp.concatenate([jnp.ones((1,)), schedule.alpha_bars[:-1]])

    def step(x, inputs):
        t, k = inputs
        tt = jnp.full((b,), t, jnp.int32)
        out = model_fn(x, tt)
        x0 = predict_x0(schedule, x, tt, out, prediction)
        if clip is not None:
            x0 = jnp.clip(x0, -clip, clip)
        ab, abp, beta, alpha = (schedule.alpha_bars[t], abar_prev[t], schedule.betas[t],
                                schedule.alphas[t])
        # posterior mean of q(x_{t-1} | x_t, x_0)
        mean = (jnp.sqrt(abp) * beta / (1 - ab)) * x0 + (jnp.sqrt(alpha) * (1 - abp) / (1 - ab)) * x
        var = beta * (1 - abp) / (1 - ab)
        noise = jax.random.normal(k, x.shape)
        x = mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * noise
        return x, None

    ts = jnp.arange(schedule.num_steps - 1, -1, -1)
    keys = jax.random.split(key, schedule.num_steps)
    x, _ = jax.lax.scan(step, x, (ts, keys))
    return x


def ddim_timesteps(T: int, num_steps: int) -> np.ndarray:
    """The ``num_steps`` visited steps, uniformly spaced and descending from ``T - 1`` to 0."""
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps={num_steps}: expected 1..{T}")
    ts = np.round(np.linspace(0.0, 1.0, num_steps) * (T - 1)).astype(int)
    return ts[::-1].copy()


def ddim_sample(model_fn: Callable, schedule: Schedule, shape, key, num_steps: int = 50,
                eta: float = 0.0, prediction: str = "eps", clip: float | None = 1.0):
    """DDIM sample with ``num_steps`` network calls at :func:`ddim_timesteps`."""
    T = schedule.num_steps
    ts = jnp.asarray(ddim_timesteps(T, num_steps), jnp.int32)
    ts_prev = jnp.concatenate([ts[1:], jnp.array([-1], jnp.int32)])
    key, k0 = jax.random.split(key)
    x = jax.random.normal(k0, shape)
    b = shape[0]

    def step(x, inputs):
        t, tp, k = inputs
        tt = jnp.full((b,), t, jnp.int32)
        out = model_fn(x, tt)
        x0 = predict_x0(schedule, x, tt, out, prediction)
        if clip is not None:
            x0 = jnp.clip(x0, -clip, clip)
        ab = schedule.alpha_bars[t]
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)  # consistent with the clipped x0
        abp = jnp.where(tp >= 0, schedule.alpha_bars[jnp.maximum(tp, 0)], 1.0)
        sigma = eta * jnp.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
        noise = jax.random.normal(k, x.shape)
        x = (jnp.sqrt(abp) * x0 + jnp.sqrt(jnp.maximum(1 - abp - sigma**2, 0.0)) * eps
             + sigma * noise)
        return x, None

    keys = jax.random.split(key, num_steps)
    x, _ = jax.lax.scan(step, x, (ts, ts_prev, keys))
    return x


def posterior_summary(sample_fn: Callable, key, num_samples: int, return_samples: bool = False):
    """Mean and std over ``num_samples`` draws of ``sample_fn(key) -> [B, *S, C]``.

    The draws are one ``jax.vmap`` over split keys: the network runs on a ``K x B`` batch.
    """
    keys = jax.random.split(key, num_samples)
    samples = jax.vmap(sample_fn)(keys)  # [K, B, *S, C]
    out = {"mean": samples.mean(axis=0),
           "std": samples.std(axis=0, ddof=1 if num_samples > 1 else 0)}  # Bessel-corrected
    if return_samples:
        out["samples"] = samples
    return out
