"""Per-voxel training batches for a per-voxel DDPM, as pure ``(batch, key) -> batch`` operations.

A batch is ``{"images" [B, *S, N], "targets" [B, *S, C] (physical units), "mask" [B, *S]}``,
optionally with ``"sigma" [B, *S]``, each voxel's noise SD, which the draw and the re-simulation
carry along.
:func:`draw_voxels` turns it into a batch of ``num`` voxels ``[num, 1, ...]`` (each is a 1-voxel
"image", so the same network and loss apply), drawn as the data has them or ~uniformly over log T1
(:func:`flat_t1_weights`); :func:`resimulate_voxels` redraws T1 and k of a fraction of them from
continuous ranges and simulates their series again with the voxelwise IR model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.fitting import fit_signals, get_model
from qmri_jax.physics.units import to_unit_range

__all__ = ["VOXEL_PRIORS", "flat_t1_weights", "draw_voxels", "resimulate_voxels"]

VOXEL_PRIORS = ("data", "flat_T1")  # how draw_voxels draws
FLAT_T1_BINS = 24  # log-T1 bins over SCALING["T1"] (a factor of ~1.3 each)
FLAT_T1_MIN_COUNT = 8  # a bin with fewer brain voxels is weighted as if it had this many
_FIT_MODEL, _FIT_ITERATIONS = "ir", 5  # the IR model and fit of the re-simulation


def flat_t1_weights(t1_scaled, brain, background=None):
    """Draw probabilities ``[V]`` for voxels with scaled T1 ``[V]`` (in [-1, 1]) and a brain mask
    ``[V]``: each brain voxel is weighted by 1 / (number of brain voxels in its log-T1 bin), so
    the draw is ~uniform in log T1 over the range the batch covers, and the background voxels
    share ``background`` of the draw (``None``: their share of the batch). Trained on such draws,
    a per-voxel DDPM's posterior mean shrinks toward a flat log-T1 prior instead of toward the
    training anatomy's T1 histogram (white and grey matter)."""
    b = jnp.clip(((t1_scaled + 1.0) / 2.0 * FLAT_T1_BINS).astype(jnp.int32), 0,
                 FLAT_T1_BINS - 1)
    counts = jax.ops.segment_sum(brain.astype(jnp.float32), b, FLAT_T1_BINS)
    w = jnp.where(brain, 1.0 / jnp.maximum(counts[b], FLAT_T1_MIN_COUNT), 0.0)
    n_brain, n_bg = jnp.sum(brain), jnp.sum(~brain)
    if background is None:  # brain total: its count; each background voxel: 1
        share_brain, share_bg = n_brain, (~brain).astype(jnp.float32)
    else:
        share_brain = 1.0 - background
        share_bg = jnp.where(brain, 0.0, background / jnp.maximum(n_bg, 1))
    w = w * share_brain / jnp.maximum(jnp.sum(w), 1e-12) + share_bg
    return w / jnp.sum(w)


def draw_voxels(batch: dict, key, num: int, names, prior: str = "data",
                background: float | None = None) -> dict:
    """``num`` voxels of ``batch`` as a batch ``[num, 1, ...]``: without replacement as the data
    has them (``prior="data"``), or with replacement weighted by :func:`flat_t1_weights`
    (``"flat_T1"``; ``background``: the background voxels' share)."""
    images, targets, mask = batch["images"], batch["targets"], batch["mask"]
    total = int(np.prod(mask.shape))
    if num > total:
        raise ValueError(f"config.ddpm.voxel_batch={num}: the batch has only {total} voxels")
    if prior == "flat_T1":
        i = list(names).index("T1")
        t1 = jnp.where(mask > 0, to_unit_range(targets[..., i], "T1"), -1.0).reshape(total)
        p = flat_t1_weights(t1, mask.reshape(total) > 0, background)
        idx = jax.random.choice(key, total, (num,), replace=True, p=p)
    elif prior == "data":
        idx = jax.random.choice(key, total, (num,), replace=False)
    else:
        raise ValueError(f"config.ddpm.voxel_prior={prior!r}: expected one of {VOXEL_PRIORS}")
    out = {"images": images.reshape(total, -1)[idx][:, None],
           "targets": targets.reshape(total, -1)[idx][:, None],
           "mask": mask.reshape(total)[idx][:, None]}
    if "sigma" in batch:
        out["sigma"] = jnp.broadcast_to(batch["sigma"], mask.shape).reshape(total)[idx][:, None]
    return out


def resimulate_voxels(batch: dict, key, names, protocol, fraction: float, t1_range, k_range,
                      snr_range) -> dict:
    """A continuous (T1, k) prior for a voxel batch ``[V, 1, ...]`` (:func:`draw_voxels`): on a
    ``fraction`` of its brain voxels T1 is redrawn log-uniform in ``t1_range`` (ms) and k uniform
    in ``k_range``, and the series is simulated again with the voxelwise IR model at the voxel's
    own fitted amplitude (so its PD target still goes with it), with Rician noise of std
    amplitude / SNR, SNR log-uniform in ``snr_range``. Adds ``"redrawn" [V, 1]``, and where the
    batch has ``"sigma"`` sets it to that SD on the redrawn voxels.

    A synthetic training set's T1 values are few and clumped (each geometric subject's ellipsoid
    has one T1), and a per-voxel DDPM trained on them snaps a curve between two clusters toward
    one of them; the redrawn voxels fill the gaps, and their SNR range covers scans less noisy
    than the training data."""
    images, targets = batch["images"][:, 0], batch["targets"][:, 0]
    brain = batch["mask"][:, 0] > 0
    k_on, k_t1, k_k, k_snr, k_n1, k_n2 = jax.random.split(key, 6)
    n = images.shape[0]
    on = brain & jax.random.bernoulli(k_on, fraction, (n,))
    t1 = jnp.exp(jax.random.uniform(k_t1, (n,), minval=np.log(t1_range[0]),
                                    maxval=np.log(t1_range[1])))
    k = jax.random.uniform(k_k, (n,), minval=k_range[0], maxval=k_range[1])
    snr = jnp.exp(jax.random.uniform(k_snr, (n,), minval=jnp.log(snr_range[0]),
                                     maxval=jnp.log(snr_range[1])))
    model = get_model(_FIT_MODEL)
    amp = fit_signals(model, protocol, images, max_iter=_FIT_ITERATIONS)["PD"]
    clean = model.signal({"PD": amp, "T1": t1, "k": k}, protocol)
    sigma = amp[:, None] / snr[:, None]
    noisy = jnp.sqrt((clean + sigma * jax.random.normal(k_n1, clean.shape)) ** 2
                     + (sigma * jax.random.normal(k_n2, clean.shape)) ** 2)
    new = jnp.stack([t1 if nm == "T1" else k if nm == "k" else targets[:, i]
                     for i, nm in enumerate(names)], axis=-1)
    out = {**batch,
           "images": jnp.where(on[:, None], noisy.astype(images.dtype), images)[:, None],
           "targets": jnp.where(on[:, None], new.astype(targets.dtype), targets)[:, None],
           "redrawn": on[:, None]}
    if "sigma" in batch:
        out["sigma"] = jnp.where(on, sigma[:, 0], batch["sigma"][:, 0])[:, None]
    return out

