"""The qMRI Diffusor task: a conditional DDPM over quantitative maps, trained and evaluated by
:func:`qmri_jax.train.train_and_evaluate` (``config.task = "ddpm"``).

Maps are scaled into [-1, 1] per target (:data:`SCALING`: log for relaxation times so relative
errors weigh the same at 20 ms and 2000 ms, linear for PD and inversion efficiency), background
voxels to -1. The condition is the weighted images (normalised per volume by the in-brain 95th
percentile, so a scanner's arbitrary intensity scale cancels), concatenated to the noisy maps.
Evaluation draws ``num_samples`` posterior samples per slice (one ``vmap`` over keys) with DDIM or
DDPM, reports the voxelwise mean as the estimate and the std as the uncertainty, and writes
``metrics.json`` (the supervised schema plus ``uncertainty``), figures and NIfTI mean/std maps.

Calibration: a short run's posterior is often too narrow (draws that agree more than the estimate
agrees with the truth). Before the test split, ``ddpm.calibration_slices`` validation slices are
sampled the same way and one factor per map is fitted (sigma scaling, Laves et al., MICCAI 2020):
``scale = quantile_q(|err| / std) / 2`` so that ``mean +- 2 * scale * std`` covers the fraction
``q = ddpm.calibration_coverage`` of validation brain voxels. The test split's report gives the raw
posterior's coverage and Spearman correlation and the calibrated coverage (held-out: the factor
never sees the test split); the NIfTI maps include both std maps.
"""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.data.acquisition import saturate
from qmri_jax.diffusion import process, samplers, schedules
from qmri_jax.models.diffusion_unet import DiffusionUNet, VoxelDenoiser

__all__ = ["SCALING", "CONDITIONS", "RESIMULATE_PD", "VOXEL_PRIORS", "flat_t1_weights",
           "resimulate_voxels", "resimulate_blocks", "scale_maps", "unscale_maps",
           "condition_images", "fit_base", "DdpmTask"]

# target -> (kind, low, high): x in [low, high] maps to [-1, 1] (log or linear).
SCALING = {"T1": ("log", 10.0, 6000.0), "T2": ("log", 5.0, 3000.0), "PD": ("linear", 0.0, 1.5),
           "k": ("linear", 0.5, 1.25)}  # k > 1: apparent efficiency of real data (data.k_spread)


def _fwd(x, kind, lo, hi):
    if kind == "log":
        return 2 * (jnp.log(jnp.maximum(x, lo)) - np.log(lo)) / (np.log(hi) - np.log(lo)) - 1
    return 2 * (x - lo) / (hi - lo) - 1


def _inv(y, kind, lo, hi):
    y = jnp.clip(y, -1, 1)
    if kind == "log":
        return jnp.exp((y + 1) / 2 * (np.log(hi) - np.log(lo)) + np.log(lo))
    return (y + 1) / 2 * (hi - lo) + lo


CONDITIONS = ("images", "shape", "fit")
_SHAPE_FLOOR = 1e-3  # voxel maxima below this (normalised units) are divided by it instead
FIT_MODEL = "ir"  # the voxelwise model behind condition "fit": PD, T1, k
FIT_CHANNELS = ("PD", "T1", "k")  # their order after the images
FIT_ITERATIONS = 5  # Levenberg-Marquardt steps after the dictionary search
_FIT_CLIP = 2.0  # fitted channels beyond +-2 (e.g. PD of noise-only voxels) are held there


def condition_images(images, kind: str, protocol=None):
    """The network's condition from normalised images ``[..., N]``.

    ``"images"``: unchanged. ``"shape"``: ``[..., N + 1]``, each voxel's series divided by its own
    maximum over the N images (floored at 1e-3), then that maximum as the last channel. The first N
    channels do not change when the series is scaled, so T1 and k can be read from the shape of
    the signal curve; PD is carried by the last.

    ``"fit"``: ``[..., N + 3]``, the images followed by each voxel's least-squares fit of the
    ``ir`` model (:func:`qmri_jax.fitting.fit_signals`: dictionary search plus
    ``FIT_ITERATIONS`` Levenberg-Marquardt steps; needs ``protocol``), its PD, T1 and k scaled like
    the targets (:data:`SCALING`) and held within +-2. The fitted channels depend on each voxel's
    own series only, never on the image around it, so a network can lean on them where the
    picture is unlike its training data (a phantom's spheres instead of a brain).
    """
    if kind == "images":
        return images
    if kind == "shape":
        peak = jnp.max(images, axis=-1, keepdims=True)
        return jnp.concatenate([images / jnp.maximum(peak, _SHAPE_FLOOR), peak], axis=-1)
    if kind == "fit":
        from qmri_jax.fitting import fit_signals, get_model
        if protocol is None:
            raise ValueError("config.ddpm.condition='fit' needs the acquisition protocol")
        est = fit_signals(get_model(FIT_MODEL), protocol, images, max_iter=FIT_ITERATIONS)
        chans = [jnp.clip(_fwd(est[n], *SCALING[n]), -_FIT_CLIP, _FIT_CLIP)
                 for n in FIT_CHANNELS]
        return jnp.concatenate([images, jnp.stack(chans, axis=-1).astype(images.dtype)], axis=-1)
    raise ValueError(f"config.ddpm.condition={kind!r}: expected one of {CONDITIONS}")


