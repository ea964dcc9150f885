"""Noise schedules of the discrete diffusion process ``q(x_t | x_0) = N(sqrt(abar_t) x_0,
(1 - abar_t) I)``, ``t = 0 .. T-1``.

* linear: ``beta_t`` from ``beta_start`` to ``beta_end`` (Ho et al., NeurIPS 2020: 1e-4 .. 0.02,
  T = 1000);
* cosine: ``abar_t = f(t) / f(0)``, ``f(t) = cos^2((t/T + s) / (1 + s) pi/2)``, betas clipped at
  0.999 (Nichol & Dhariwal, ICML 2021).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Schedule", "linear_schedule", "cosine_schedule", "get_schedule"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """``betas``, ``alphas = 1 - betas`` and ``alpha_bars = cumprod(alphas)``, each ``[T]``."""

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        betas = np.asarray(betas, np.float64)
        alphas = 1.0 - betas
        return cls(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas, jnp.float32),
                   jnp.asarray(np.cumprod(alphas), jnp.float32))


def linear_schedule(num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Schedule:
    return Schedule.from_betas(np.linspace(beta_start, beta_end, num_steps))


def cosine_schedule(num_steps: int = 1000, s: float = 0.008) -> Schedule:
    t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    betas = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    return Schedule.from_betas(betas)


def get_schedule(name: str, num_steps: int) -> Schedule:
    if name == "linear":
        return linear_schedule(num_steps)
    if name == "cosine":
        return cosine_schedule(num_steps)
    raise ValueError(f"schedule {name!r}: expected 'linear' or 'cosine'")
