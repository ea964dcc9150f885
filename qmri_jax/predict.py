"""Apply any trained task: evaluation of a workdir's checkpoint, and maps from files.

Run::

    python -m qmri_jax.main --config=configs/unet.py --workdir=DIR --mode=predict \
        --config.predict.inputs=t1w.nii.gz,t2w.nii.gz,pdw.nii.gz,flair.nii.gz

The network's training protocol is read from ``DIR/protocol.json``; inputs must have the same
number of contrasts, and (for DICOM, whose headers carry the timing) the same TR/TE/TI/flip per
contrast, unless ``--config.predict.allow_protocol_mismatch=True``. Images are normalised as in
training and the task's ``predict`` is applied slice by slice along the third (axial) axis, zero
padded to the network's size multiple. Maps are written on the input grid as
``pred_<map>.nii.gz`` (e.g. ``pred_T1map.nii.gz``) and, for a task with posterior samples (the
DDPM), their std as ``pred_desc-std_<map>.nii.gz``. Only the task protocol is used here
(:mod:`qmri_jax.tasks.base`): any task predicts the same way.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.engine import checkpoint as ckpt_lib
from qmri_jax.engine import init_state
from qmri_jax.tasks import create_task, predict_in_batches
from qmri_jax.tasks.data import load_data

__all__ = ["load_trained", "evaluate_checkpoint", "predict_files", "predict_volume",
           "sliding_window_predict", "check_protocol", "example_batch", "translate_files"]


def example_batch(task, image_shape) -> dict:
    """Zeros shaped like one training example of ``task`` with images ``image_shape``
    (``[*S, C_in]``): what ``create_state`` needs to shape the state."""
    spatial = tuple(image_shape[:-1])
    arrays = {"images": np.zeros((1, *image_shape), np.float32),
              "targets": np.zeros((1, *spatial, len(task.targets)), np.float32),
              "mask": np.zeros((1, *spatial), np.float32)}
    return {k: arrays[k] for k in task.batch_keys if k in arrays}


def load_trained(config, workdir: str, image_shape, prefer_best: bool = True, example=None):
    """``(task, state)`` restored from ``workdir``: best-on-validation if present and
    ``prefer_best``, else the latest step.

    Raises:
      FileNotFoundError: no checkpoint in ``workdir``.
      qmri_jax.engine.checkpoint.CheckpointError: a checkpoint is present but truncated/corrupt,
        or written by a different network (e.g. another config).
    """
    task = create_task(config)
    example = example if example is not None else example_batch(task, image_shape)
    state = init_state(task, example, config.seed)
    latest, best = ckpt_lib.create_managers(workdir)
    for mngr in ((best, latest) if prefer_best else (latest,)):
        restored = ckpt_lib.restore_latest(mngr, state)
        if restored is not None:
            return task, restored[0]
    raise FileNotFoundError(f"{workdir}: no checkpoint under checkpoints/ or checkpoints_best/; "
                            "train first (--mode=train)")


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Evaluate the workdir's checkpoint on the test split; writes ``workdir/eval``."""
    task = create_task(config)
    if hasattr(task, "load_data"):  # a task with its own data (3D volumes and patches)
        data = task.load_data(config)
        example = {k: data["train"][k][:1] for k in task.batch_keys}
        task, state = load_trained(config, workdir, None, example=example)
    else:
        data = load_data(config)
        task, state = load_trained(config, workdir, data["test"]["images"].shape[1:])
    return task.evaluate(state, data, os.path.join(workdir, "eval"))


def check_protocol(trained: dict, series_protocol, n_images: int, source: str,
                   allow_mismatch: bool = False) -> None:
    """Refuse inputs whose contrast count or timing differs from the training protocol."""
    want = trained["images"]
    if n_images != len(want):
        raise ValueError(
            f"{source}: {n_images} contrasts given, but the model was trained on {len(want)} "
            f"({', '.join(im['name'] for im in want)}) of protocol {trained['name']!r}")
    if series_protocol is None or allow_mismatch:
        return
    got = series_protocol.to_dict()["images"]
    for w, g in zip(want, got):
        keys = ("tr_ms", "te_ms", "ti_ms") + (("flip_deg",) if w["kind"] == "spgr" else ())
        for key in keys:  # the flip angle enters only the SPGR signal equation
            if abs(w[key] - g[key]) > 0.01 * max(abs(w[key]), 1.0):
                raise ValueError(
                    f"{source}: contrast {w['name']!r} has {key}={g[key]:g}, the model was trained "
                    f"with {w[key]:g} (protocol {trained['name']!r}); pass "
                    "--config.predict.allow_protocol_mismatch=True to apply it anyway")


