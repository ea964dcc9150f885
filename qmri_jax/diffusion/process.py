"""Forward process and training objectives.

``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the network predicts ``eps`` (Ho et al. 2020),
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho, ICLR 2022) or ``x_0`` itself. Each
objective is the plain MSE of its own target, so they weight the noise levels differently: in
``x_0`` units the eps loss weighs step ``t`` by SNR(t), the v loss by SNR(t) + 1 and the x0 loss
uniformly. Conditional mapping, where the condition nearly determines ``x_0``, learns fastest
with x0 (the high-noise steps are a plain regression from the condition). Shapes: ``x_0``
``[B, *S, C]``, ``t`` ``[B]`` int.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qmri_jax.diffusion.schedules import Schedule
from qmri_jax.losses import masked_mean

__all__ = ["q_sample", "predict_x0", "predict_eps", "diffusion_loss", "PREDICTIONS"]

PREDICTIONS = ("eps", "v", "x0")


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
    if prediction == "x0":
        return out
    raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")


def predict_eps(schedule: Schedule, x_t, t, out, prediction: str = "eps"):
    """``eps`` implied by the network output."""
    if prediction == "eps":
        return out
    ab = _bcast(schedule.alpha_bars[t], x_t)
    if prediction == "v":
        return jnp.sqrt(1 - ab) * x_t + jnp.sqrt(ab) * out
    if prediction == "x0":
        return (x_t - jnp.sqrt(ab) * out) / jnp.sqrt(1 - ab)
    raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")


def diffusion_loss(net_fn, schedule: Schedule, x0, key, mask=None, prediction: str = "eps",
                   snr_cap: float | None = None):
    """Mean squared error of the ``eps`` (``v``, ``x0``) prediction at uniformly drawn ``t``.

    With ``snr_cap = g`` the loss is instead the error of the implied ``x_0`` weighted by
    ``min(1 + SNR(t), g)``, whatever the parameterisation: ``g = 1`` is the x0 loss, ``g -> inf``
    the v loss. A cap of a few keeps the high-noise regression steps at full weight while the
    low-noise (denoising) steps still count ``g`` times more, so the network both learns the
    conditioning fast and keeps using ``x_t`` (which is what spreads the posterior samples).

    Args:
      net_fn: ``(x_t [B, *S, C], t [B]) -> [B, *S, C]``.
      schedule: the noise schedule.
      x0: clean (scaled) maps ``[B, *S, C]``.
      key: PRNG key.
      mask: optional ``[B, *S]``: the loss is averaged over masked voxels only; or
        ``[B, *S, C]``: a weight per voxel and map (0 leaves that map of that voxel out).
      prediction: ``"eps"``, ``"v"`` or ``"x0"``.
      snr_cap: None (plain MSE of the parameterisation's target) or ``g >= 1``.
    """
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, schedule.num_steps)
    noise = jax.random.normal(kn, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    out = net_fn(x_t, t)
    if snr_cap is not None:
        if snr_cap < 1:
            raise ValueError(f"snr_cap={snr_cap}: expected >= 1 (1 is the x0 loss)")
        ab = _bcast(schedule.alpha_bars[t], x0)
        weight = jnp.minimum(1 + ab / (1 - ab), snr_cap)
        err = weight * (predict_x0(schedule, x_t, t, out, prediction) - x0) ** 2
        return masked_mean(err, mask)
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        ab = _bcast(schedule.alpha_bars[t], x0)
        target = jnp.sqrt(ab) * noise - jnp.sqrt(1 - ab) * x0
    elif prediction == "x0":
        target = x0
    else:
        raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")
    return masked_mean((out - target) ** 2, mask)
