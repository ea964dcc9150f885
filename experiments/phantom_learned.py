"""Learned T1 maps of the NIST phantom's VIR series: a model trained with ``qmri_jax.main`` on
the VIR protocol, applied to the real images normalised like its training data
(``experiments.nist_phantom --checkpoint``)."""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["block_mean", "learned_t1"]


def block_mean(images, valid, f: int):
    """``images [X, Y, ...]`` averaged over ``f x f`` blocks of the first two axes (the trailing
    rows/columns that do not fill a block dropped). With ``valid`` (bool, the shape of
    ``images``) only the valid voxels of a block are averaged and a block value with fewer than
    half its voxels valid is NaN (not a measurement); ``valid=None``: every voxel counts."""
    images = np.asarray(images, np.float32)
    if f <= 1:
        return images if valid is None else np.where(valid, images, np.nan).astype(np.float32)
    cx, cy = (images.shape[0] // f) * f, (images.shape[1] // f) * f

    def blocks(a):
        return a[:cx, :cy].reshape(cx // f, f, cy // f, f, *a.shape[2:])

    if valid is None:
        return blocks(images).mean(axis=(1, 3))
    w = np.asarray(valid, np.float32)
    count = blocks(w).sum(axis=(1, 3))
    mean = blocks(images * w).sum(axis=(1, 3)) / np.maximum(count, 1.0)
    return np.where(count >= 0.5 * f * f, mean, np.nan).astype(np.float32)


def learned_t1(workdir, vir, mask, out, norm_mask=None, transform=None, apply_mm=None,
               batch_size=None) -> dict:
    """T1 and the model's other target maps (``{name: [X, Y]}``, plus ``name_std``, the posterior
    std, for a DDPM; NaN outside ``mask``) from a model trained with ``qmri_jax.main`` on the VIR
    protocol, applied to the real VIR images normalised like its training data.

    ``norm_mask`` (default ``mask``) is where the normalisation's percentile is taken;
    ``transform`` (``[X, Y, N] -> [X, Y, N]``, default none) is applied to the normalised images at
    the scan's grid, before they are brought to the network's voxel size (used by
    ``experiments.phantom_domain_gap``). ``apply_mm`` (default: the training voxel size, or the
    scan's own for a per-voxel model) is the voxel size the images are block-averaged to before
    the network sees them. ``batch_size`` (default: the workdir's ``predict.batch_size``; 1 for a
    per-voxel model at the scan's grid) is the batch the one slice is padded to."""
    import json

    import ml_collections

    import jax

    from qmri_jax import predict as predict_lib
    from qmri_jax.tasks import create_task, predict_in_batches
    from qmri_jax.data.acquisition import normalise_images

    workdir = pathlib.Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise SystemExit(f"--checkpoint {workdir}: no config.json (expected a qmri_jax.main workdir)")
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    trained = json.loads((workdir / "protocol.json").read_text())
    predict_lib.check_protocol(trained, vir.protocol, vir.images.shape[-1], str(workdir))
    images = vir.images[:, :, 0].astype(np.float32)  # [X, Y, N]
    valid = vir.valid[:, :, 0]
    images = normalise_images(images, mask if norm_mask is None else norm_mask,
                              config.data.normalisation)
    if transform is not None:
        images = np.asarray(transform(images), np.float32)
    # Apply a network with a spatial prior at the voxel size it was trained at (block averaging;
    # the maps are brought back to the scan grid by repetition): its receptive field and the
    # bottleneck attention's memory stay what they were in training. A per-voxel model (the
    # DDPM's VoxelDenoiser, told each voxel's noise SD) takes the scan's own voxels, as the fit
    # does: a block straddling a sphere's edge mixes two T1 and reads wrong (the least-squares
    # fit of 4 x 4 blocks of session A with VIR x 1.5 read sphere 1 +8.6% / +6.2% for two
    # block offsets, +4.8% voxelwise).
    task0 = create_task(config)
    per_voxel = bool(getattr(task0, "per_voxel", False))
    pixel_mm = float(np.linalg.norm(vir.affine[:3, 0]))
    if apply_mm is None:
        target_mm = pixel_mm if per_voxel else config.data.resolution_mm
    else:
        target_mm = float(apply_mm)
    f = max(1, int(round(target_mm / max(pixel_mm, 1e-3))))
    native = images.shape[:2]
    # A model given the validity mask sees the clipped samples as such (NaN; a block's sample is
    # the mean of its valid voxels, NaN where fewer than half are valid); one without it gets them
    # as measurements, as before the mask existed.
    with_validity = bool(getattr(task0, "validity", False))
    kw = {}
    if getattr(task0, "noise", False):  # the noise SD of a block mean of f x f voxels: sigma / f
        from qmri_jax.physics import estimate_sigma_background
        kw["sigma"] = float(estimate_sigma_background(images, valid=valid)) / f
    images = block_mean(images, valid if with_validity else None, f)
    # A per-voxel model at the scan's grid needs only the voxels of ``mask`` (the maps are NaN
    # elsewhere): they are packed into a square image, ~20x fewer than the 256 x 256 slice.
    packed = per_voxel and f == 1
    if packed:
        at = np.nonzero(mask)
        side = max(1, int(np.ceil(np.sqrt(len(at[0])))))
        flat = np.zeros((side * side, images.shape[-1]), np.float32)
        flat[:len(at[0])] = images[at]
        images = flat.reshape(side, side, -1)
    factor = task0.size_multiple
    x = np.pad(images[None], [(0, 0), (0, (-images.shape[0]) % factor),
                              (0, (-images.shape[1]) % factor), (0, 0)])
    nx, ny = images.shape[:2]
    try:
        task, state = predict_lib.load_trained(config, str(workdir), x.shape[1:],
                                               prefer_best=False)
    except FileNotFoundError:
        raise SystemExit(f"--checkpoint {workdir}: no checkpoint found") from None
    names = list(task.targets)

    def back(a):  # [nx, ny] at the network's grid -> the scan grid (edge rows repeated)
        if packed:
            full = np.full(native, np.nan, np.float32)
            full[at] = a[:nx, :ny].reshape(-1)[:len(at[0])]
            return full
        a = np.repeat(np.repeat(a[:nx, :ny], f, 0), f, 1)
        a = np.pad(a, [(0, max(0, native[0] - a.shape[0])), (0, max(0, native[1] - a.shape[1]))],
                   mode="edge")
        return a[:native[0], :native[1]]

    fn = jax.jit(lambda im, key: task.predict(state, im, key, **kw))
    # The one slice padded to a batch of predict.batch_size copies (the noise draws of the DDPM's
    # evaluation batches); alone for a per-voxel model at the scan's grid (a 256 x 256 slice in a
    # batch of 8 copies needs more memory than a laptop has).
    if batch_size is None:
        batch_size = 1 if (per_voxel and f == 1) else config.predict.get("batch_size", 8)
    batch = int(batch_size)
    out = predict_in_batches(fn, x, batch, jax.random.key(0))
    res = {"kind": f"{type(task).__name__} at {f * pixel_mm:.1f} mm"
                   + (" (the mask's voxels only)" if packed else "") + ", clipped samples "
                   + ("marked invalid" if with_validity else "fed as measured (no validity mask)")
                   + (f", noise SD {kw['sigma']:.4g} given" if kw else "")}
    for i, name in enumerate(names):
        res[name] = np.where(mask, back(out["mean"][0, ..., i]), np.nan)
        if "std" in out:
            res[f"{name}_std"] = np.where(mask, back(out["std"][0, ..., i]), np.nan)
    return res