def fit_base(condition, names):
    """The scaled maps ``[..., C]`` (``names`` order) that a ``"fit"`` condition carries in its
    last three channels, held within [-1, 1]: the point a residual DDPM (``ddpm.residual``)
    diffuses around."""
    n_img = condition.shape[-1] - len(FIT_CHANNELS)
    return jnp.stack([jnp.clip(condition[..., n_img + FIT_CHANNELS.index(n)], -1.0, 1.0)
                      for n in names], axis=-1)


RESIMULATE_PD = ("keep", "drop")  # ddpm.voxel_resimulate_pd: the PD loss of re-simulated voxels
VOXEL_PRIORS = ("data", "flat_T1")  # ddpm.voxel_prior: how ddpm.voxel_batch draws its voxels
FLAT_T1_BINS = 24  # log-T1 bins over SCALING["T1"] (a factor of ~1.3 each)
FLAT_T1_MIN_COUNT = 8  # a bin with fewer brain voxels is weighted as if it had this many


def flat_t1_weights(t1_scaled, brain, background=None):
    """Draw probabilities ``[V]`` for voxels with scaled T1 ``[V]`` (:func:`scale_maps`) and a
    brain mask ``[V]``: each brain voxel is weighted by 1 / (number of brain voxels in its log-T1
    bin), so the draw is ~uniform in log T1 over the range the batch covers, and the background
    voxels share ``background`` of the draw (``None``: their share of the batch). Trained on such
    draws, a per-voxel DDPM's posterior mean shrinks toward a flat log-T1 prior instead of toward
    the training anatomy's T1 histogram (white and grey matter), which pulls values it rarely saw
    (T1 < 200 ms, 1500-2000 ms) toward those tissues."""
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


def resimulate_voxels(key, images, targets, brain, names, protocol, fraction, t1_range, k_range,
                      snr_range):
    """Per-voxel training draws with a continuous (T1, k) prior: on a ``fraction`` of the brain
    voxels ``[V]`` of ``images [V, N]`` / physical ``targets [V, C]`` (``names`` order), T1 and k
    are redrawn (T1 log-uniform in ``t1_range`` ms, k uniform in ``k_range``) and the series is
    simulated again with the voxelwise IR model (:data:`FIT_MODEL`) at the voxel's own fitted
    amplitude (so the voxel's PD target still goes with it), with Rician noise of std
    amplitude / SNR, SNR log-uniform in ``snr_range``. Returns ``(images, targets, redrawn)``
    with ``redrawn [V]`` True where a voxel was simulated again.

    A synthetic training set's T1 values are few and clumped (each geometric subject's ellipsoid
    has one T1: 34 distinct values between 80 and 400 ms in the default data), and a per-voxel
    DDPM trained on them snaps a curve between two clusters toward one of them; the redrawn
    voxels fill the gaps, and their SNR range covers scans less noisy than the training data."""
    k_on, k_t1, k_k, k_snr, k_n1, k_n2 = jax.random.split(key, 6)
    n = images.shape[0]
    on = brain & jax.random.bernoulli(k_on, fraction, (n,))
    t1, k, snr = _draw_tissue((k_t1, k_k, k_snr), (n,), t1_range, k_range, snr_range)
    return _simulate_again((k_n1, k_n2), images, targets, on, t1, k, snr, names, protocol)