def _pad_to(x, multiple, axes):
    pads = [(0, 0)] * x.ndim
    for a in axes:
        pads[a] = (0, (-x.shape[a]) % multiple)
    return np.pad(x, pads), [x.shape[a] for a in axes]


def predict_volume(predict_fn, volume: np.ndarray, multiple: int = 16, batch: int = 8,
                   outputs=("mean",)) -> dict[str, np.ndarray]:
    """A 2D ``predict_fn(images [B, H, W, C_in], key) -> {"mean", ...}`` over a volume
    ``[X, Y, Z, C_in]``, axial slice by slice (zero padded to ``multiple``): ``{output:
    [X, Y, Z, C_out]}`` for the ``outputs`` it gives."""
    x = np.moveaxis(volume, 2, 0)  # [Z, X, Y, C]
    x, (nx, ny) = _pad_to(x, multiple, (1, 2))
    # no batch larger than the volume: a padded batch would compute copies of its last slice
    res = predict_in_batches(predict_fn, x, min(batch, len(x)), outputs=outputs)
    return {k: np.moveaxis(v[:, :nx, :ny], 0, 2) for k, v in res.items()}


def sliding_window_predict(fn, volume: np.ndarray, patch, overlap: float = 0.5,
                           sigma_scale: float = 0.125):
    """3D network over ``[X, Y, Z, C_in]`` by patches ``patch`` fused with Gaussian weights
    (std ``sigma_scale * patch``, :func:`qmri_jax.data.patches.fuse_patches`). ``fn``:
    ``[B, *patch, C_in] -> [B, *patch, C_out]``."""
    from qmri_jax.data.patches import fuse_patches
    patch = tuple(min(p, s) for p, s in zip(patch, volume.shape[:3]))
    stride = tuple(max(1, int(p * (1 - overlap))) for p in patch)
    return fuse_patches(lambda x: np.asarray(fn(jnp.asarray(x))), volume, patch, stride,
                        sigma_scale, batch_size=1)["out"]


def predict_files(config, workdir: str) -> str:
    """Predict maps for ``config.predict.inputs``; returns the output folder."""
    from qmri_jax.io import dicom, nifti
    from qmri_jax.physics.protocol import Protocol

    if hasattr(create_task(config), "translate_volume"):  # one volume in, one volume out
        return translate_files(config, workdir)
    with open(os.path.join(workdir, "protocol.json")) as f:
        trained = json.load(f)
    inputs = [s for s in str(config.predict.inputs).split(",") if s]
    if not inputs:
        raise ValueError("--config.predict.inputs: give the weighted NIfTI files (comma separated, "
                         "in the training protocol's order) or one DICOM folder")
    protocol = Protocol.from_dict(trained)
    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        series = dicom.read_dicom_series(inputs[0])
        check_protocol(trained, series.protocol, series.images.shape[-1], inputs[0],
                       config.predict.allow_protocol_mismatch)
    else:
        n = _count_images(inputs)
        check_protocol(trained, None, n, ", ".join(inputs))
        given = config.predict.protocol
        if given and given != trained["name"]:
            from qmri_jax.physics.protocol import get_protocol
            check_protocol(trained, get_protocol(given), n, f"protocol {given!r}",
                           config.predict.allow_protocol_mismatch)
        series = nifti.read_nifti_series(inputs, protocol)
    from qmri_jax.data.acquisition import normalise_images
    from qmri_jax.fitting.maps import auto_mask
    brain = auto_mask(series.images)
    images = normalise_images(series.images.astype(np.float32), brain, config.data.normalisation)
    if images.ndim == 3:  # one slice: [X, Y, C] -> [X, Y, 1, C]
        images = images[:, :, None]
        brain = brain[:, :, None]
    task, state = load_trained(config, workdir, (16, 16, images.shape[-1]))
    invalid = ~series.valid.reshape(images.shape)
    if invalid.any():
        if getattr(task, "validity", False):  # clipped samples go in as such (NaN)
            images = np.where(invalid, np.nan, images).astype(np.float32)
            print(f"{int(invalid.sum())} clipped samples marked invalid for the model")
        else:
            print(f"note: {int(invalid.sum())} clipped samples are fed as measurements (this "
                  "model was trained without the validity mask, ddpm.validity)")
    kw = {}
    if getattr(task, "noise", False):  # a noise-conditioned DDPM: the scan's background noise
        from qmri_jax.physics import estimate_sigma_background
        kw["sigma"] = float(estimate_sigma_background(np.where(invalid, 0, images), valid=~invalid))
        print(f"noise SD from the background: {kw['sigma']:.4g} (normalised units)")
    fn = jax.jit(lambda x, key: task.predict(state, jnp.asarray(x), key, **kw))
    batch = int(config.predict.get("batch_size", 8))
    print(f"predicting {images.shape[2]} slice(s) of {images.shape[0]} x {images.shape[1]} "
          f"with {type(task).__name__} (batches of {min(batch, images.shape[2])}) ...",
          flush=True)
    maps = predict_volume(fn, images, multiple=task.size_multiple, batch=batch,
                          outputs=("mean", "std"))
    out = config.predict.output or os.path.join(workdir, "predict")
    os.makedirs(out, exist_ok=True)
    affine = series.affine
    for c, name in enumerate(task.targets):
        for key, desc in (("mean", None), ("std", "std")):
            if key in maps:
                vol = np.where(brain, maps[key][..., c], 0).astype(np.float32)
                nifti.write_nifti(os.path.join(out, nifti.bids_map_name(name, prefix="pred",
                                                                        desc=desc)),
                                  vol if series.images.ndim == 4 else vol[:, :, 0], affine)
    print(f"maps written to {out}: {', '.join(sorted(os.listdir(out)))}")
    return out


