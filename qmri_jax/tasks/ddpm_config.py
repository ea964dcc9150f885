"""The typed, validated ``config.ddpm`` section of the DDPM task (see ``configs/default.py`` for
what each key does)."""

from __future__ import annotations

import dataclasses

import numpy as np

from qmri_jax.diffusion.conditioning import CONDITIONS, FIT_CHANNELS
from qmri_jax.diffusion.voxel_draw import VOXEL_PRIORS
from qmri_jax.physics.units import MAP_SCALINGS, SCALING, TANH_SCALE

__all__ = ["DdpmConfig", "NETWORKS", "RESIMULATE_PD"]

NETWORKS = ("unet", "voxel")
RESIMULATE_PD = ("keep", "drop")  # the PD loss of re-simulated voxels
# Keys removed in 2026-11 (no measured gain, no preset used them; see CHANGELOG.md), with the value
# that meant "off": a workdir's config.json written before still loads when they are off.
REMOVED_KEYS = {"intensity_augment": (), "ddim_spacing": "uniform", "resimulate_blocks": None}
LAST_COMMIT_WITH_REMOVED = "0f520f4"


@dataclasses.dataclass(frozen=True)
class DdpmConfig:
    network: str = "unet"
    features: tuple = (32, 64, 64)
    blocks_per_level: int = 1
    attention_levels: tuple = ()
    emb_dim: int = 0
    voxel_width: int = 128
    voxel_depth: int = 3
    dtype: str = "float32"
    schedule: str = "linear"
    num_steps: int = 1000
    prediction: str = "eps"
    map_scaling: str = "range"
    snr_cap: float = 0.0
    sampler: str = "ddim"
    sample_steps: int = 50
    eta: float = 0.0
    num_samples: int = 10
    eval_slices: int = 16
    eval_batch: int = 4
    calibration_slices: int = 8
    calibration_coverage: float = 0.95
    exact_voxels: int = 300
    saturation_augment: float = 0.0
    saturation_range: tuple = (0.5, 1.5)
    validity: bool = False
    noise_condition: bool = False
    missing_augment: float = 0.0
    missing_rate: float = 0.1
    condition: str = "images"
    residual: bool = False
    residual_scale: tuple = ()
    residual_crlb: tuple = ()
    voxel_batch: int = 0
    voxel_prior: str = "data"
    voxel_background: float = -1.0
    voxel_resimulate: float = 0.0
    voxel_resimulate_pd: str = "keep"
    voxel_t1_range: tuple = (20.0, 5000.0)
    voxel_k_range: tuple = (0.8, 1.2)
    voxel_snr_range: tuple = (20.0, 1000.0)

    @classmethod
    def from_config(cls, section) -> "DdpmConfig":
        """From ``config.ddpm``; an unknown key is an error that names it."""
        d = dict(section)
        for key, off in REMOVED_KEYS.items():
            if key in d:
                value = d.pop(key)
                value = tuple(value) if isinstance(value, list) else value
                if off is not None and value != off:
                    raise ValueError(
                        f"config.ddpm.{key}={value!r}: this option was removed (no measured "
                        f"gain); reproduce its runs at commit {LAST_COMMIT_WITH_REMOVED}, or set "
                        f"it to {off!r} (off) in the workdir's config.json")
        if d.get("condition") == "shape":
            raise ValueError("config.ddpm.condition='shape' was removed (no measured gain); "
                             f"reproduce its runs at commit {LAST_COMMIT_WITH_REMOVED}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.ddpm has unknown keys {unknown} (known: {sorted(known)}); "
                             "options removed in 2026-11 are listed in CHANGELOG.md")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def check(self, names) -> None:
        """Refuse settings that cannot work together for the targets ``names``."""
        def bad(key, expected):
            raise ValueError(f"config.ddpm.{key}={getattr(self, key)!r}: {expected}")

        if self.map_scaling not in MAP_SCALINGS:
            bad("map_scaling", f"expected one of {MAP_SCALINGS}")
        known = SCALING if self.map_scaling == "range" else TANH_SCALE
        for t in names:
            if t not in known:
                raise ValueError(f"config.targets: {t!r} has no DDPM scaling "
                                 f"config.ddpm.map_scaling={self.map_scaling!r} (known: "
                                 f"{sorted(known)})")
        if self.map_scaling != "range" and self.residual:
            bad("map_scaling", "the residual DDPM diffuses around the fit on the 'range' "
                "scaling (config.ddpm.residual=True needs map_scaling='range')")
        if self.dtype not in ("float32", "bfloat16"):
            bad("dtype", "expected 'float32' or 'bfloat16'")
        if self.network not in NETWORKS:
            bad("network", f"expected one of {NETWORKS}")
        if self.sampler not in ("ddim", "ddpm"):
            bad("sampler", "expected 'ddim' or 'ddpm'")
        if self.condition not in CONDITIONS:
            bad("condition", f"expected one of {CONDITIONS}")
        if self.voxel_batch < 0 or (self.voxel_batch and self.network != "voxel"):
            bad("voxel_batch", "trains on that many voxels drawn from the batch, which needs "
                f"config.ddpm.network='voxel' (got {self.network!r}) and a count >= 0 (0: whole "
                "slices)")
        if self.voxel_prior not in VOXEL_PRIORS:
            bad("voxel_prior", f"expected one of {VOXEL_PRIORS}")
        if self.voxel_prior != "data" and (not self.voxel_batch or "T1" not in names):
            bad("voxel_prior", "re-weights the voxel draw: it needs config.ddpm.voxel_batch > 0 "
                f"(got {self.voxel_batch}) and T1 among the targets (got {tuple(names)})")
        if self.voxel_background >= 0 and (self.voxel_prior == "data"
                                           or not self.voxel_background < 1):
            bad("voxel_background", "the background's share of the voxel draw, in [0, 1) (< 0: "
                "its share of the batch); it re-weights the draw, which needs "
                f"config.ddpm.voxel_prior='flat_T1' (got {self.voxel_prior!r})")
        if self.voxel_resimulate_pd not in RESIMULATE_PD:
            bad("voxel_resimulate_pd", f"expected one of {RESIMULATE_PD}")
        if self.voxel_resimulate_pd == "drop" and (not self.voxel_resimulate
                                                   or "PD" not in names):
            bad("voxel_resimulate_pd", "leaves the PD map of the re-simulated voxels out of the "
                f"loss: it needs config.ddpm.voxel_resimulate > 0 (got {self.voxel_resimulate}) "
                f"and PD among the targets (got {tuple(names)})")
        if self.voxel_resimulate:
            need = {"T1", "k"} - set(names)
            if not 0 < self.voxel_resimulate <= 1 or need or not self.voxel_batch:
                bad("voxel_resimulate", "a fraction in (0, 1] of the voxel draw, which needs "
                    f"config.ddpm.voxel_batch > 0 (got {self.voxel_batch}) and T1 and k among "
                    f"the targets (got {tuple(names)})")
            for key in ("voxel_t1_range", "voxel_k_range", "voxel_snr_range"):
                rng = getattr(self, key)
                if len(rng) != 2 or not 0 < rng[0] < rng[1]:
                    bad(key, "expected (low, high) with 0 < low < high")
        if not 0.0 <= self.saturation_augment <= 1.0:
            bad("saturation_augment", "expected a probability in [0, 1]")
        if not 0.0 <= self.missing_augment <= 1.0 or not 0.0 < self.missing_rate < 1.0:
            bad("missing_augment", "a probability in [0, 1], with config.ddpm.missing_rate in "
                f"(0, 1) (got {self.missing_rate})")
        if self.missing_augment and not self.validity:
            bad("missing_augment", "drops samples, which only a model given the validity mask "
                "can tell: it needs config.ddpm.validity=True")
        lo, hi = self.saturation_range
        if not 0.0 < lo <= hi:
            bad("saturation_range", "expected (low, high) with 0 < low <= high")
        if self.residual and (self.condition != "fit" or not set(names) <= set(FIT_CHANNELS)):
            bad("residual", "diffuses around the voxelwise fit: it needs "
                f"config.ddpm.condition='fit' (got {self.condition!r}) and targets among "
                f"{FIT_CHANNELS} (got {tuple(names)})")
        self.residual_factors(names)
        if self.residual_crlb:
            extra = sorted(set(self.residual_crlb) - set(names))
            if extra or not self.residual or not self.noise_condition:
                bad("residual_crlb", "divides the residual of these targets by the Cramer-Rao SD "
                    "of their fit, which needs config.ddpm.residual=True, "
                    f"config.ddpm.noise_condition=True (the noise level) and targets among "
                    f"{tuple(names)} (got {extra or 'them'})")

    def residual_factors(self, names) -> np.ndarray:
        """``residual_scale`` as one factor per target ``[C]`` (1 where not given)."""
        rs = np.atleast_1d(np.asarray(self.residual_scale or (1.0,), np.float32))
        ok = len(rs) in (1, len(names))
        rs = np.broadcast_to(rs, (len(names),)).copy() if ok else rs
        if not ok or not np.all(rs > 0) or (not self.residual and np.any(rs != 1)):
            raise ValueError(f"config.ddpm.residual_scale={self.residual_scale}: expected () "
                             f"(none), one factor > 0 or one per target {tuple(names)}, and "
                             "config.ddpm.residual=True for factors other than 1")
        return rs