def resimulate_blocks(key, images, targets, brain, names, protocol, fraction, t1_range, k_range,
                      snr_range, block_sizes):
    """:func:`resimulate_voxels` for whole slices (a network with a spatial prior, the U-Net):
    each slice of ``images [B, H, W, N]`` / physical ``targets [B, H, W, C]`` / ``brain [B, H, W]``
    is cut into square blocks of a side drawn per slice from ``block_sizes`` (voxels), and on a
    ``fraction`` of the blocks every brain voxel gets the block's new T1 (log-uniform in
    ``t1_range``) and k (uniform in ``k_range``) and is simulated again at its own fitted
    amplitude, with Rician noise at the block's SNR (log-uniform in ``snr_range``). Returns
    ``(images, targets, redrawn [B, H, W])``.

    The redrawn regions are piecewise constant, like tissue, but their values and their
    placement owe nothing to the anatomy, so a network trained on them learns to read a region
    whose curves disagree with the anatomy around it from the curves (e.g. a phantom's spheres),
    and the blocks fill the gaps between the synthetic subjects' clumped T1 values."""
    b, h, w = images.shape[:3]
    sizes = tuple(int(s) for s in block_sizes)
    k_size, k_draw, k_noise = jax.random.split(key, 3)
    pick = jax.random.randint(k_size, (b,), 0, len(sizes))
    fields = jnp.zeros((4, b, h, w))  # per voxel: on-draw, T1, k, SNR of its block
    for j, (s, k_s) in enumerate(zip(sizes, jax.random.split(k_draw, len(sizes)))):
        k_on, *k_tissue = jax.random.split(k_s, 4)
        shape = (b, -(-h // s), -(-w // s))
        coarse = jnp.stack([jax.random.uniform(k_on, shape),
                            *_draw_tissue(k_tissue, shape, t1_range, k_range, snr_range)])
        fine = jnp.repeat(jnp.repeat(coarse, s, axis=2), s, axis=3)[:, :, :h, :w]
        fields = jnp.where((pick == j)[:, None, None], fine, fields)
    u, t1, k, snr = fields.reshape(4, b * h * w)
    new_images, new_targets, on = _simulate_again(
        jax.random.split(k_noise), images.reshape(b * h * w, -1), targets.reshape(b * h * w, -1),
        brain.reshape(-1) & (u < fraction), t1, k, snr, names, protocol)
    return (new_images.reshape(images.shape), new_targets.reshape(targets.shape),
            on.reshape(b, h, w))


def _draw_tissue(keys, shape, t1_range, k_range, snr_range):
    """T1 (log-uniform in ``t1_range``), k (uniform in ``k_range``) and SNR (log-uniform in
    ``snr_range``) of the given shape, one of the three ``keys`` each."""
    t1 = jnp.exp(jax.random.uniform(keys[0], shape, minval=np.log(t1_range[0]),
                                    maxval=np.log(t1_range[1])))
    k = jax.random.uniform(keys[1], shape, minval=k_range[0], maxval=k_range[1])
    snr = jnp.exp(jax.random.uniform(keys[2], shape, minval=jnp.log(snr_range[0]),
                                     maxval=jnp.log(snr_range[1])))
    return t1, k, snr


def _simulate_again(noise_keys, images, targets, on, t1, k, snr, names, protocol):
    """The voxels ``on [V]`` of ``images [V, N]`` / ``targets [V, C]`` simulated again at T1 /
    k / SNR ``[V]`` and their own fitted amplitude (see :func:`resimulate_voxels`)."""
    from qmri_jax.fitting import fit_signals, get_model
    model = get_model(FIT_MODEL)
    amp = fit_signals(model, protocol, images, max_iter=FIT_ITERATIONS)["PD"]
    clean = model.signal({"PD": amp, "T1": t1, "k": k}, protocol)
    sigma = amp[:, None] / snr[:, None]
    noisy = jnp.sqrt((clean + sigma * jax.random.normal(noise_keys[0], clean.shape)) ** 2
                     + (sigma * jax.random.normal(noise_keys[1], clean.shape)) ** 2)
    new = jnp.stack([t1 if nm == "T1" else k if nm == "k" else targets[:, i]
                     for i, nm in enumerate(names)], axis=-1)
    return (jnp.where(on[:, None], noisy.astype(images.dtype), images),
            jnp.where(on[:, None], new.astype(targets.dtype), targets), on)


def scale_maps(targets, mask, names):
    """Physical maps ``[..., C]`` -> [-1, 1] (background -1)."""
    out = [jnp.where(mask > 0, _fwd(targets[..., i], *SCALING[n]), -1.0)
           for i, n in enumerate(names)]
    return jnp.stack(out, axis=-1)


def unscale_maps(x, names):
    """[-1, 1] -> physical maps ``[..., C]``."""
    return jnp.stack([_inv(x[..., i], *SCALING[n]) for i, n in enumerate(names)], axis=-1)


class DdpmTask:
    """Conditional DDPM for ``config.targets`` given ``images``."""

    def __init__(self, config):
        self.config = config
        d = config.ddpm
        for t in config.targets:
            if t not in SCALING:
                raise ValueError(f"config.targets: {t!r} has no DDPM scaling (known: "
                                 f"{sorted(SCALING)})")
        self.names = tuple(config.targets)
        dtype = str(d.get("dtype", "float32"))
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"config.ddpm.dtype={dtype!r}: expected 'float32' or 'bfloat16'")
        self.network = str(d.get("network", "unet"))
        if self.network == "unet":
            self.net = DiffusionUNet(features=tuple(d.features), out_channels=len(self.names),
                                     blocks_per_level=d.blocks_per_level,
                                     attention_levels=tuple(d.attention_levels),
                                     emb_dim=d.emb_dim, dtype=jnp.dtype(dtype))
        elif self.network == "voxel":
            self.net = VoxelDenoiser(width=int(d.get("voxel_width", 128)),
                                     depth=int(d.get("voxel_depth", 3)),
                                     out_channels=len(self.names), emb_dim=d.emb_dim,
                                     dtype=jnp.dtype(dtype))
        else:
            raise ValueError(f"config.ddpm.network={self.network!r}: expected 'unet' or 'voxel'")
        self.voxel_batch = int(d.get("voxel_batch", 0) or 0)
        if self.voxel_batch < 0 or (self.voxel_batch and self.network != "voxel"):
            raise ValueError(f"config.ddpm.voxel_batch={self.voxel_batch}: trains on that many "
                             "voxels drawn from the batch, which needs config.ddpm.network="
                             f"'voxel' (got {self.network!r}) and a count >= 0 (0: whole slices)")
        self.voxel_prior = str(d.get("voxel_prior", "data"))
        if self.voxel_prior not in VOXEL_PRIORS:
            raise ValueError(f"config.ddpm.voxel_prior={self.voxel_prior!r}: expected one of "
                             f"{VOXEL_PRIORS}")
        if self.voxel_prior != "data" and (not self.voxel_batch or "T1" not in self.names):
            raise ValueError(f"config.ddpm.voxel_prior={self.voxel_prior!r} re-weights the voxel "
                             "draw: it needs config.ddpm.voxel_batch > 0 (got "
                             f"{self.voxel_batch}) and T1 among the targets (got {self.names})")
        self.voxel_background = float(d.get("voxel_background", -1.0))
        if self.voxel_background >= 0 and (self.voxel_prior == "data"
                                           or not self.voxel_background < 1):
            raise ValueError(f"config.ddpm.voxel_background={self.voxel_background}: the "
                             "background's share of the voxel draw, in [0, 1) (< 0: its share "
                             "of the batch); it re-weights the draw, which needs "
                             f"config.ddpm.voxel_prior='flat_T1' (got {self.voxel_prior!r})")
        self.resimulate = float(d.get("voxel_resimulate", 0.0) or 0.0)
        self.resim_t1 = tuple(d.get("voxel_t1_range", (20.0, 5000.0)))
        self.resim_k = tuple(d.get("voxel_k_range", (0.8, 1.2)))
        self.resim_snr = tuple(d.get("voxel_snr_range", (20.0, 1000.0)))
        self.resim_pd = str(d.get("voxel_resimulate_pd", "keep"))
        if self.resim_pd not in RESIMULATE_PD:
            raise ValueError(f"config.ddpm.voxel_resimulate_pd={self.resim_pd!r}: expected one "
                             f"of {RESIMULATE_PD}")
        if self.resim_pd == "drop" and (not self.resimulate or "PD" not in self.names):
            raise ValueError("config.ddpm.voxel_resimulate_pd='drop' leaves the PD map of the "
                             "re-simulated voxels out of the loss: it needs "
                             f"config.ddpm.voxel_resimulate > 0 (got {self.resimulate}) and PD "
                             f"among the targets (got {self.names})")
        self.resim_blocks = tuple(d.get("resimulate_blocks", (1, 2, 4, 8)) or ())
        if self.resimulate:
            need = {"T1", "k"} - set(self.names)
            if not 0 < self.resimulate <= 1 or need:
                raise ValueError(f"config.ddpm.voxel_resimulate={self.resimulate}: a fraction in "
                                 "(0, 1] of the voxel draw (config.ddpm.voxel_batch > 0) or of the "
                                 "blocks of whole slices (voxel_batch 0), which needs T1 and k "
                                 f"among the targets (got {self.names})")
            if not self.voxel_batch and (not self.resim_blocks or any(
                    int(s) != s or s < 1 for s in self.resim_blocks)):
                raise ValueError(f"config.ddpm.resimulate_blocks={self.resim_blocks}: whole-slice "
                                 "re-simulation (voxel_resimulate with voxel_batch 0) needs one "
                                 "or more block sides in voxels, integers >= 1")
            for field, rng in (("voxel_t1_range", self.resim_t1), ("voxel_k_range", self.resim_k),
                               ("voxel_snr_range", self.resim_snr)):
                if len(rng) != 2 or not 0 < rng[0] < rng[1]:
                    raise ValueError(f"config.ddpm.{field}={rng}: expected (low, high) with "
                                     "0 < low < high")
        self.schedule = schedules.get_schedule(d.schedule, d.num_steps)
        self.prediction = d.prediction
        self.snr_cap = float(d.snr_cap) if d.snr_cap else None
        self.saturation = float(d.get("saturation_augment", 0.0) or 0.0)
        self.saturation_range = tuple(d.get("saturation_range", (0.5, 1.5)))
        if not 0.0 <= self.saturation <= 1.0:
            raise ValueError(f"config.ddpm.saturation_augment={self.saturation}: expected a "
                             "probability in [0, 1]")
        lo, hi = self.saturation_range
        if not 0.0 < lo <= hi:
            raise ValueError(f"config.ddpm.saturation_range={self.saturation_range}: expected "
                             "(low, high) with 0 < low <= high")
        self.intensity = tuple(d.get("intensity_augment", ()) or ())
        if self.intensity and (len(self.intensity) != 2
                               or not 0.0 < self.intensity[0] <= self.intensity[1]):
            raise ValueError(f"config.ddpm.intensity_augment={self.intensity}: expected () or "
                             "(low, high) with 0 < low <= high")
        self.condition = str(d.get("condition", "images"))
        if self.condition not in CONDITIONS:
            raise ValueError(f"config.ddpm.condition={self.condition!r}: expected one of "
                             f"{CONDITIONS}")
        self.residual = bool(d.get("residual", False))
        if self.residual and (self.condition != "fit"
                              or not set(self.names) <= set(FIT_CHANNELS)):
            raise ValueError(f"config.ddpm.residual=True diffuses around the voxelwise fit: it "
                             f"needs config.ddpm.condition='fit' (got {self.condition!r}) and "
                             f"targets among {FIT_CHANNELS} (got {self.names})")
        rs = np.atleast_1d(np.asarray(d.get("residual_scale", ()) or (1.0,), np.float32))
        rs = np.broadcast_to(rs, (len(self.names),)).copy() if len(rs) in (1, len(self.names)) \
            else None
        if rs is None or not np.all(rs > 0) or (not self.residual and np.any(rs != 1)):
            raise ValueError(f"config.ddpm.residual_scale={d.get('residual_scale')}: expected () "
                             f"(none), one factor > 0 or one per target {self.names}, and "
                             "config.ddpm.residual=True for factors other than 1")
        self.residual_scale = rs
        self.protocol = None
        if self.condition == "fit" or self.resimulate:  # both fit / simulate the IR model
            from qmri_jax.fitting import get_model
            from qmri_jax.physics.protocol import get_protocol
            self.protocol = get_protocol(config.data.protocol)
            what = ("condition='fit'" if self.condition == "fit"
                    else f"voxel_resimulate={self.resimulate}")
            try:
                get_model(FIT_MODEL).check(self.protocol)
            except ValueError as e:
                raise ValueError(f"config.ddpm.{what} with config.data.protocol="
                                 f"{config.data.protocol!r}: {e}") from None
        if self.intensity and "PD" not in self.names:
            raise ValueError("config.ddpm.intensity_augment scales PD with the images, but "
                             f"config.targets={self.names} has no PD")
        self._val_loss = None  # validation_loss's compiled function, built at its first call

    # ---- training ----
    def create_state(self, key, tx, sample_images):
        from qmri_jax.train import TrainState, compiled_init
        b, h, w, _ = sample_images.shape
        x = jnp.zeros((b, h, w, len(self.names)))
        # The parameters depend on the condition's shape only: no (eager) voxelwise fit here.
        c = jax.eval_shape(lambda im: condition_images(im, self.condition, self.protocol),
                           sample_images)
        c = jnp.zeros(c.shape, c.dtype)
        params = compiled_init(self.net.init, key, x, jnp.zeros((b,), jnp.int32), c)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                          opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params))

    def make_train_step(self, tx):
        from qmri_jax.train import apply_gradients
        net, sch, pred, names = self.net, self.schedule, self.prediction, self.names
        ema_decay = self.config.train.ema_decay
        cap = self.snr_cap
        sat, (sat_lo, sat_hi) = self.saturation, self.saturation_range
        gain = self.intensity
        cond, protocol, residual = self.condition, self.protocol, self.residual
        n_vox = self.voxel_batch
        flat_t1 = self.voxel_prior == "flat_T1"
        bg_share = self.voxel_background if self.voxel_background >= 0 else None
        rs = jnp.asarray(self.residual_scale)
        resim = self.resimulate
        resim_args = (self.resim_t1, self.resim_k, self.resim_snr)
        drop_pd = self.resim_pd == "drop"
        blocks = self.resim_blocks

        def train_step(state, batch, key):
            images, targets = batch["images"], batch["targets"]
            loss_mask = None
            if gain:  # the normalised intensity scale varies between scans: images and PD x s
                key, k_gain = jax.random.split(key)
                shape = (images.shape[0],) + (1,) * (images.ndim - 1)
                s = jnp.exp(jax.random.uniform(k_gain, shape, minval=np.log(gain[0]),
                                               maxval=np.log(gain[1])))
                images = images * s
                targets = targets * jnp.where(jnp.arange(len(names)) == names.index("PD"), s, 1.0)
            x0 = scale_maps(targets, batch["mask"], names)
            if sat > 0:  # scanner saturation (12-bit DICOM) on a random part of the batch
                key, k_on, k_level = jax.random.split(key, 3)
                shape = (images.shape[0],) + (1,) * (images.ndim - 1)
                level = jax.random.uniform(k_level, shape, minval=sat_lo, maxval=sat_hi)
                on = jax.random.bernoulli(k_on, sat, shape)
                images = jnp.where(on, saturate(images, level), images)

            if n_vox:  # per-voxel network: n_vox voxels of the batch, each with its own step t
                total = int(np.prod(x0.shape[:-1]))
                if n_vox > total:
                    raise ValueError(f"config.ddpm.voxel_batch={n_vox}: the batch has only "
                                     f"{total} voxels")
                key, k_vox = jax.random.split(key)
                if flat_t1:  # brain voxels drawn ~uniformly over log T1 (with replacement)
                    p = flat_t1_weights(x0[..., names.index("T1")].reshape(total),
                                        batch["mask"].reshape(total) > 0, bg_share)
                    idx = jax.random.choice(k_vox, total, (n_vox,), replace=True, p=p)
                else:
                    idx = jax.random.choice(k_vox, total, (n_vox,), replace=False)
                images = images.reshape(total, -1)[idx]
                if resim:  # a fraction of the brain voxels with (T1, k) redrawn, simulated again
                    key, k_re = jax.random.split(key)
                    mask = batch["mask"].reshape(total)[idx]
                    images, new, redrawn = resimulate_voxels(
                        k_re, images, targets.reshape(total, -1)[idx], mask > 0, names, protocol,
                        resim, *resim_args)
                    x0 = scale_maps(new, mask, names)
                    redrawn = redrawn[:, None]
                else:
                    x0 = x0.reshape(total, -1)[idx]
                x0, images = x0[:, None, :], images[:, None, :]
            elif resim:  # whole slices: blocks of brain voxels with (T1, k) redrawn
                key, k_re = jax.random.split(key)
                images, new, redrawn = resimulate_blocks(
                    k_re, images, targets, batch["mask"] > 0, names, protocol, resim,
                    *resim_args, blocks)
                x0 = scale_maps(new, batch["mask"], names)
            if resim and drop_pd:  # weight 0 on the PD map of the re-simulated voxels
                is_pd = jnp.arange(len(names)) == names.index("PD")
                loss_mask = jnp.where(redrawn[..., None] & is_pd, 0.0, 1.0)
            c = condition_images(images, cond, protocol)  # per voxel ("fit" too): after the draw
            if residual:
                x0 = (x0 - fit_base(c, names)) * rs

            def loss_of(params):
                fn = lambda x_t, t: net.apply({"params": params}, x_t, t, c)  # noqa: E731
                return process.diffusion_loss(fn, sch, x0, key, mask=loss_mask,
                                              prediction=pred, snr_cap=cap)

            loss, grads = jax.value_and_grad(loss_of)(state.params)
            return apply_gradients(state, grads, loss, tx, ema_decay)

        return train_step

    def validation_loss(self, state, arrays) -> float:
        """The training loss on (up to) 32 validation slices at fixed noise draws (compiled once
        per task, condition and fit included; ``residual_scale`` is an argument of it). Over
        the brain voxels only where training draws no background (``voxel_background=0``):
        otherwise voxels the network never trained on would dominate it, and with it the best
        checkpoint and early stopping."""
        n = min(32, len(arrays["images"]))
        if self._val_loss is None:
            net, names, cond, protocol = self.net, self.names, self.condition, self.protocol
            residual, sch, pred, cap = self.residual, self.schedule, self.prediction, self.snr_cap
            brain_only = self.voxel_background == 0.0

            def loss(params, images, targets, mask, rs, key):
                x0 = scale_maps(targets, mask, names)
                c = condition_images(images, cond, protocol)
                if residual:
                    x0 = (x0 - fit_base(c, names)) * rs
                fn = lambda x_t, t: net.apply({"params": params}, x_t, t, c)  # noqa: E731
                return process.diffusion_loss(fn, sch, x0, key, mask=mask if brain_only else None,
                                              prediction=pred, snr_cap=cap)

            self._val_loss = jax.jit(loss)
        return float(self._val_loss(
            self._params(state), jnp.asarray(arrays["images"][:n]),
            jnp.asarray(arrays["targets"][:n]), jnp.asarray(arrays["mask"][:n]),
            jnp.asarray(self.residual_scale), jax.random.key(123)))

    def _params(self, state):
        from qmri_jax.train import eval_params
        return eval_params(state, self.config)

    # ---- sampling ----
    def make_sampler(self, sampler: str, steps: int, eta: float, num_samples: int):
        """``sample(params, images [B, H, W, C_img], key) -> {"mean", "std", "samples"}`` in
        physical units, each ``[B, H, W, C]`` (samples ``[K, B, H, W, C]``); pure, unwrapped."""
        net, sch, pred, names = self.net, self.schedule, self.prediction, self.names
        spacing = self.config.ddpm.ddim_spacing
        cond, protocol, residual = self.condition, self.protocol, self.residual
        rs = jnp.asarray(self.residual_scale)

        def sample(params, images, key):
            shape = (*images.shape[:-1], len(names))
            c = condition_images(images, cond, protocol)
            base = fit_base(c, names) if residual else 0.0
            # a residual of maps and base, each in [-1, 1], times ddpm.residual_scale
            clip = 2.0 * rs if residual else 1.0
            fn = lambda x_t, t: net.apply({"params": params}, x_t, t, c)  # noqa: E731

            def one(k):
                if sampler == "ddpm":
                    x = samplers.ddpm_sample(fn, sch, shape, k, prediction=pred, clip=clip)
                else:
                    x = samplers.ddim_sample(fn, sch, shape, k, steps, eta, prediction=pred,
                                             spacing=spacing, clip=clip)
                return unscale_maps(x / rs + base, names)

            draws = jax.vmap(one)(jax.random.split(key, num_samples))
            return {"mean": draws.mean(0), "std": draws.std(0), "samples": draws}

        return sample

    def sample_split(self, state, arrays, sampler=None, steps=None, num_samples=None, key=0):
        d = self.config.ddpm
        sample = jax.jit(self.make_sampler(sampler or d.sampler, steps or d.sample_steps, d.eta,
                                           num_samples or d.num_samples))
        params = self._params(state)
        bs = d.eval_batch
        means, stds = [], []
        for i in range(0, len(arrays["images"]), bs):
            x = np.asarray(arrays["images"][i:i + bs])
            pad = bs - len(x)
            if pad:
                x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
            out = sample(params, jnp.asarray(x), jax.random.fold_in(jax.random.key(key), i))
            means.append(np.asarray(out["mean"])[:bs - pad])
            stds.append(np.asarray(out["std"])[:bs - pad])
        return np.concatenate(means), np.concatenate(stds)

    # ---- evaluation ----
    def eval_subset(self, arrays):
        n = len(arrays["images"])
        k = min(self.config.ddpm.eval_slices, n)
        idx = np.unique(np.linspace(0, n - 1, k).round().astype(int))
        return {key: np.asarray(v)[idx] for key, v in arrays.items()}

    def calibrate(self, state, arrays) -> dict:
        """Per map, the std scale fitted on ``calibration_slices`` slices of ``arrays``
        (validation) and its validation coverage; ``{}`` when calibration is off."""
        d = self.config.ddpm
        if not d.calibration_slices or arrays is None or not len(arrays["images"]):
            return {}
        n = len(arrays["images"])
        idx = np.unique(np.linspace(0, n - 1, min(d.calibration_slices, n)).round().astype(int))
        sub = {key: np.asarray(v)[idx] for key, v in arrays.items()}
        mean, std = self.sample_split(state, sub, key=1)
        return fit_std_scale(mean, std, sub, self.names, d.calibration_coverage)

    def evaluate(self, state, arrays, out_dir, calibration=None) -> dict:
        """Sample the test split, write the report; ``calibration``: validation arrays for the
        std scale (:meth:`calibrate`)."""
        from qmri_jax.evaluation import report
        cal = self.calibrate(state, calibration)
        sub = self.eval_subset(arrays)
        mean, std = self.sample_split(state, sub)
        unc = uncertainty_metrics(mean, std, sub, self.names, cal)
        d = self.config.ddpm
        extra = {"uncertainty": unc, "sampler": {"kind": d.sampler, "steps": d.sample_steps,
                                                 "eta": d.eta, "num_samples": d.num_samples,
                                                 "ddim_spacing": d.ddim_spacing},
                 "num_slices": int(len(sub["images"]))}
        metrics = report.write_report(out_dir, mean, sub, self.names,
                                      figures=self.config.eval.figures, extra=extra)
        if self.config.eval.figures:
            plot_uncertainty(out_dir, mean, std, sub, self.names)
        scales = np.asarray([cal[n]["std_scale"] if cal else 1.0 for n in self.names])
        write_maps(out_dir, mean, std, self.names, self.config.data.resolution_mm,
                   std_cal=std * scales if cal else None)
        print(f"uncertainty ({unc['map']}): Spearman(std, |err|) {unc['spearman_std_abs_err']:.3f}, "
              f"coverage of mean +- 2 std {unc['coverage_2sigma']:.3f}")
        if cal:
            c = unc["by_map"][unc["map"]]
            print(f"  calibrated on {cal[unc['map']]['slices']} validation slices: std x "
                  f"{c['std_scale']:.3g}, test coverage of mean +- 2 scaled std "
                  f"{c['coverage_2sigma_calibrated']:.3f} (target {d.calibration_coverage})")
        print(f"outputs: {out_dir} (metrics.json, figures, NIfTI mean/std maps)")
        return metrics


