"""Paired (weighted images, quantitative maps) datasets: generation and TFDS builders.

Two ``tensorflow_datasets`` builders, written as array_record (no TensorFlow needed to build or
read): :class:`QmriBrain2D` (axial slices) and :class:`QmriBrain3D` (volumes). Each example holds

* ``images``: ``[H, W, N]`` (2D) or ``[X, Y, Z, N]`` (3D) float32, the protocol's contrasts;
* ``T1``, ``T2`` (ms), ``PD`` (a.u.), ``k`` (inversion efficiency): ``[H, W]`` / ``[X, Y, Z]``;
* masks ``brain``, ``GM``, ``WM``, ``CSF``, ``lesion``, ``putamen``, ``thalamus`` (uint8, same
  spatial shape; the last two: :func:`qmri_jax.data.anatomy.deep_gm_rois`);
* ``subject`` (int, the subject index) and ``slice`` (the axial index, -1 for volumes).

Splits are by subject (a subject's slices never straddle splits). Everything is a deterministic
function of :class:`DataConfig`: the same config gives byte-identical array_record files.

Usage::

    from qmri_jax.data import datasets
    cfg = datasets.DataConfig(num_subjects=40)
    builder = datasets.build(cfg, data_dir="~/qmri_data")       # builds once, then reuses
    train = datasets.load_split_arrays(builder, "train")         # dict of stacked numpy arrays
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os

import numpy as np

from qmri_jax.data import acquisition, anatomy as anatomy_lib, subjects as subjects_lib
from qmri_jax.physics.protocol import get_protocol

__all__ = ["DataConfig", "subject_split", "make_subject", "subject_volume", "subject_slices",
           "slice_indices", "epoch_arrays", "build", "prepare_locked", "load_split_arrays",
           "QmriBrain2D", "QmriBrain3D", "MAP_KEYS", "MASK_KEYS", "SPLITS"]

MAP_KEYS = ("T1", "T2", "PD", "k")
MASK_KEYS = subjects_lib.MASK_NAMES
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything that determines a synthetic dataset.

    Attributes:
      protocol: name for :func:`qmri_jax.physics.protocol.get_protocol`.
      field: ``"1.5T"`` or ``"3T"``.
      resolution_mm: isotropic voxel size of the anatomy (integer mm).
      num_subjects: total subjects (split by ``split_fractions``).
      geometric_fraction: fraction of subjects that are random-ellipsoid "geometric" subjects.
      pathology_fraction: fraction of brain subjects with pathology (alternating tumour / MS).
      pathology_splits: the splits whose subjects may have pathology; ``()`` = every split.
        ``("test",)`` trains on healthy brains only and tests on patients (the thesis's tumour
        experiment).
      pathology_kinds: the kinds drawn, alternating by subject index: ``("tumour", "ms")``,
        ``("tumour",)`` or ``("ms",)``.
      slices_per_subject: axial slices per subject for 2D data (evenly spaced over slices whose
        brain area is >= 40% of the largest).
      snr, receive_bias, transmit_bias, slice_thickness_vox, normalisation: see
        :class:`qmri_jax.data.acquisition.AcquisitionConfig`.
      geometric_radius: ``(low, high)`` ellipsoid semi-axes of geometric subjects as fractions of
        each axis's size.
      split_fractions: train / validation / test fractions of subjects.
      seed: master seed.
      cv_folds: 0: the split by ``split_fractions``; k >= 2: k-fold cross-validation, the test
        split is fold ``cv_fold`` of the subjects (folds of one seeded permutation, disjoint,
        covering every subject once), validation ``split_fractions[1]`` of the rest.
      cv_fold: the test fold, ``0 <= cv_fold < cv_folds``.
    """

    protocol: str = "four_contrast_brain"
    field: str = "3T"
    resolution_mm: int = 2
    num_subjects: int = 40
    geometric_fraction: float = 0.0
    pathology_fraction: float = 0.25
    pathology_splits: tuple = ()
    pathology_kinds: tuple = ("tumour", "ms")
    slices_per_subject: int = 16
    snr: float = float("inf")
    receive_bias: float = 0.0
    transmit_bias: float = 0.0
    k_spread: float = 0.0
    geometric_radius: tuple = subjects_lib.GEOMETRIC_RADIUS
    slice_thickness_vox: int = 1
    normalisation: str = "none"
    split_fractions: tuple = (0.8, 0.1, 0.1)
    seed: int = 0
    cv_folds: int = 0
    cv_fold: int = 0

    def __post_init__(self):
        get_protocol(self.protocol)  # raises with the list of known protocols
        if self.num_subjects < 3:
            raise ValueError(f"num_subjects={self.num_subjects}: need >= 3 (one per split)")
        if abs(sum(self.split_fractions) - 1) > 1e-6 or len(self.split_fractions) != 3:
            raise ValueError(f"split_fractions={self.split_fractions}: expected 3 fractions "
                             "summing to 1")
        radius = tuple(self.geometric_radius)
        if len(radius) != 2 or not 0.0 < radius[0] <= radius[1] <= 0.5:
            raise ValueError(f"geometric_radius={self.geometric_radius}: expected (low, high) "
                             "fractions with 0 < low <= high <= 0.5")
        bad = [x for x in self.pathology_splits if x not in SPLITS]
        if bad:
            raise ValueError(f"pathology_splits={self.pathology_splits}: unknown {bad}; expected "
                             f"names from {SPLITS}")
        kinds = tuple(self.pathology_kinds)
        if not kinds or any(k not in ("tumour", "ms") for k in kinds):
            raise ValueError(f"pathology_kinds={self.pathology_kinds}: expected a non-empty "
                             "tuple of 'tumour' and/or 'ms'")
        if self.cv_folds == 1 or self.cv_folds < 0 or self.cv_folds > self.num_subjects:
            raise ValueError(f"cv_folds={self.cv_folds}: expected 0 (no cross-validation) or "
                             f"2..num_subjects ({self.num_subjects})")
        if self.cv_folds and not 0 <= self.cv_fold < self.cv_folds:
            raise ValueError(f"cv_fold={self.cv_fold}: expected 0 <= cv_fold < cv_folds "
                             f"({self.cv_folds})")
        if not self.cv_folds and self.cv_fold:
            raise ValueError(f"cv_fold={self.cv_fold} without cv_folds: set cv_folds >= 2")
        self.acquisition()  # validates the acquisition fields

    def acquisition(self) -> acquisition.AcquisitionConfig:
        return acquisition.AcquisitionConfig(
            snr=self.snr, receive_bias=self.receive_bias, transmit_bias=self.transmit_bias,
            k_spread=self.k_spread,
            slice_thickness_vox=self.slice_thickness_vox, normalisation=self.normalisation)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        d["snr"] = "inf" if not np.isfinite(self.snr) else float(self.snr)
        if not self.k_spread:  # added later: keep the names (caches) of the datasets without it
            del d["k_spread"]
        if tuple(self.geometric_radius) == subjects_lib.GEOMETRIC_RADIUS:  # likewise
            del d["geometric_radius"]
        else:
            d["geometric_radius"] = [float(r) for r in self.geometric_radius]
        if not self.cv_folds:  # likewise
            del d["cv_folds"], d["cv_fold"]
        if not self.pathology_splits:  # likewise
            del d["pathology_splits"]
        else:
            d["pathology_splits"] = list(self.pathology_splits)
        if tuple(self.pathology_kinds) == ("tumour", "ms"):  # likewise
            del d["pathology_kinds"]
        else:
            d["pathology_kinds"] = list(self.pathology_kinds)
        return d

    @property
    def name(self) -> str:
        """A readable, unique config name (TFDS builder-config name)."""
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        field = self.field.replace(".", "p")
        return f"{self.protocol}_{field}_{self.resolution_mm}mm_n{self.num_subjects}_{digest}"


