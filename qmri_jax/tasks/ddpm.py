"""The qMRI Diffusor task: a conditional DDPM over quantitative maps (``config.task = "ddpm"``).

Maps are scaled into [-1, 1] per target (:mod:`qmri_jax.physics.units`), background voxels to -1.
The condition is the weighted images (normalised per volume by the in-brain 95th percentile, so a
scanner's arbitrary intensity scale cancels), optionally with each voxel's least-squares fit
(:mod:`qmri_jax.diffusion.conditioning`); a residual DDPM diffuses the difference from that fit.
The denoiser is a time-conditioned U-Net, or a per-voxel network trained on voxels drawn from the
batch (:mod:`qmri_jax.diffusion.voxel_draw`).

``predict`` draws ``ddpm.num_samples`` posterior samples per image (one ``vmap`` over keys) with
DDIM or DDPM and returns their mean (the estimate), std (the uncertainty) and the samples. At the
end of training, ``evaluate`` fits one std scale per map on validation slices
(:func:`qmri_jax.evaluation.uncertainty.fit_std_scale`), samples the test split and writes
``metrics.json`` (the supervised schema plus ``uncertainty``), figures and NIfTI mean/std maps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.data.acquisition import invalid_samples, saturate, saturation_gain
from qmri_jax.diffusion import process, samplers, schedules
from qmri_jax.diffusion.conditioning import (FIT_CHANNELS, FIT_MODEL, condition_channels,
                                             condition_images, fit_base, fit_sd, mark_invalid,
                                             slice_noise_sigma)
from qmri_jax.diffusion.voxel_draw import draw_voxels, resimulate_voxels
from qmri_jax.engine import create_optimizer, create_state, eval_params
from qmri_jax.engine.state import apply_gradients
from qmri_jax.models import create_model
from qmri_jax.physics.units import scale_maps, unscale_maps
from qmri_jax.tasks.base import predict_in_batches
from qmri_jax.tasks.ddpm_config import DdpmConfig

__all__ = ["DdpmTask", "CRLB_SD_RANGE"]

#: The range the Cramer-Rao SD of ``ddpm.residual_crlb`` is held within (scaled maps' units):
#: T1 to ~0.3% at the top precision; a hopeless fit is diffused like a fixed factor.
CRLB_SD_RANGE = (1e-3, 1.0)


class DdpmTask:
    """Conditional DDPM for ``config.targets`` given ``images``; settings in ``config.ddpm``."""

    batch_keys = ("images", "targets", "mask")

    def __init__(self, config):
        self.config = config
        self.names = self.targets = tuple(config.targets)
        self.cfg = d = DdpmConfig.from_config(config.ddpm)
        d.check(self.names)
        dtype = jnp.dtype(d.dtype)
        if d.network == "unet":
            self.net = create_model("diffusion_unet", features=tuple(d.features),
                                    out_channels=len(self.names),
                                    blocks_per_level=d.blocks_per_level,
                                    attention_levels=tuple(d.attention_levels),
                                    emb_dim=d.emb_dim, dtype=dtype)
            self.size_multiple = 2 ** (len(d.features) - 1)
        else:
            self.net = create_model("voxel_denoiser", width=d.voxel_width, depth=d.voxel_depth,
                                    out_channels=len(self.names), emb_dim=d.emb_dim, dtype=dtype)
            self.size_multiple = 1
        #: the network sees each voxel alone (no spatial prior): apply it at a scan's own grid
        self.per_voxel = d.network == "voxel"
        self.residual_scale = d.residual_factors(self.names)
        self.residual_crlb = tuple(d.residual_crlb)
        self.validity = d.validity  # predict takes clipped / missing samples (NaN, or valid=)
        self.noise = d.noise_condition  # predict needs the images' noise SD (sigma=)
        self.schedule = schedules.get_schedule(d.schedule, d.num_steps)
        self.snr_cap = float(d.snr_cap) if d.snr_cap else None
        self.protocol = None
        if d.condition == "fit" or d.voxel_resimulate:  # both fit / simulate the IR model
            from qmri_jax.fitting import get_model
            from qmri_jax.tasks.data import input_protocol
            self.protocol = input_protocol(config)
            what = ("condition='fit'" if d.condition == "fit"
                    else f"voxel_resimulate={d.voxel_resimulate}")
            try:
                get_model(FIT_MODEL).check(self.protocol)
            except ValueError as e:
                raise ValueError(f"config.ddpm.{what} with config.data.protocol="
                                 f"{config.data.protocol!r}: {e}") from None
        self.tx = create_optimizer(config.train, config.train.num_steps)
        self.ema_decay = float(config.train.ema_decay)

    # ---- training ----
    def create_state(self, key, batch):
        images = batch["images"]
        b = images.shape[0]
        x = jnp.zeros((*images.shape[:-1], len(self.names)))
        c = jnp.zeros((*images.shape[:-1],
                       condition_channels(self.cfg.condition, images.shape[-1],
                                          self.cfg.validity, self.noise)), images.dtype)
        params = self.net.init(key, x, jnp.zeros((b,), jnp.int32), c)["params"]
        return create_state(params, self.tx)

    def _condition(self, images, sigma=None):
        if self.noise and sigma is None:
            raise ValueError("this DDPM is conditioned on the noise level "
                             "(config.ddpm.noise_condition): pass sigma, the images' noise SD in "
                             "their normalised units (e.g. diffusion.conditioning."
                             "slice_noise_sigma, or physics.estimate_sigma_background)")
        return condition_images(images, self.cfg.condition, self.protocol, self.cfg.validity,
                                sigma if self.noise else None)

    @staticmethod
    def _slice_sigma(images, mask):
        """Each slice's background noise SD ``[B]`` (``slice_noise_sigma``); a slice without
        background (a crop inside the brain) takes the median of the others."""
        sigma = slice_noise_sigma(images, mask)
        return jnp.where(jnp.isfinite(sigma), sigma, jnp.nanmedian(sigma))

    def _factors(self, c):
        """What the residual is multiplied by: ``residual_scale`` ``[C]``, and with
        ``residual_crlb`` per voxel ``[..., C]``: those targets' factor over the Cramer-Rao SD of
        their fit (:func:`~qmri_jax.diffusion.conditioning.fit_sd`, held within
        [:data:`CRLB_SD_RANGE`]; a singular bound counts as the top of it)."""
        rs = jnp.asarray(self.residual_scale)
        if not self.residual_crlb:
            return rs
        sd = fit_sd(c, self.protocol, self.cfg.validity)
        lo, hi = CRLB_SD_RANGE
        cols = []
        for i, name in enumerate(self.names):
            if name in self.residual_crlb:
                s = sd[..., FIT_CHANNELS.index(name)]
                cols.append(rs[i] / jnp.clip(jnp.where(jnp.isfinite(s), s, hi), lo, hi))
            else:
                cols.append(jnp.broadcast_to(rs[i], c.shape[:-1]))
        return jnp.stack(cols, axis=-1)

    def _loss(self, params, x0, c, key, mask):
        fn = lambda x_t, t: self.net.apply({"params": params}, x_t, t, c)  # noqa: E731
        return process.diffusion_loss(fn, self.schedule, x0, key, mask=mask,
                                      prediction=self.cfg.prediction, snr_cap=self.snr_cap)

    def _invalid(self, batch, key):
        """The validity augmentation (:func:`~qmri_jax.data.acquisition.invalid_samples`) of
        ``batch["images"]``; a clipped item's renormalisation scales its ``"sigma"`` too."""
        d = self.cfg
        images, scale = invalid_samples(key, batch["images"], d.saturation_augment,
                                        d.saturation_range, d.missing_augment, d.missing_rate,
                                        return_scale=True)
        out = {**batch, "images": images}
        if "sigma" in batch:
            out["sigma"] = batch["sigma"] * scale[..., 0]
        return out

    def train_step(self, state, batch, key):
        d, names = self.cfg, self.names
        images = batch["images"]
        loss_mask = None
        if self.noise:  # on the background before augmentation (which scales it with the images)
            sigma = self._slice_sigma(images, batch["mask"])
            batch = {**batch, "sigma": jnp.broadcast_to(
                sigma.reshape((-1,) + (1,) * (batch["mask"].ndim - 1)), batch["mask"].shape)}
        if d.saturation_augment > 0 and not d.validity:  # clipped samples as if measured
            key, k_on, k_level = jax.random.split(key, 3)
            shape = (images.shape[0],) + (1,) * (images.ndim - 1)
            level = jax.random.uniform(k_level, shape, minval=d.saturation_range[0],
                                       maxval=d.saturation_range[1])
            on = jax.random.bernoulli(k_on, d.saturation_augment, shape)
            images = jnp.where(on, saturate(images, level), images)
            if "sigma" in batch:  # the renormalisation scales the noise too
                batch = {**batch, "sigma": batch["sigma"] * jnp.where(
                    on, saturation_gain(level), 1.0)[..., 0]}
        if d.validity:  # (its own key only then: runs without the mask draw as before it)
            key, k_inv = jax.random.split(key)
        batch = {**batch, "images": images}
        if d.validity and not d.voxel_batch:  # per slice: clipped / missing samples become NaN
            batch = self._invalid(batch, k_inv)
        if d.voxel_batch:  # per-voxel network: voxels of the batch, each with its own step t
            key, k_vox = jax.random.split(key)
            batch = draw_voxels(batch, k_vox, d.voxel_batch, names, d.voxel_prior,
                                d.voxel_background if d.voxel_background >= 0 else None)
            if d.voxel_resimulate:  # a fraction of the brain voxels redrawn, simulated again
                key, k_re = jax.random.split(key)
                batch = resimulate_voxels(batch, k_re, names, self.protocol, d.voxel_resimulate,
                                          d.voxel_t1_range, d.voxel_k_range, d.voxel_snr_range)
                if d.voxel_resimulate_pd == "drop":  # no PD loss on the re-simulated voxels
                    is_pd = jnp.arange(len(names)) == names.index("PD")
                    loss_mask = jnp.where(batch["redrawn"][..., None] & is_pd, 0.0, 1.0)
            if d.validity:  # per voxel, after the re-simulation (which fits the series)
                batch = self._invalid(batch, k_inv)
        x0 = scale_maps(batch["targets"], batch["mask"], names, d.map_scaling)
        c = self._condition(batch["images"], batch.get("sigma"))  # per voxel: after the draw
        if d.residual:
            x0 = (x0 - fit_base(c, names)) * self._factors(c)
        loss, grads = jax.value_and_grad(self._loss)(state.params, x0, c, key, loss_mask)
        return apply_gradients(state, grads, loss, self.tx, self.ema_decay)

    def eval_step(self, state, batch, key):
        """The training loss on whole validation slices at the given noise draws; over the brain
        voxels only where training draws no background (``voxel_background=0``): otherwise voxels
        the network never trained on would dominate it, and with it the best checkpoint."""
        x0 = scale_maps(batch["targets"], batch["mask"], self.names, self.cfg.map_scaling)
        sigma = self._slice_sigma(batch["images"], batch["mask"]) if self.noise else None
        c = self._condition(batch["images"], sigma)
        if self.cfg.residual:
            x0 = (x0 - fit_base(c, self.names)) * self._factors(c)
        mask = batch["mask"] if self.cfg.voxel_background == 0.0 else None
        return {"loss": self._loss(eval_params(state, self.ema_decay), x0, c, key, mask)}

    # ---- sampling ----
    def sample_fn(self, sampler: str | None = None, steps: int | None = None,
                  num_samples: int | None = None):
        """``sample(state, images [B, *S, C_img], key, sigma=None) -> {"mean", "std", "samples"}``
        in physical units (``samples [K, B, *S, C]``; ``sigma``: the images' noise SD, needed by
        a noise-conditioned model); pure, unwrapped. Defaults: ``config.ddpm``."""
        d, names = self.cfg, self.names
        sampler, steps = sampler or d.sampler, steps or d.sample_steps
        k = num_samples or d.num_samples

        def sample(state, images, key, sigma=None):
            params = eval_params(state, self.ema_decay)
            shape = (*images.shape[:-1], len(names))
            c = self._condition(images, sigma)
            base = fit_base(c, names) if d.residual else 0.0
            rs = self._factors(c) if d.residual else 1.0
            clip = 2.0 * rs if d.residual else 1.0  # a residual of maps and base in [-1, 1]
            fn = lambda x_t, t: self.net.apply({"params": params}, x_t, t, c)  # noqa: E731

            def one(key_k):
                if sampler == "ddpm":
                    x = samplers.ddpm_sample(fn, self.schedule, shape, key_k,
                                             prediction=d.prediction, clip=clip)
                else:
                    x = samplers.ddim_sample(fn, self.schedule, shape, key_k, steps, d.eta,
                                             prediction=d.prediction, clip=clip)
                return unscale_maps(x / rs + base, names, d.map_scaling)

            # one vmap over k keys; the SD with Bessel's correction
            return samplers.posterior_summary(one, key, k, return_samples=True)

        return sample

    def predict(self, state, images, key, valid=None, sigma=None):
        """``{"mean", "std", "samples"}`` of ``ddpm.num_samples`` posterior draws given
        ``images [B, *S, N]``; samples that are not measurements are NaN there or False in
        ``valid [B, *S, N]`` (a model trained with ``ddpm.validity`` leaves them out; for one
        without it they make its maps NaN). ``sigma``: the images' Rician noise SD in their
        (normalised) units, a scalar, ``[B]`` or ``[B, *S]``; a model trained with
        ``ddpm.noise_condition`` needs it (``self.noise``)."""
        if valid is not None:
            images = mark_invalid(images, valid)
        return self.sample_fn()(state, images, key, sigma)

    def sample_split(self, state, arrays, sampler=None, steps=None, num_samples=None, key=0):
        """Posterior mean and std ``[N, *S, C]`` (numpy) of ``arrays["images"]``, in batches of
        ``ddpm.eval_batch``. A per-voxel model samples the brain voxels only (``arrays["mask"]``,
        packed into slices of the split's shape; 0 elsewhere): what it is trained and scored on,
        at 2-3x less work than whole slices."""
        fn = jax.jit(self.sample_fn(sampler, steps, num_samples))
        images = np.asarray(arrays["images"])
        if self.noise:  # each slice's background noise rides along as one more channel
            sig = np.asarray(self._slice_sigma(jnp.asarray(images), jnp.asarray(arrays["mask"])))
            images = np.concatenate([images, np.broadcast_to(
                sig.reshape((-1,) + (1,) * (images.ndim - 1)), images.shape[:-1] + (1,))], -1)
            run = lambda x, k: fn(state, x[..., :-1], k, x[..., -1])  # noqa: E731
        else:
            run = lambda x, k: fn(state, x, k)  # noqa: E731
        if not self.per_voxel:
            out = predict_in_batches(run, images, self.cfg.eval_batch, jax.random.key(key))
            return out["mean"], out["std"]
        brain = np.asarray(arrays["mask"]) > 0
        mean = np.zeros(images.shape[:-1] + (len(self.names),), np.float32)
        std = np.zeros_like(mean)
        voxels = images[brain]  # [V, C]
        if len(voxels):
            per = int(np.prod(images.shape[1:-1]))  # voxels per packed slice
            pad = (-len(voxels)) % per
            packed = np.concatenate([voxels, np.repeat(voxels[-1:], pad, 0)]).reshape(
                (-1,) + images.shape[1:])
            out = predict_in_batches(run, packed, self.cfg.eval_batch, jax.random.key(key))
            mean[brain] = out["mean"].reshape(-1, mean.shape[-1])[:len(voxels)]
            std[brain] = out["std"].reshape(-1, std.shape[-1])[:len(voxels)]
        return mean, std

    # ---- evaluation ----
    def eval_subset(self, arrays, count=None):
        """``count`` (default ``ddpm.eval_slices``) slices evenly spaced through ``arrays``."""
        n = len(arrays["images"])
        k = min(count or self.cfg.eval_slices, n)
        idx = np.unique(np.linspace(0, n - 1, k).round().astype(int))
        return {key: np.asarray(v)[idx] for key, v in arrays.items()}

    def calibrate(self, state, arrays) -> dict:
        """Per map, the std scale fitted on ``ddpm.calibration_slices`` slices of ``arrays``
        (validation) and its validation coverage; ``{}`` when calibration is off."""
        from qmri_jax.evaluation.uncertainty import fit_std_scale
        d = self.cfg
        if not d.calibration_slices or arrays is None or not len(arrays["images"]):
            return {}
        sub = self.eval_subset(arrays, d.calibration_slices)
        mean, std = self.sample_split(state, sub, key=1)
        return fit_std_scale(mean, std, sub, self.names, d.calibration_coverage)

    def exact_reference(self, mean, std, arrays) -> dict:
        """``mean``/``std`` of ``arrays`` against the exact per-voxel posterior
        (:func:`qmri_jax.evaluation.exact_posterior.exact_uncertainty`) on ``ddpm.exact_voxels``
        brain voxels; ``{"skipped": reason}`` where the protocol or targets do not allow it."""
        from qmri_jax.evaluation.exact_posterior import exact_uncertainty
        from qmri_jax.fitting.posterior import GridPrior
        from qmri_jax.fitting.models import get_model
        from qmri_jax.tasks.data import input_protocol
        protocol = input_protocol(self.config)
        try:
            get_model("ir").check(protocol)
        except ValueError as e:
            return {"skipped": f"the exact posterior is for IR protocols: {e}"}
        if "T1" not in self.names:
            return {"skipped": "the exact posterior needs T1 among the targets"}
        # The prior the per-voxel model is trained towards: its re-simulation ranges (the main
        # job's equal MAIN_JOB_PRIOR's).
        prior = GridPrior(t1_ms=tuple(self.cfg.voxel_t1_range), k=tuple(self.cfg.voxel_k_range))
        return exact_uncertainty(mean, std, arrays, self.names, protocol, prior=prior,
                                 max_voxels=self.cfg.exact_voxels)

    def evaluate(self, state, data, out_dir) -> dict:
        """Sample the test split and write the report, calibrated on ``data["validation"]``."""
        from qmri_jax.evaluation import figures, report
        from qmri_jax.evaluation.uncertainty import uncertainty_metrics
        d, names = self.cfg, self.names
        cal = self.calibrate(state, data.get("validation"))
        sub = self.eval_subset(data["test"])
        mean, std = self.sample_split(state, sub)
        unc = uncertainty_metrics(mean, std, sub, names, cal)
        if d.exact_voxels:
            unc["exact"] = self.exact_reference(mean, std, sub)
        extra = {"uncertainty": unc, "sampler": {"kind": d.sampler, "steps": d.sample_steps,
                                                 "eta": d.eta, "num_samples": d.num_samples},
                 "num_slices": int(len(sub["images"]))}
        metrics = report.write_report(out_dir, mean, sub, names,
                                      figures=self.config.eval.figures, extra=extra)
        if self.config.eval.figures:
            figures.plot_uncertainty(out_dir, mean, std, sub, names)
        vols = {}
        for c, n in enumerate(names):
            vols[(n, None)], vols[(n, "std")] = mean[..., c], std[..., c]
            if cal:
                vols[(n, "stdcal")] = std[..., c] * cal[n]["std_scale"]
        report.write_map_volumes(out_dir, vols, self.config.data.resolution_mm, prefix="ddpm")
        print(f"uncertainty ({unc['map']}): Spearman(std, |err|) {unc['spearman_std_abs_err']:.3f}, "
              f"coverage of mean +- 2 std {unc['coverage_2sigma']:.3f}")
        ex = unc.get("exact", {})
        if "sd_ratio_median" in ex:
            print(f"  against the exact posterior ({ex['voxels']} voxels, {ex['map']}): SD ratio "
                  f"{ex['sd_ratio_median']:.3g} (median voxel), raw coverage "
                  f"{ex['raw_coverage_2sd']:.3f} (exact: {ex['exact_coverage_2sd']:.3f})")
        if cal:
            c = unc["by_map"][unc["map"]]
            print(f"  calibrated on {cal[unc['map']]['slices']} validation slices: std x "
                  f"{c['std_scale']:.3g}, test coverage of mean +- 2 scaled std "
                  f"{c['coverage_2sigma_calibrated']:.3f} (target {d.calibration_coverage})")
        print(f"outputs: {out_dir} (metrics.json, figures, NIfTI mean/std maps)")
        return metrics