def fit_std_scale(mean, std, arrays, names, coverage: float = 0.95) -> dict:
    """Per map ``{"std_scale", "coverage_2sigma_raw", "slices"}``: the factor ``s`` with
    ``mean +- 2 s std`` covering the fraction ``coverage`` of the brain voxels of ``arrays``
    (``s = quantile(|err| / std, coverage) / 2``; std floored at 1e-6 of the map's median)."""
    if not 0 < coverage < 1:
        raise ValueError(f"ddpm.calibration_coverage={coverage}: expected a fraction in (0, 1)")
    brain = arrays["mask"].astype(bool)
    out = {}
    for c, n in enumerate(names):
        err = np.abs(mean[..., c] - arrays["targets"][..., c])[brain]
        s = std[..., c][brain]
        floor = 1e-6 * max(float(np.median(np.abs(arrays["targets"][..., c][brain]))), 1e-12)
        z = err / np.maximum(s, floor)
        out[n] = {"std_scale": float(np.quantile(z, coverage) / 2),
                  "coverage_2sigma_raw": float(np.mean(err <= 2 * s)),
                  "slices": int(len(arrays["images"]))}
    return out


def uncertainty_metrics(mean, std, arrays, names, calibration: dict | None = None) -> dict:
    """Per map: Spearman correlation of std and |error|, coverage of mean +- 2 std (brain), and
    with ``calibration`` (:func:`fit_std_scale` on other data) the coverage of mean +- 2 scaled std.
    The top-level keys are those of the first map (T1)."""
    from scipy.stats import spearmanr
    brain = arrays["mask"].astype(bool)
    by = {}
    for c, n in enumerate(names):
        err = np.abs(mean[..., c] - arrays["targets"][..., c])[brain]
        s = std[..., c][brain]
        rho = float(spearmanr(s, err).statistic) if len(err) > 2 else float("nan")
        by[n] = {"spearman_std_abs_err": rho, "coverage_2sigma": float(np.mean(err <= 2 * s)),
                 "median_std": float(np.median(s))}
        if calibration:
            k = calibration[n]["std_scale"]
            by[n].update(std_scale=k, coverage_2sigma_calibrated=float(np.mean(err <= 2 * k * s)),
                         calibration_coverage_raw=calibration[n]["coverage_2sigma_raw"])
    first = by[names[0]]
    out = {"spearman_std_abs_err": first["spearman_std_abs_err"],
           "coverage_2sigma": first["coverage_2sigma"], "map": names[0], "by_map": by}
    if calibration:
        out.update(coverage_2sigma_calibrated=first["coverage_2sigma_calibrated"],
                   std_scale=first["std_scale"],
                   calibration_slices=calibration[names[0]]["slices"])
    return out


