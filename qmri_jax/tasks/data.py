"""The synthetic splits every supervised task trains on, from ``config.data``: images, physical
target maps, the brain mask and the tissue labels the reports use."""

from __future__ import annotations

import os

import numpy as np

from qmri_jax.data import datasets
from qmri_jax.physics.protocol import get_protocol

__all__ = ["data_config", "as_batch_arrays", "load_data", "data_dir", "cut_test_slices"]

_LABELS = ("GM", "WM", "CSF", "lesion", "putamen", "thalamus", "subject", "slice")


def data_config(config) -> datasets.DataConfig:
    """The typed, validated :class:`~qmri_jax.data.datasets.DataConfig` of ``config.data``."""
    d = config.data
    return datasets.DataConfig(
        protocol=d.protocol, field=d.field, resolution_mm=d.resolution_mm,
        num_subjects=d.num_subjects, geometric_fraction=d.geometric_fraction,
        pathology_fraction=d.pathology_fraction, slices_per_subject=d.slices_per_subject,
        snr=float(d.snr), receive_bias=d.receive_bias, transmit_bias=d.transmit_bias,
        k_spread=float(d.get("k_spread", 0.0)), slice_thickness_vox=d.slice_thickness_vox,
        geometric_radius=tuple(d.get("geometric_radius", datasets.DataConfig.geometric_radius)),
        pathology_splits=tuple(d.get("pathology_splits", ())),
        pathology_kinds=tuple(d.get("pathology_kinds", ("tumour", "ms"))),
        normalisation=d.normalisation, seed=d.seed, cv_folds=int(d.get("cv_folds", 0)),
        cv_fold=int(d.get("cv_fold", 0)))


def as_batch_arrays(arrays: dict, targets) -> dict:
    """A split's stored arrays -> ``images [N, *S, C_in]``, ``targets [N, *S, C]`` (``targets``
    order, physical units; ``B`` derived as ``1 + k``), ``mask [N, *S]`` plus the labels
    present."""
    out = {"images": arrays["images"].astype(np.float32),
           "targets": np.stack([_target(arrays, t) for t in targets], axis=-1).astype(np.float32),
           "mask": arrays["brain"].astype(np.float32)}
    out.update({k: arrays[k] for k in _LABELS if k in arrays})
    return out


def _target(arrays: dict, name: str) -> np.ndarray:
    """A stored map, or ``B``: the IR-FSE inversion factor ``1 + k`` (0 outside the brain, like
    ``k``), the form of the inversion efficiency the qMRI Diffusor estimates."""
    if name == "B" and "B" not in arrays and "k" in arrays:
        return np.where(arrays["brain"], 1.0 + arrays["k"], 0.0)
    if name not in arrays:
        raise ValueError(f"config.targets: no map {name!r} in the data (its maps: "
                         f"{sorted(k for k in arrays if k in datasets.MAP_KEYS)}, and B = 1 + k)")
    return arrays[name]


def load_data(config) -> dict:
    """``{split: arrays}`` for train / validation / test (TFDS array_record, built once under
    ``config.data.data_dir``; axial slices ``[N, H, W, ...]``, or with ``config.data.dims = 3``
    volumes ``[N, X, Y, Z, ...]``), ``"train_fn"`` (``epoch -> arrays``) with
    ``config.data.on_the_fly``, and ``"protocol"`` (the acquisition protocol's dict)."""
    dcfg = data_config(config)
    dims = int(config.data.get("dims", 2))
    if dims not in (2, 3):
        raise ValueError(f"config.data.dims={dims}: expected 2 (slices) or 3 (volumes)")
    builder = datasets.build(dcfg, data_dir(config), dims=dims)
    protocol = get_protocol(dcfg.protocol)
    index = input_index(protocol, tuple(config.data.get("inputs", ())))
    out = {s: select_inputs(as_batch_arrays(datasets.load_split_arrays(builder, s),
                                            config.targets), index)
           for s in datasets.SPLITS}
    if config.data.on_the_fly:
        out["train_fn"] = lambda epoch: select_inputs(as_batch_arrays(
            datasets.epoch_arrays(dcfg, "train", epoch, dims), config.targets), index)
    out["protocol"] = (protocol if index is None else protocol.subset(index)).to_dict()
    return out


def data_dir(config) -> str:
    """``config.data.data_dir``, or ``~/.cache/qmri_jax/tfds`` (shared between workdirs)."""
    return config.data.data_dir or os.path.join(os.path.expanduser("~"), ".cache", "qmri_jax",
                                                "tfds")


def input_protocol(config):
    """The protocol of the images a task sees: ``config.data.protocol`` restricted to
    ``config.data.inputs``."""
    protocol = get_protocol(config.data.protocol)
    index = input_index(protocol, tuple(config.data.get("inputs", ())))
    return protocol if index is None else protocol.subset(index)


def input_index(protocol, names: tuple) -> list[int] | None:
    """Channel indices of the images ``names`` (``config.data.inputs``) in ``protocol``; None for
    all of them (``()``)."""
    if not names:
        return None
    unknown = [n for n in names if n not in protocol.names]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"config.data.inputs={list(names)}: expected distinct image names of "
                         f"protocol {protocol.name!r} {list(protocol.names)}"
                         + (f"; unknown {unknown}" if unknown else ""))
    return [protocol.names.index(n) for n in names]


def select_inputs(arrays: dict, index: list[int] | None) -> dict:
    """``arrays`` with ``images [..., C]`` restricted to the channels ``index`` (None: all)."""
    if index is None:
        return arrays
    return {**arrays, "images": np.ascontiguousarray(arrays["images"][..., index])}


def cut_test_slices(config, volumes: dict, pred: np.ndarray) -> tuple[np.ndarray, dict]:
    """3D test volumes (``volumes [N, X, Y, Z, ...]``, predictions ``[N, X, Y, Z, C]``) cut into
    the axial slices the 2D test split has (:func:`qmri_jax.data.datasets.slice_indices`, the
    same subjects and images): ``(pred [M, X, Y, C], arrays [M, X, Y, ...])`` with ``slice``
    set, so a volume model is scored on exactly the 2D model's test voxels."""
    count = int(config.data.slices_per_subject)
    preds, parts = [], {k: [] for k in volumes}
    for i in range(len(pred)):
        zs = datasets.slice_indices(volumes["mask"][i].astype(bool), count)
        preds.append(np.moveaxis(pred[i][:, :, zs], 2, 0))
        for k, v in volumes.items():
            if k == "subject":
                parts[k].append(np.full(len(zs), v[i]))
            elif k == "slice":
                parts[k].append(zs.astype(np.int32))
            else:
                parts[k].append(np.moveaxis(np.asarray(v[i])[:, :, zs], 2, 0))
    return np.concatenate(preds), {k: np.concatenate(v) for k, v in parts.items()}