def subject_split(config: DataConfig) -> dict[str, list[int]]:
    """Subject indices of each split (disjoint, covering ``range(num_subjects)``)."""
    n = config.num_subjects
    perm = np.random.default_rng([config.seed, 7919]).permutation(n)
    if config.cv_folds:
        fold = np.array_split(perm, config.cv_folds)[config.cv_fold]
        rest = np.array([i for i in perm if i not in set(fold.tolist())])
        n_val = max(1, int(round(config.split_fractions[1] * n)))
        if len(rest) - n_val < 1:
            raise ValueError(f"num_subjects={n} with cv_folds={config.cv_folds} leaves no "
                             "training subject")
        return {"train": sorted(rest[n_val:].tolist()), "validation": sorted(rest[:n_val].tolist()),
                "test": sorted(fold.tolist())}
    n_val = max(1, int(round(config.split_fractions[1] * n)))
    n_test = max(1, int(round(config.split_fractions[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"num_subjects={n} leaves no training subject with fractions "
                         f"{config.split_fractions}")
    return {"train": sorted(perm[:n_train].tolist()),
            "validation": sorted(perm[n_train:n_train + n_val].tolist()),
            "test": sorted(perm[n_train + n_val:].tolist())}


def make_subject(config: DataConfig, index: int, epoch: int | None = None):
    """``(Subject, rng, Anatomy)`` of subject ``index`` (its own seed; ``epoch``: on-the-fly)."""
    anat = anatomy_lib.load_mni152(config.resolution_mm)
    seed = [config.seed, index] if epoch is None else [config.seed, index, 1_000_003 + epoch]
    rng = np.random.default_rng(seed)
    # Deterministic assignment of subject type by index.
    u = np.random.default_rng([config.seed, index, 17]).uniform(size=2)
    if u[0] < config.geometric_fraction:
        subj = subjects_lib.make_geometric_subject(rng, anat.shape, anat.affine,
                                                   radius=tuple(config.geometric_radius))
    else:
        pathology = None
        allowed = not config.pathology_splits or any(
            index in subject_split(config)[sp] for sp in config.pathology_splits)
        if allowed and u[1] < config.pathology_fraction:
            kinds = tuple(config.pathology_kinds)
            pathology = kinds[index % len(kinds)]
        subj = subjects_lib.make_brain_subject(rng, anat, config.field, pathology=pathology)
    return subj, rng, anat


def subject_volume(config: DataConfig, index: int, epoch: int | None = None) -> dict:
    """One subject as a 3D example dict (see the module docstring for keys).

    Args:
      config: the dataset config.
      index: subject index (its own seed: the subject does not depend on the others).
      epoch: None for the fixed dataset subject; an int for fresh on-the-fly subjects.
    """
    subj, rng, anat = make_subject(config, index, epoch)
    protocol = get_protocol(config.protocol)
    images, fields = acquisition.acquire(rng, subj.maps, protocol, subj.brain,
                                         config.acquisition(), anat.voxel_mm)
    masks = subj.masks()
    ex = {"images": images, "k": np.where(subj.brain, fields["k"], 0).astype(np.float32)}
    for p in ("T1", "T2", "PD"):
        ex[p] = subj.maps[p].astype(np.float32)
    for m in MASK_KEYS:
        ex[m] = masks[m]
    ex["subject"] = np.int32(index)
    ex["slice"] = np.int32(-1)
    ex["_affine"] = subj.affine
    ex["_meta"] = subj.meta
    return ex


def slice_indices(brain: np.ndarray, count: int) -> np.ndarray:
    """The axial indices of a subject's 2D examples: ``count`` evenly spaced over the slices of
    ``brain [X, Y, Z]`` whose brain area is >= 40% of the largest."""
    area = brain.sum(axis=(0, 1))
    good = np.flatnonzero(area >= 0.4 * area.max())
    if len(good) == 0:
        raise ValueError("subject has an empty brain mask")
    pick = np.linspace(0, len(good) - 1, min(count, len(good))).round().astype(int)
    return good[np.unique(pick)]


def subject_slices(config: DataConfig, index: int, epoch: int | None = None) -> list[dict]:
    """One subject as 2D axial slice examples ``[H, W, ...]``."""
    vol = subject_volume(config, index, epoch)
    out = []
    for z in slice_indices(vol["brain"].astype(bool), config.slices_per_subject):
        ex = {k: v[:, :, z] for k, v in vol.items() if isinstance(v, np.ndarray) and v.ndim >= 3}
        ex["subject"] = np.int32(index)
        ex["slice"] = np.int32(z)
        out.append(ex)
    return out


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
    keys = ["images", *MAP_KEYS, *MASK_KEYS, "subject", "slice"]
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in keys}


def epoch_arrays(config: DataConfig, split: str = "train", epoch: int = 0,
                 dims: int = 2) -> dict[str, np.ndarray]:
    """On-the-fly mode: fresh subjects (new anatomy warps, parameters, noise) for each ``epoch``,
    stacked as arrays ``[num_examples, ...]``; the split's subject *indices* are kept so a subject
    number never moves between splits."""
    examples = []
    for i in subject_split(config)[split]:
        if dims == 2:
            examples.extend(subject_slices(config, i, epoch))
        else:
            examples.append(subject_volume(config, i, epoch))
    return _stack(examples)


# TFDS builders (tensorflow_datasets is imported lazily: it is only needed to build or read).


def _builder_classes():
    import tensorflow_datasets as tfds

    class _QmriBase(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.3.0")
        RELEASE_NOTES = {"1.0.0": "MNI152 anatomy, literature tissue table, pathology, acquisition.",
                         "1.1.0": "'p95' normalisation: one factor per series (was per image).",
                         "1.2.0": "Deep grey matter ROIs 'putamen', 'thalamus'.", "1.3.0":
                         "IR-FSE images carry the subject's inversion (B = 1 + k)."}
        DIMS = 2

        def __init__(self, *, qmri_config: DataConfig, **kwargs):
            self.qmri_config = qmri_config
            kwargs.setdefault("file_format", "array_record")
            cfg = tfds.core.BuilderConfig(name=qmri_config.name,
                                          description=json.dumps(qmri_config.to_dict()))
            super().__init__(config=cfg, **kwargs)

        def _info(self):
            c = self.qmri_config
            shape = anatomy_lib.load_mni152(c.resolution_mm).shape
            spatial = shape[:2] if self.DIMS == 2 else shape
            n = len(get_protocol(c.protocol))
            feats = {"images": tfds.features.Tensor(shape=(*spatial, n), dtype=np.float32)}
            for k in MAP_KEYS:
                feats[k] = tfds.features.Tensor(shape=spatial, dtype=np.float32)
            for k in MASK_KEYS:
                feats[k] = tfds.features.Tensor(shape=spatial, dtype=np.uint8)
            feats["subject"] = tfds.features.Scalar(dtype=np.int32)
            feats["slice"] = tfds.features.Scalar(dtype=np.int32)
            protocol = get_protocol(c.protocol)
            return tfds.core.DatasetInfo(
                builder=self, description=(
                    "Synthetic qMRI pairs from the MNI152 anatomy. Protocol: "
                    + json.dumps(protocol.to_dict()) + " Maps: T1/T2 in ms, PD a.u., k."),
                features=tfds.features.FeaturesDict(feats),
                metadata=tfds.core.MetadataDict(config=c.to_dict(),
                                                protocol=protocol.to_dict()))

        def _split_generators(self, dl_manager):
            splits = subject_split(self.qmri_config)
            return {name: self._generate_examples(subjects=idx) for name, idx in splits.items()}

        def _generate_examples(self, subjects=()):
            for i in subjects:
                if self.DIMS == 2:
                    for ex in subject_slices(self.qmri_config, i):
                        yield f"{i:05d}_{int(ex['slice']):04d}", _features(ex)
                else:
                    yield f"{i:05d}", _features(subject_volume(self.qmri_config, i))

    class QmriBrain2D(_QmriBase):
        """Axial 2D slices ``[H, W]`` of synthetic subjects."""
        name = "qmri_brain_2d"
        DIMS = 2

    class QmriBrain3D(_QmriBase):
        """Whole synthetic volumes ``[X, Y, Z]``."""
        name = "qmri_brain_3d"
        DIMS = 3

    return QmriBrain2D, QmriBrain3D


def _features(ex: dict) -> dict:
    return {k: v for k, v in ex.items() if not k.startswith("_")}


_CLASSES = None


def _classes():
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _builder_classes()
    return _CLASSES


def __getattr__(name):  # QmriBrain2D / QmriBrain3D without importing tfds at module import
    if name == "QmriBrain2D":
        return _classes()[0]
    if name == "QmriBrain3D":
        return _classes()[1]
    raise AttributeError(name)


def build(config: DataConfig, data_dir: str, dims: int = 2, quiet: bool = True):
    """Build (or reuse) the dataset of ``config`` under ``data_dir`` (created): 2D axial slices
    (``dims=2``) or 3D volumes; ``quiet`` hides TFDS progress bars. Returns the TFDS builder."""
    if dims not in (2, 3):
        raise ValueError(f"dims={dims}: expected 2 or 3")
    return prepare_locked(_classes()[0 if dims == 2 else 1], config, data_dir,
                          f"{config.name}_{dims}d", quiet)


def prepare_locked(cls, config, data_dir: str, lock_name: str, quiet: bool = True):
    """``cls(qmri_config=config, data_dir=data_dir)`` prepared once: trials of a sweep started
    together build the same dataset, so one builds and the others wait and reuse it (an
    exclusive lock ``.<lock_name>.lock`` in the data folder). Returns the builder."""
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    if quiet:
        tfds.disable_progress_bar()
    with open(os.path.join(data_dir, f".{lock_name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            builder = cls(qmri_config=config, data_dir=data_dir)
            builder.download_and_prepare()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return builder


def load_split_arrays(builder, split: str) -> dict[str, np.ndarray]:
    """Read a whole split into stacked numpy arrays ``{key: [num_examples, ...]}``, ordered by
    (subject, slice) so the result does not depend on TFDS's storage order."""
    source = builder.as_data_source(split=split)
    n = len(source)
    if n == 0:
        raise ValueError(f"{builder.name}/{builder.builder_config.name}: split {split!r} is empty")
    examples = [source[i] for i in range(n)]
    examples.sort(key=lambda e: (int(e["subject"]), int(e["slice"])))
    return _stack(examples)