def plot_uncertainty(out_dir, mean, std, arrays, names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qmri_jax.io.nifti import _atomic

    brain = arrays["mask"].astype(bool)
    i = int(np.argmax(brain.reshape(len(brain), -1).sum(1)))
    units = {"T1": "ms", "T2": "ms", "PD": "a.u.", "k": ""}
    fig, axes = plt.subplots(len(names), 4, figsize=(15, 3.3 * len(names)), squeeze=False)
    for c, n in enumerate(names):
        t, m = arrays["targets"][i, ..., c], brain[i]
        vmax = float(np.percentile(t[m], 99)) if m.any() else 1.0
        err = np.where(m, mean[i, ..., c] - t, 0)
        sd = np.where(m, std[i, ..., c], 0)
        for j, (img, title, cmap, lo, hi) in enumerate([
                (np.where(m, mean[i, ..., c], 0), f"{n} posterior mean", "magma", 0, vmax),
                (sd, f"{n} posterior std", "viridis", 0, float(np.percentile(sd[m], 99)) or 1),
                (err, f"{n} error", "RdBu_r", -0.2 * vmax, 0.2 * vmax)]):
            h = axes[c, j].imshow(np.rot90(img), cmap=cmap, vmin=lo, vmax=hi)
            axes[c, j].set_title(title, fontsize=9)
            axes[c, j].axis("off")
            fig.colorbar(h, ax=axes[c, j], fraction=0.046).set_label(units.get(n, ""), fontsize=8)
        e = np.abs(mean[..., c] - arrays["targets"][..., c])[brain]
        s = std[..., c][brain]
        edges = np.unique(np.percentile(s, np.linspace(0, 100, 11)))
        idx = np.clip(np.digitize(s, edges[1:-1]), 0, len(edges) - 2)
        xs = [np.median(s[idx == b]) for b in range(len(edges) - 1) if np.any(idx == b)]
        ys = [np.median(e[idx == b]) for b in range(len(edges) - 1) if np.any(idx == b)]
        ax = axes[c, 3]
        ax.plot(xs, ys, "o-", label="median |error| per std decile")
        lim = max(max(xs, default=1), max(ys, default=1))
        ax.plot([0, lim], [0, 0.674 * lim], "k--", lw=0.8, label="Gaussian: 0.674 std")
        ax.set_xlabel(f"posterior std ({units.get(n, '')})")
        ax.set_ylabel(f"|error| ({units.get(n, '')})")
        ax.set_title(f"{n} calibration", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _atomic(pathlib.Path(out_dir) / "uncertainty.png",
            lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def write_maps(out_dir, mean, std, names, voxel_mm, std_cal=None):
    """NIfTI stacks ``[H, W, num_slices]`` of the posterior mean and std per map (and the
    calibrated std, ``desc-stdcal``, when given)."""
    from qmri_jax.io.nifti import bids_map_name, write_nifti
    aff = np.diag([float(voxel_mm)] * 3 + [1.0])
    for c, n in enumerate(names):
        write_nifti(os.path.join(out_dir, bids_map_name(n, prefix="ddpm")),
                    np.moveaxis(mean[..., c], 0, -1).astype(np.float32), aff)
        write_nifti(os.path.join(out_dir, bids_map_name(n, prefix="ddpm", desc="std")),
                    np.moveaxis(std[..., c], 0, -1).astype(np.float32), aff)
        if std_cal is not None:
            write_nifti(os.path.join(out_dir, bids_map_name(n, prefix="ddpm", desc="stdcal")),
                        np.moveaxis(std_cal[..., c], 0, -1).astype(np.float32), aff)