def translate_files(config, workdir: str) -> str:
    """``--mode=predict`` of a translation workdir: the TSE of one 3D GE NIfTI
    (``config.predict.inputs``), thin slices (``pred_TSE.nii.gz``) and, High-to-low, the thick
    slices of the model's kernel (``pred_TSE_thick.nii.gz``). The GE is divided by its
    99th percentile inside an automatic foreground mask, as in training. With
    ``config.predict.thick_tse`` (the acquired thick-slice TSE, ``[X, Y, Z / f]`` on the GE's
    field of view), the thin slices are also made consistent with it
    (``config.translation.consistency`` steps): ``pred_TSE_consistent.nii.gz``; both thin-slice
    outputs are then in the thick TSE's intensity units."""
    import nibabel as nib

    from qmri_jax.fitting.maps import auto_mask
    from qmri_jax.io import nifti
    path = str(config.predict.inputs)
    if not os.path.isfile(path) or "," in path:
        raise ValueError(f"--config.predict.inputs={path!r}: expected one 3D GE NIfTI file")
    img = nib.load(path)
    ge = np.asarray(img.get_fdata(dtype=np.float32))
    if ge.ndim != 3:
        raise ValueError(f"{path}: expected a 3D GE volume [X, Y, Z], got shape {ge.shape}")
    mask = auto_mask(ge[..., None])
    ge = ge / max(float(np.percentile(ge[mask], 99)), 1e-12)
    task = create_task(config)
    patch = tuple(config.translation.patch)
    example = {k: np.zeros((1, *patch, 1), np.float32) for k in ("input",)}
    task, state = load_trained(config, workdir, None, example=example)
    thick, scale = None, 1.0
    thick_path = str(config.predict.get("thick_tse", "") or "")
    if thick_path:
        thick = np.asarray(nib.load(thick_path).get_fdata(dtype=np.float32))
        want = (*ge.shape[:2], ge.shape[2] // task.factor)
        if thick.shape != want:
            raise ValueError(f"{thick_path}: config.predict.thick_tse has shape {thick.shape}; "
                             f"expected {want} (the GE {ge.shape} with slices {task.factor}x "
                             "thicker)")
        scale = max(float(np.percentile(thick[auto_mask(thick[..., None])], 99)), 1e-12)
        thick = thick / scale
    res = task.translate_volume(state, ge, thin=True, thick=thick)
    out = config.predict.output or os.path.join(workdir, "predict")
    os.makedirs(out, exist_ok=True)
    nifti.write_nifti(os.path.join(out, "pred_TSE.nii.gz"), res["mean"] * scale, img.affine)
    if "consistent" in res:
        nifti.write_nifti(os.path.join(out, "pred_TSE_consistent.nii.gz"),
                          res["consistent"] * scale, img.affine)
    if "thick" in res:
        f = task.factor
        affine = np.array(img.affine, float)
        affine[:3, 3] += affine[:3, 2] * (f - 1) / 2.0  # thick slice j's centre
        affine[:3, 2] *= f
        nifti.write_nifti(os.path.join(out, "pred_TSE_thick.nii.gz"), res["thick"], affine)
    print(f"TSE written to {out}: {', '.join(sorted(os.listdir(out)))}")
    return out


def _count_images(files) -> int:
    import nibabel as nib
    n = 0
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"{f}: no such NIfTI file")
        shape = nib.load(f).shape
        n += shape[3] if len(shape) == 4 else 1
    return n
