"""Paired 3D volumes for GE -> TSE contrast translation with thick-slice targets (High-to-low).

One synthetic subject (:func:`qmri_jax.data.datasets.make_subject`: warped MNI152 anatomy,
literature tissue values, optional pathology) is acquired twice in one session (one transmit and
one receive field for both):

* ``ge``: an isotropic 3D spoiled gradient echo (the protocol's ``spgr`` image; its flip angle
  scaled by the transmit field), Rician noise at ``snr`` (each scan's in-brain median signal over
  the noise sigma: a 3D GE's SNR comes from its many encodings, not from PD = 1);
* ``tse_lr``: a T2-weighted spin echo (the protocol's ``se`` image) acquired with 2D slices
  ``slice_factor`` times thicker along ``z``: the noise-free high-resolution TSE weighted by the
  spin-echo slice sensitivity (:func:`qmri_jax.physics.thick_slices.spin_echo_slice_kernel`, not a
  box), then Rician noise at ``snr`` (of the thick slices' in-brain median) on them;
* ``tse_hr``: the noise-free high-resolution TSE, the ground truth a scanner never delivers;
* ``ge_lr``: the GE resampled to the thick-slice grid (block average of ``slice_factor`` slices),
  the input of low-to-low training.

Intensities: the GE is divided by its in-brain 99th percentile, the thick-slice TSE by its own,
and the high-resolution truth by the thick-slice TSE's factor (the same units as the acquired
TSE). Masks: ``brain``, ``GM``, ``WM``, ``CSF``, ``lesion`` at high resolution and ``brain_lr``
(thick slices at least half brain). The volume's ``z`` is cropped to a multiple of
``slice_factor`` (centred). Shapes: high resolution ``[X, Y, Z]``, thick slices
``[X, Y, Z / slice_factor]``.

:class:`QmriTranslation3D` is the TFDS (array_record) builder of these volumes; :func:`build`
and :func:`load_split` build once per config and read a split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from qmri_jax.data import anatomy as anatomy_lib, datasets
from qmri_jax.data.acquisition import smooth_bias_field
from qmri_jax.physics.protocol import get_protocol, simulate
from qmri_jax.physics.thick_slices import downsample_slices, spin_echo_slice_kernel

__all__ = ["TranslationConfig", "translation_volume", "build", "load_split", "VOLUME_KEYS",
           "MASK_KEYS"]

MASK_KEYS = ("brain", "GM", "WM", "CSF", "lesion")
IMAGE_KEYS = ("ge", "ge_lr", "tse_lr", "tse_hr")
VOLUME_KEYS = (*IMAGE_KEYS, *MASK_KEYS, "brain_lr")


@dataclasses.dataclass(frozen=True)
class TranslationConfig:
    """Everything that determines a translation dataset.

    Attributes:
      protocol: a named protocol with one ``spgr`` (GE) and one ``se`` (TSE) image.
      field: ``"1.5T"`` or ``"3T"`` tissue values.
      resolution_mm: isotropic voxel size of the GE (integer mm).
      slice_factor: TSE slice thickness in GE voxels (4 in the paper).
      num_subjects, pathology_fraction, seed: as :class:`qmri_jax.data.datasets.DataConfig`.
      snr: each scan's in-brain median signal over its noise sigma.
      receive_bias, transmit_bias: log-std of the smooth receive / transmit fields.
      time_bandwidth: of the TSE's slice-selective pulses (slice-profile sharpness).
    """

    protocol: str = "ge_tse_3d"
    field: str = "3T"
    resolution_mm: int = 2
    slice_factor: int = 4
    num_subjects: int = 12
    pathology_fraction: float = 0.25
    snr: float = 40.0
    receive_bias: float = 0.1
    transmit_bias: float = 0.05
    time_bandwidth: float = 3.0
    seed: int = 0

    def __post_init__(self):
        kinds = get_protocol(self.protocol).kinds
        if sorted(kinds) != ["se", "spgr"]:
            raise ValueError(f"TranslationConfig.protocol={self.protocol!r}: expected one 'spgr' "
                             f"(GE) and one 'se' (TSE) image, got kinds {kinds}")
        if self.slice_factor < 1:
            raise ValueError(f"TranslationConfig.slice_factor={self.slice_factor}: expected >= 1")
        if not self.snr > 0:
            raise ValueError(f"TranslationConfig.snr={self.snr}: expected > 0")
        self.data_config()  # validates the subject fields

    def data_config(self) -> datasets.DataConfig:
        """The subjects' :class:`~qmri_jax.data.datasets.DataConfig` (anatomy, tissue, splits)."""
        return datasets.DataConfig(protocol=self.protocol, field=self.field,
                                   resolution_mm=self.resolution_mm,
                                   num_subjects=self.num_subjects,
                                   pathology_fraction=self.pathology_fraction, seed=self.seed)

    @property
    def name(self) -> str:
        d = dataclasses.asdict(self)
        digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.protocol}_{self.resolution_mm}mm_x{self.slice_factor}_" \
               f"n{self.num_subjects}_{digest}"


def _rician(rng, x, sigma):
    re = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def _p99(x, mask):
    return max(float(np.percentile(x[mask], 99)), 1e-12)


