"""Acquisition simulation: weighted images of a subject for any Protocol, with realistic artefacts.

Pipeline per subject (all optional but the signal equation):

1. transmit field ``B1(x)`` (smooth, ~1): inversion efficiency ``k = -cos(pi B1)`` for IR/FLAIR
   (a 180 degree pulse scaled by B1) and the actual flip angle for SPGR;
2. noise-free images ``qmri_jax.physics.simulate(maps, protocol)`` ``[X, Y, Z, N]``;
3. receive field (smooth multiplicative coil sensitivity, the same for every image);
4. thick slices: the signal averaged over ``slice_thickness_vox`` voxels through-plane (axis 2);
5. complex Gaussian noise of std ``sigma = 1 / snr`` per channel and magnitude output (Rician).
   SNR is relative to a fully relaxed PD = 1 signal (CSF-like), so WM at long TR has SNR ~0.7 snr;
6. intensity normalisation: ``"rescale"`` each image to [0.01, 1] (min-max, over the volume),
   ``"p95"`` the whole series divided by one in-brain 95th percentile, ``"p95_slice"`` each image
   of each slice by its own in-brain 95th percentile (Qiu et al.), or ``"none"``.

Thick slices average the (magnitude for IR kinds) noise-free images, an approximation near an IR null.
Spin-echo images assume ideal 90/180 degree pulses (B1 enters them only through the receive field).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from qmri_jax.physics.protocol import Protocol, simulate

__all__ = ["AcquisitionConfig", "acquire", "normalise_images", "saturate", "saturation_gain",
           "invalid_samples", "smooth_bias_field", "NORMALISATIONS"]

NORMALISATIONS = ("rescale", "p95", "p95_slice", "none")


@dataclasses.dataclass(frozen=True)
class AcquisitionConfig:
    """How images are acquired.

    Attributes:
      snr: signal-to-noise ratio of a fully relaxed PD = 1 signal (``sigma = 1/snr``); ``inf`` or
        0 means noise-free.
      receive_bias: std of the log receive field (e.g. 0.1 for ~+-20% shading); 0 disables.
      transmit_bias: std of the log B1 field (e.g. 0.05); 0 disables.
      k_spread: per-subject factor on the inversion efficiency, uniform in ``[1 - s, 1 + s]`` and
        not clipped at 1: the *apparent* efficiency of real IR-FSE data, which the IR model fits
        above 1 for short T1 (NIST phantom set A: 1.03-1.10 below 350 ms); 0 disables.
      bias_smooth_mm: smoothness (Gaussian std, mm) of both fields.
      slice_thickness_vox: through-plane averaging width in voxels (1 = none).
      normalisation: one of :data:`NORMALISATIONS`.
    """

    snr: float = float("inf")
    receive_bias: float = 0.0
    transmit_bias: float = 0.0
    k_spread: float = 0.0
    bias_smooth_mm: float = 40.0
    slice_thickness_vox: int = 1
    normalisation: str = "none"

    def __post_init__(self):
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation={self.normalisation!r}: expected one of "
                             f"{NORMALISATIONS}")
        if self.slice_thickness_vox < 1:
            raise ValueError(f"slice_thickness_vox={self.slice_thickness_vox}: expected >= 1")
        if not 0.0 <= self.k_spread < 1.0:
            raise ValueError(f"k_spread={self.k_spread}: expected 0 <= k_spread < 1")
        if not self.snr >= 0:
            raise ValueError(f"snr={self.snr}: expected >= 0 (0 or inf: noise-free)")


def smooth_bias_field(rng: np.random.Generator, shape, voxel_mm: float, log_std: float,
                      smooth_mm: float = 40.0) -> np.ndarray:
    """``exp(log_std * f)`` with ``f`` a smooth zero-mean unit-std random field ``[X, Y, Z]``."""
    if log_std == 0:
        return np.ones(shape, np.float32)
    coarse = max(1, int(smooth_mm / voxel_mm / 3))
    small = tuple(int(np.ceil(s / coarse)) + 1 for s in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(small), smooth_mm / voxel_mm / coarse,
                                mode="nearest")
    f = ndimage.zoom(f, coarse, order=1)[tuple(slice(0, s) for s in shape)]
    f = (f - f.mean()) / max(float(f.std()), 1e-9)
    return np.exp(log_std * f).astype(np.float32)


def normalise_images(images: np.ndarray, brain: np.ndarray, method: str) -> np.ndarray:
    """Intensity normalisation over all spatial axes.

    Args:
      images: ``[..., N]``.
      brain: ``[...]`` bool mask (used by ``"p95"``).
      method: ``"rescale"``: each image min-max to [0.01, 1] on its own (the convention for
        separately acquired contrasts); ``"p95"``: the whole series divided by ONE number, the
        in-brain 95th percentile of the voxelwise series maximum, so the ratios between the
        images (which carry T1 in an inversion-time series) are kept while the scanner's arbitrary
        scale cancels; ``"p95_slice"`` (``images [X, Y, Z, N]``, slices along Z): each image of
        each slice divided by its own in-brain 95th percentile, as Qiu et al. normalise their
        inputs (a slice with fewer than 10 brain voxels takes its image's percentile over the whole
        brain); ``"none"``.
    """
    if method == "none":
        return images
    axes = tuple(range(images.ndim - 1))
    if method == "rescale":
        lo = images.min(axis=axes, keepdims=True)
        hi = images.max(axis=axes, keepdims=True)
        return (0.01 + 0.99 * (images - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)
    if method == "p95":
        if not brain.any():
            raise ValueError("normalisation 'p95' needs a non-empty brain mask")
        p95 = np.percentile(np.max(images[brain], axis=-1), 95)
        return (images / max(float(p95), 1e-12)).astype(np.float32)
    if method == "p95_slice":
        if images.ndim != 4 or brain.shape != images.shape[:3]:
            raise ValueError(f"normalisation 'p95_slice' needs images [X, Y, Z, N] and a brain mask "
                             f"[X, Y, Z]; got {images.shape} and {brain.shape}")
        if not brain.any():
            raise ValueError("normalisation 'p95_slice' needs a non-empty brain mask")
        whole = np.percentile(images[brain], 95, axis=0)  # [N]
        scale = np.empty(images.shape[2:], np.float64)  # [Z, N]
        for z in range(images.shape[2]):
            inside = brain[:, :, z]
            scale[z] = np.percentile(images[:, :, z][inside], 95, axis=0) if inside.sum() >= 10 \
                else whole
        return (images / np.maximum(scale, 1e-12)).astype(np.float32)
    raise ValueError(f"normalisation={method!r}: expected one of {NORMALISATIONS}")


def saturate(images, level):
    """A ``"p95"``-normalised series as it would look had the scanner clipped it at ``level``
    (in units of the unclipped in-brain 95th percentile; real DICOM is often 12-bit and clips
    bright voxels at 4095, as in the NIST phantom scans): ``min(x, level) / min(level, 1)``.

    After clipping, ``normalise_images(..., "p95")`` divides by ``level`` when at least 5% of the
    in-brain series maxima exceed it (``level < 1``) and by the unclipped value (1) otherwise.
    ``level`` broadcasts against ``images`` (e.g. ``[B, 1, 1, 1]``); returns a JAX array.
    """
    return jnp.minimum(images, level) / jnp.minimum(level, 1.0)


def saturation_gain(level):
    """The factor :func:`saturate` scales a series (and with it its noise SD) by at ``level``:
    ``1 / min(level, 1)``."""
    return 1.0 / jnp.minimum(level, 1.0)


def invalid_samples(key, images, saturation: float = 0.0, saturation_range=(0.5, 1.5),
                    missing: float = 0.0, missing_rate: float = 0.1, return_scale: bool = False):
    """Training augmentation for models that take a per-sample validity mask: ``images
    [B, ..., N]`` (``"p95"``-normalised) with clipped and missing samples, in the form the learned
    paths take them (NaN; :func:`qmri_jax.diffusion.conditioning.mark_invalid`).

    On a ``saturation`` fraction of the batch items the series is clipped at a level drawn
    uniformly in ``saturation_range`` (:func:`saturate`, which renormalises as ``"p95"`` does on a
    clipped scan) and the samples at the level become NaN; on a ``missing`` fraction each sample
    is absent (NaN) with probability ``missing_rate``. ``key``: a JAX key; returns a JAX array,
    and with ``return_scale`` also the factor ``[B, 1, ..., 1]`` each item was renormalised by
    (``1 / min(level, 1)`` where clipped, else 1), by which its noise SD grew too."""
    k_on, k_level, k_miss, k_rate = jax.random.split(key, 4)
    shape = (images.shape[0],) + (1,) * (images.ndim - 1)
    out = images
    scale = jnp.ones(shape, images.dtype)
    if saturation > 0:
        level = jax.random.uniform(k_level, shape, minval=saturation_range[0],
                                   maxval=saturation_range[1])
        on = jax.random.bernoulli(k_on, saturation, shape)
        clipped = on & (images >= level)
        out = jnp.where(on, saturate(images, level), images)
        out = jnp.where(clipped, jnp.nan, out)
        scale = jnp.where(on, saturation_gain(level), 1.0).astype(images.dtype)
    if missing > 0:
        on = jax.random.bernoulli(k_miss, missing, shape)
        gone = on & jax.random.bernoulli(k_rate, missing_rate, images.shape)
        out = jnp.where(gone, jnp.nan, out)
    return (out, scale) if return_scale else out


def acquire(rng: np.random.Generator, maps: dict, protocol: Protocol, brain: np.ndarray,
            config: AcquisitionConfig = AcquisitionConfig(), voxel_mm: float = 1.0):
    """Weighted images of a subject.

    Args:
      rng: numpy generator (fields and noise).
      maps: ``{"T1": ms, "T2": ms, "PD": a.u.}`` each ``[X, Y, Z]`` (or ``[X, Y, 1]``).
      protocol: the :class:`~qmri_jax.physics.protocol.Protocol`, ``N`` images.
      brain: ``[X, Y, Z]`` bool (normalisation reference).
      config: :class:`AcquisitionConfig`.
      voxel_mm: voxel size (for the bias-field smoothness).

    Returns:
      ``(images [X, Y, Z, N] float32, fields)`` with ``fields = {"k": inversion efficiency,
      "B1": transmit scale, "receive": receive field}``, each ``[X, Y, Z]``.
    """
    shape = np.shape(maps["T1"])
    b1 = smooth_bias_field(rng, shape, voxel_mm, config.transmit_bias, config.bias_smooth_mm)
    k = np.clip(-np.cos(np.pi * b1), 0.0, 1.0).astype(np.float32)
    if config.k_spread > 0:
        k = (k * rng.uniform(1.0 - config.k_spread, 1.0 + config.k_spread)).astype(np.float32)
    safe = {
        "T1": np.where(maps["T1"] > 0, maps["T1"], 1.0),
        "T2": np.where(maps["T2"] > 0, maps["T2"], 1.0),
        "PD": maps["PD"],
        "k": k,
        "B1": b1,
    }
    images = np.asarray(simulate(safe, protocol), dtype=np.float32)
    receive = smooth_bias_field(rng, shape, voxel_mm, config.receive_bias, config.bias_smooth_mm)
    images = images * receive[..., None]
    if config.slice_thickness_vox > 1:
        images = ndimage.uniform_filter1d(images, config.slice_thickness_vox, axis=2,
                                          mode="nearest")
    if np.isfinite(config.snr) and config.snr > 0:
        sigma = 1.0 / config.snr
        re = images + sigma * rng.standard_normal(images.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(images.shape, dtype=np.float32)
        images = np.sqrt(re * re + im * im)
    images = normalise_images(images.astype(np.float32), brain, config.normalisation)
    return images.astype(np.float32), {"k": k, "B1": b1, "receive": receive}
