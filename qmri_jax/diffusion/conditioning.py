"""What a conditional DDPM over qMRI maps is conditioned on, and the point a residual DDPM
diffuses around.

``"images"``: the normalised weighted series as it is. ``"fit"``: the series followed by each
voxel's least-squares fit of the ``ir`` model (PD, T1, k; dictionary search plus
:data:`FIT_ITERATIONS` Levenberg-Marquardt steps), scaled like the targets
(:data:`qmri_jax.physics.units.SCALING`) and held within +-2. The fitted channels depend on the
voxel's own series only, never on the image around it, so a network can lean on them where the
picture is unlike its training data (a phantom's spheres instead of a brain).

Samples that are not measurements (clipped at the scanner's stored maximum, or absent) are NaN in
the images a model is given (:func:`mark_invalid`). With ``validity=True`` the condition carries
the per-sample validity mask: the invalid samples are zeroed, the mask follows the images as N
more channels, and the fit leaves them out, as the voxelwise fit does
(``fit_images(..., valid=...)``). Without it a NaN reaches the network (a model trained without
the mask cannot tell a clipped sample from a measured one).

With a noise level ``sigma`` (the Rician noise SD in the normalised images' units, one per image
or per voxel) the condition carries :func:`noise_channel` of it before the fitted channels: a
posterior depends on the noise level, which a series of ten samples tells poorly, and a model
trained over a range of levels (the re-simulated voxels' SNR 20-1000 beside the data's) can only
guess it otherwise. :func:`slice_noise_sigma` measures it from a slice's background.

With both, :func:`fit_sd` gives the precision of the fitted channels (their Cramer-Rao bound at the
fit, on the scaled maps): the width a voxel's posterior has about the fit, by which a residual
DDPM can divide the residual (``config.ddpm.residual_crlb``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qmri_jax.fitting import fit_signals, get_model
from qmri_jax.fitting.crlb import fisher_variance
from qmri_jax.physics.units import from_unit_range, to_unit_range

__all__ = ["CONDITIONS", "FIT_MODEL", "FIT_CHANNELS", "FIT_ITERATIONS", "NOISE_REF",
           "condition_images", "condition_channels", "fit_base", "fit_sd", "mark_invalid",
           "split_invalid", "noise_channel", "slice_noise_sigma"]

CONDITIONS = ("images", "fit")
FIT_MODEL = "ir"  # the voxelwise model behind condition "fit": PD, T1, k
FIT_CHANNELS = ("PD", "T1", "k")  # their order after the images
FIT_ITERATIONS = 5  # Levenberg-Marquardt steps after the dictionary search
FIT_CLIP = 2.0  # fitted channels beyond +-2 (e.g. PD of noise-only voxels) are held there
NOISE_REF = 0.01  # noise_channel is log10(sigma / NOISE_REF): 0 at sigma = 0.01 (SNR ~100)


def noise_channel(sigma):
    """The condition channel of a noise SD ``sigma`` (normalised units, > 0):
    ``log10(sigma / NOISE_REF)``, -1 at SNR ~1000 and +1 at SNR ~10 of a unit signal."""
    return jnp.log10(jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-6) / NOISE_REF)


def slice_noise_sigma(images, mask):
    """Rician noise SD ``[B]`` of images ``[B, *S, N]`` from their background (``mask [B, *S]``
    == 0, all samples finite), where the magnitude is noise only: ``sqrt(mean(m^2) / 2)``
    (Rayleigh). Pure; a slice with no background gets NaN."""
    bg = (mask == 0)[..., None] & jnp.isfinite(images)
    axes = tuple(range(1, images.ndim))
    sq = jnp.sum(jnp.where(bg, images, 0.0) ** 2, axis=axes)
    return jnp.sqrt(sq / (2.0 * jnp.sum(bg, axis=axes)))


def mark_invalid(images, valid):
    """``images [..., N]`` with the samples where ``valid [..., N]`` (bool) is False set to NaN:
    the form in which the learned paths take clipped or missing samples."""
    return jnp.where(jnp.asarray(valid), images, jnp.nan)


def split_invalid(images):
    """``(images with NaN samples zeroed, valid mask [..., N] bool)`` of :func:`mark_invalid`'s
    form."""
    valid = jnp.isfinite(images)
    return jnp.where(valid, images, 0.0), valid


def condition_channels(kind: str, num_images: int, validity: bool = False,
                       noise: bool = False) -> int:
    """Channels of the condition of ``kind`` for ``num_images`` weighted images (``validity``:
    with the per-sample validity mask; ``noise``: with the noise channel)."""
    if kind not in CONDITIONS:
        raise ValueError(f"config.ddpm.condition={kind!r}: expected one of {CONDITIONS}")
    return (num_images * (2 if validity else 1) + int(noise)
            + (len(FIT_CHANNELS) if kind == "fit" else 0))


def condition_images(images, kind: str, protocol=None, validity: bool = False, sigma=None):
    """The network's condition from normalised images ``[..., N]`` (invalid samples NaN):
    ``[..., N]`` (``"images"``) or ``[..., N + 3]`` (``"fit"``; needs the acquisition
    ``protocol``), with N validity channels (1 = measured) after the images when ``validity``,
    then :func:`noise_channel` of ``sigma`` when given (a scalar, one per image ``[B]``, or
    ``images.shape[:-1]``)."""
    if kind not in CONDITIONS:
        raise ValueError(f"config.ddpm.condition={kind!r}: expected one of {CONDITIONS}")
    valid = None
    parts = [images]
    if validity:
        images, valid = split_invalid(images)
        parts = [images, valid.astype(images.dtype)]
    if sigma is not None:
        s = jnp.asarray(sigma, images.dtype)
        if s.ndim == 1 and images.ndim > 2:  # one per image
            s = s.reshape((-1,) + (1,) * (images.ndim - 2))
        s = jnp.broadcast_to(s, images.shape[:-1])
        parts.append(noise_channel(s)[..., None].astype(images.dtype))
    if kind == "fit":
        if protocol is None:
            raise ValueError("config.ddpm.condition='fit' needs the acquisition protocol")
        est = fit_signals(get_model(FIT_MODEL), protocol, images, valid=valid,
                          max_iter=FIT_ITERATIONS)
        chans = [jnp.clip(to_unit_range(est[n], n), -FIT_CLIP, FIT_CLIP) for n in FIT_CHANNELS]
        parts.append(jnp.stack(chans, axis=-1).astype(images.dtype))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def fit_base(condition, names):
    """The scaled maps ``[..., C]`` (``names`` order) that a ``"fit"`` condition carries in its
    last three channels, held within [-1, 1]: the point a residual DDPM diffuses around."""
    n_img = condition.shape[-1] - len(FIT_CHANNELS)
    return jnp.stack([jnp.clip(condition[..., n_img + FIT_CHANNELS.index(n)], -1.0, 1.0)
                      for n in names], axis=-1)


def fit_sd(condition, protocol, validity: bool):
    """The Gaussian Cramer-Rao SD ``[..., 3]`` (:data:`FIT_CHANNELS` order) of a ``"fit"``
    condition's fitted channels, on the scaled maps' [-1, 1] scale: the bound at the fit (held
    within [-1, 1]) for the noise SD of its :func:`noise_channel`, over the samples its validity
    channels mark measured (all when ``validity`` is False). NaN where the Fisher information is
    singular (e.g. a fit on the edge of the scaled range). The condition must carry the noise
    channel: ``condition.shape[-1] == len(protocol) * (1 + validity) + 1 + 3``."""
    n = len(protocol)
    if condition.shape[-1] != n * (2 if validity else 1) + 1 + len(FIT_CHANNELS):
        raise ValueError(f"fit_sd: a condition of {condition.shape[-1]} channels is not the "
                         f"images ({n}), {'validity, ' if validity else ''}noise and fit "
                         "channels of a 'fit' condition with a noise level")
    model = get_model(FIT_MODEL)
    flat = condition.reshape(-1, condition.shape[-1])
    w = flat[:, n:2 * n] if validity else jnp.ones((flat.shape[0], n), flat.dtype)
    sigma = NOISE_REF * 10.0 ** flat[:, -1 - len(FIT_CHANNELS)]
    fit = jnp.clip(flat[:, -len(FIT_CHANNELS):], -1.0, 1.0)

    def one(y, wv, s):
        def signal(u):
            return model.signal({c: from_unit_range(u[i], c) for i, c in enumerate(FIT_CHANNELS)},
                                protocol)
        return jnp.sqrt(fisher_variance(signal, y, wv, s))

    return jax.vmap(one)(fit, w, sigma).reshape(condition.shape[:-1] + (len(FIT_CHANNELS),))
