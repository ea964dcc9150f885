"""Thick slices from thin ones: the slice sensitivity of a 2D spin-echo acquisition and the strided
through-plane kernel that turns a high-resolution volume into thick slices.

A thick slice ``j`` of a 2D acquisition with ``factor`` times the thin-slice thickness is

    L[..., j] = sum_t kernel[t] * H[..., factor * j + offset + t],

a strided 1D convolution along the slice axis (the last spatial axis, ``z``). With a box kernel of
``factor`` taps and ``offset = 0`` this is block averaging; a real slice is not a box: its
sensitivity falls off smoothly and reaches into the neighbouring slices.
:func:`spin_echo_slice_kernel` samples the sensitivity of a spin-echo slice (excitation
``sin a_e(z)`` times refocusing ``sin^2(a_r(z) / 2)``, the flip angles from the Bloch simulation of
Hann-windowed sinc pulses in :func:`qmri_jax.physics.slice_profile.pulse_profile`) at the thin
slices' centres. Indices outside ``[0, Z)`` are mirrored (half-sample symmetric, ``-1 -> 0``,
``Z -> Z - 1``), as a scanner's volume continues beyond any crop.

All functions are ``jit``/``vmap``/``grad`` safe in ``x`` and ``kernel``; ``offset`` may be a traced
integer (a random per-example shift).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qmri_jax.physics.slice_profile import pulse_profile

__all__ = ["downsample_slices", "slice_taps", "spin_echo_slice_kernel", "valid_slices"]


def slice_taps(num_slices: int, num_thin: int, num_taps: int, factor: int, offset=0):
    """Thin-slice indices ``[num_slices, num_taps]`` that thick slice ``j`` averages,
    ``factor * j + offset + t``, mirrored into ``[0, num_thin)``."""
    idx = factor * jnp.arange(num_slices)[:, None] + offset + jnp.arange(num_taps)[None, :]
    period = 2 * num_thin
    idx = jnp.mod(idx, period)
    return jnp.where(idx < num_thin, idx, period - 1 - idx)


def downsample_slices(x, kernel, factor: int, offset=0, num_slices: int | None = None):
    """Thick slices of ``x [..., Z, C]`` along ``Z`` (the axis before the channels).

    Args:
      x: ``[..., Z, C]`` (e.g. ``[B, X, Y, Z, C]``).
      kernel: ``[K]`` weights (not normalised here).
      factor: the thick-slice thickness in thin slices (the stride).
      offset: the first tap of slice 0 (int, or a traced int).
      num_slices: thick slices out (default ``Z // factor``).

    Returns:
      ``[..., num_slices, C]``.
    """
    kernel = jnp.asarray(kernel)
    z = x.shape[-2]
    n = z // factor if num_slices is None else int(num_slices)
    idx = slice_taps(n, z, kernel.shape[0], factor, offset)  # [n, K]
    taps = jnp.take(x, idx.reshape(-1), axis=-2)  # [..., n * K, C]
    taps = taps.reshape(*x.shape[:-2], n, kernel.shape[0], x.shape[-1])
    return jnp.einsum("...nkc,k->...nc", taps, kernel.astype(x.dtype))


def valid_slices(num_slices: int, num_thin: int, num_taps: int, factor: int, offset=0):
    """``[num_slices]`` bool: thick slices whose taps all lie inside ``[0, num_thin)`` (no
    mirrored tap), e.g. the slices of a patch whose thick-slice target is fully explained by it."""
    start = factor * jnp.arange(num_slices) + offset
    return (start >= 0) & (start + num_taps <= num_thin)


def spin_echo_slice_kernel(factor: int, time_bandwidth: float = 3.0, refocus_width: float = 1.2,
                           reach: float = 1.0) -> tuple[np.ndarray, int]:
    """The sensitivity of a 2D spin-echo slice ``factor`` thin slices thick, sampled at the thin
    slices' centres: ``(kernel [K], offset)`` for :func:`downsample_slices` (sums to 1).

    The slice centre is at thin-slice position ``factor * j + (factor - 1) / 2``; taps reach
    ``reach`` slice thicknesses beyond the nominal slice on each side (the profile's tails).

    Args:
      factor: thick / thin slice thickness (>= 1).
      time_bandwidth: time-bandwidth product of both (Hann-windowed sinc) pulses.
      refocus_width: refocusing slice thickness relative to the excitation slice.
      reach: tails included beyond the nominal slice, in slice thicknesses.
    """
    if factor < 1:
        raise ValueError(f"spin_echo_slice_kernel: factor={factor}, expected >= 1")
    extra = int(np.ceil(reach * factor))
    pos = np.arange(-extra, factor + extra)  # thin-slice positions relative to factor * j
    u = (pos - (factor - 1) / 2.0) / factor  # in slice thicknesses from the centre
    a_e = np.deg2rad(pulse_profile(time_bandwidth, 90.0, u))
    a_r = np.deg2rad(pulse_profile(time_bandwidth, 180.0, u / refocus_width))
    w = np.sin(a_e) * np.sin(a_r / 2) ** 2
    return (w / w.sum()).astype(np.float32), -extra

