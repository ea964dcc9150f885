"""NIfTI in and out with nibabel: input affines kept, BIDS qMRI names, JSON sidecars, atomic writes."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import nibabel as nib
import numpy as np

from qmri_jax.io.series import ImageSeries
from qmri_jax.physics.protocol import MAP_UNITS, Protocol

__all__ = ["read_nifti_series", "write_nifti", "write_json", "write_text", "bids_map_name",
           "write_fit_outputs"]

#: BIDS qMRI suffixes for the parameters this package fits.
_BIDS_SUFFIX = {"T1": "T1map", "T2": "T2map", "T2s": "T2starmap", "PD": "PDmap", "a": "PDmap",
                "B1": "TB1map"}


def bids_map_name(param: str, prefix: str = "fit", desc: str | None = None) -> str:
    """File name of a parameter map by the BIDS qMRI convention, e.g. ``fit_T1map.nii.gz``.

    Parameters without a BIDS suffix (inversion efficiency ``k``, ``B``, ``refocus``, ``offset``)
    get ``desc-<param>`` with the generic suffix ``map``.
    """
    suffix = _BIDS_SUFFIX.get(param)
    if suffix is None:
        desc = f"{param}{desc.capitalize()}" if desc else param
        suffix = "map"
    parts = [prefix] + ([f"desc-{desc}"] if desc else []) + [suffix]
    return "_".join(parts) + ".nii.gz"


def _atomic(path: pathlib.Path, write_fn):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_nifti(path, data, affine) -> pathlib.Path:
    """Writes ``data`` (``[X, Y, Z, ...]``) with ``affine``; atomic (temp name, then rename)."""
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    elif data.dtype == np.float64:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(data, np.asarray(affine, float))
    img.header.set_xyzt_units("mm", "msec")
    _atomic(path, lambda tmp: nib.save(img, tmp))
    return pathlib.Path(path)


def write_json(path, obj) -> pathlib.Path:
    """Writes JSON atomically."""
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=float)
            f.write("\n")
    _atomic(path, w)
    return pathlib.Path(path)


def write_text(path, text: str) -> pathlib.Path:
    """Writes ``text`` atomically (temp name, then rename)."""
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic(path, w)
    return pathlib.Path(path)


def read_nifti_series(files, protocol: Protocol) -> ImageSeries:
    """Reads one NIfTI per image (3D, or a single 4D file with the images on the 4th axis).

    Args:
      files: paths; either ``len(protocol)`` 3D files or one 4D file with ``len(protocol)`` volumes.
      protocol: the acquisition (e.g. built from ``--ti`` values).

    Raises:
      ValueError: naming the file, when shapes or affines disagree, the image count does not match
        the protocol, or the data contain NaN/Inf.
    """
    files = [pathlib.Path(f) for f in files]
    vols, affine, ref = [], None, None
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f}: no such NIfTI file")
        img = nib.load(str(f))
        data = np.asarray(img.dataobj, np.float32)
        if data.ndim == 2:
            data = data[:, :, None]
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4:
            raise ValueError(f"{f}: expected a 3D or 4D image, got shape {data.shape}")
        if ref is None:
            ref, affine = (f, data.shape[:3]), img.affine
        elif data.shape[:3] != ref[1]:
            raise ValueError(f"NIfTI shapes disagree: {f} is {data.shape[:3]}, {ref[0]} is {ref[1]}")
        elif not np.allclose(img.affine, affine, atol=1e-3):
            raise ValueError(f"NIfTI affines disagree: {f} vs {ref[0]} (images must share one grid)")
        bad = ~np.isfinite(data)
        if bad.any():
            raise ValueError(f"{f}: {int(bad.sum())} voxels are NaN/Inf; images must be finite")
        vols.append(data)
    images = np.concatenate(vols, axis=-1)
    if images.shape[-1] != len(protocol):
        raise ValueError(f"{len(files)} NIfTI file(s) hold {images.shape[-1]} images but the "
                         f"protocol has {len(protocol)} (one TI/TE per image)")
    return ImageSeries(images, np.ones(images.shape, bool), protocol, affine,
                       [[str(f)] for f in files], None)


def write_fit_outputs(out_dir, result, affine, protocol: Protocol, prefix: str = "fit",
                      extra: dict | None = None) -> list[pathlib.Path]:
    """Writes maps, sqrt(CRLB) maps, the fit and convergence masks as NIfTI with JSON sidecars.

    Args:
      out_dir: output folder (created).
      result: a :class:`~qmri_jax.fitting.maps.MapResult` on an ``[X, Y, Z]`` or ``[X, Y]`` grid.
      affine: the input's affine (kept unchanged).
      protocol: the acquisition, recorded in the sidecars.
      prefix: file-name prefix (BIDS entities, e.g. ``sub-01``).
      extra: more sidecar fields.

    Returns:
      The written paths.
    """
    import qmri_jax
    out = pathlib.Path(out_dir)
    model = result.model
    common = {
        "Model": model.name,
        "ModelEquation": model.description,
        "FitMethod": ("Rician maximum likelihood" if result.options.loss == "rician"
                      else "nonlinear least squares") + " (Levenberg-Marquardt, dictionary init)",
        "SolverMaxIterations": result.options.max_iter,
        "NoiseSigma": result.sigma,
        "SamplesExcluded": result.n_excluded,
        "Protocol": protocol.to_dict(),
        "Software": f"qmri_jax {qmri_jax.__version__}",
    }
    common.update(extra or {})
    written = []
    def grid(a):  # 2D maps are written as single-slice volumes
        return a[:, :, None] if a.ndim == 2 else a

    for p, m in result.maps.items():
        unit = MAP_UNITS.get(p, "a.u.")
        for desc, data, what in ((None, m, "estimate"),
                                 ("crlbsd", result.crlb_sd[p], "sqrt of the Cramer-Rao lower bound")):
            path = out / bids_map_name(p, prefix, desc)
            written.append(write_nifti(path, grid(np.nan_to_num(data, nan=0.0)), affine))
            side = dict(common, Parameter=p, Units=unit, Description=what,
                        Note="0 outside the fitted mask")
            written.append(write_json(str(path).replace(".nii.gz", ".json"), side))
    for desc, data in (("fit", result.mask), ("converged", result.converged)):
        path = out / f"{prefix}_desc-{desc}_mask.nii.gz"
        written.append(write_nifti(path, grid(data), affine))
    return written