def translation_volume(config: TranslationConfig, index: int) -> dict:
    """Subject ``index`` as a dict of :data:`VOLUME_KEYS` (float32 images, uint8 masks) plus
    ``subject`` (int32) and ``kernel`` (the thick-slice kernel used, float32 ``[K]``) and
    ``kernel_offset``."""
    subj, rng, anat = datasets.make_subject(config.data_config(), index)
    f = config.slice_factor
    z = subj.brain.shape[2]
    z0 = (z % f) // 2
    zs = slice(z0, z0 + z - z % f)
    brain = subj.brain[:, :, zs]
    protocol = get_protocol(config.protocol)
    i_ge, i_se = protocol.kinds.index("spgr"), protocol.kinds.index("se")
    shape = brain.shape
    b1 = smooth_bias_field(rng, shape, anat.voxel_mm, config.transmit_bias)
    receive = smooth_bias_field(rng, shape, anat.voxel_mm, config.receive_bias)
    maps = {k: subj.maps[k][:, :, zs] for k in ("T1", "T2", "PD")}
    safe = {"T1": np.where(maps["T1"] > 0, maps["T1"], 1.0),
            "T2": np.where(maps["T2"] > 0, maps["T2"], 1.0), "PD": maps["PD"], "B1": b1}
    clean = np.asarray(simulate(safe, protocol), np.float32) * receive[..., None]
    ge_clean = clean[..., i_ge]
    ge = _rician(rng, ge_clean, float(np.median(ge_clean[brain])) / config.snr)
    kernel, offset = spin_echo_slice_kernel(f, config.time_bandwidth, reach=0.5)
    tse_clean_lr = np.asarray(downsample_slices(clean[..., i_se:i_se + 1], kernel, f,
                                                offset))[..., 0]
    box = np.full((f,), 1.0 / f, np.float32)
    brain_lr = np.asarray(downsample_slices(brain[..., None].astype(np.float32), box, f))[..., 0]
    brain_lr = brain_lr >= 0.5
    tse_lr = _rician(rng, tse_clean_lr, float(np.median(tse_clean_lr[brain_lr])) / config.snr)
    ge_lr = np.asarray(downsample_slices(ge[..., None], box, f))[..., 0]
    s_ge, s_tse = _p99(ge, brain), _p99(tse_lr, brain_lr)
    masks = subj.masks()
    ex = {"ge": ge / s_ge, "ge_lr": ge_lr / s_ge, "tse_lr": tse_lr / s_tse,
          "tse_hr": clean[..., i_se] / s_tse}
    ex = {k: v.astype(np.float32) for k, v in ex.items()}
    for m in MASK_KEYS:
        ex[m] = masks[m][:, :, zs].astype(np.uint8)
    ex["brain_lr"] = brain_lr.astype(np.uint8)
    ex["subject"] = np.int32(index)
    ex["kernel"] = kernel
    ex["kernel_offset"] = np.int32(offset)
    return ex


def _builder_class():
    import tensorflow_datasets as tfds

    class QmriTranslation3D(tfds.core.GeneratorBasedBuilder):
        """Paired 3D GE / thick-slice TSE volumes with the high-resolution TSE truth."""

        name = "qmri_translation_3d"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "GE 3D SPGR, TSE thick slices with a spin-echo slice profile."}

        def __init__(self, *, qmri_config: TranslationConfig, **kwargs):
            self.qmri_config = qmri_config
            kwargs.setdefault("file_format", "array_record")
            cfg = tfds.core.BuilderConfig(name=qmri_config.name,
                                          description=json.dumps(dataclasses.asdict(qmri_config)))
            super().__init__(config=cfg, **kwargs)

        def _info(self):
            c = self.qmri_config
            x, y, z = anatomy_lib.load_mni152(c.resolution_mm).shape
            hr, lr = (x, y, z - z % c.slice_factor), (x, y, z // c.slice_factor)
            taps = len(spin_echo_slice_kernel(c.slice_factor, c.time_bandwidth, reach=0.5)[0])
            feats = {k: tfds.features.Tensor(shape=lr if k in ("tse_lr", "ge_lr") else hr,
                                             dtype=np.float32) for k in IMAGE_KEYS}
            feats.update({k: tfds.features.Tensor(shape=lr if k == "brain_lr" else hr,
                                                  dtype=np.uint8) for k in (*MASK_KEYS, "brain_lr")})
            feats["kernel"] = tfds.features.Tensor(shape=(taps,), dtype=np.float32)
            feats["subject"] = tfds.features.Scalar(dtype=np.int32)
            feats["kernel_offset"] = tfds.features.Scalar(dtype=np.int32)
            return tfds.core.DatasetInfo(
                builder=self, description="Synthetic GE -> TSE pairs (qmri_jax.data.translation).",
                features=tfds.features.FeaturesDict(feats),
                metadata=tfds.core.MetadataDict(config=dataclasses.asdict(self.qmri_config)))

        def _split_generators(self, dl_manager):
            splits = datasets.subject_split(self.qmri_config.data_config())
            return {name: self._generate_examples(subjects=idx) for name, idx in splits.items()}

        def _generate_examples(self, subjects=()):
            for i in subjects:
                yield f"{i:05d}", translation_volume(self.qmri_config, i)

    return QmriTranslation3D


_CLASS = None


def __getattr__(name):  # the builder class without importing tfds at module import
    global _CLASS
    if name == "QmriTranslation3D":
        if _CLASS is None:
            _CLASS = _builder_class()
        return _CLASS
    raise AttributeError(name)


def build(config: TranslationConfig, data_dir: str, quiet: bool = True):
    """Build (once per config, under an exclusive lock) or reuse the dataset; the TFDS builder."""
    return datasets.prepare_locked(__getattr__("QmriTranslation3D"), config, data_dir,
                                   f"{config.name}_translation", quiet)


def load_split(builder, split: str) -> dict[str, np.ndarray]:
    """A split as stacked arrays ``{key: [num_subjects, ...]}``, ordered by subject."""
    source = builder.as_data_source(split=split)
    examples = sorted((source[i] for i in range(len(source))), key=lambda e: int(e["subject"]))
    if not examples:
        raise ValueError(f"{builder.name}/{builder.builder_config.name}: split {split!r} is empty")
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
