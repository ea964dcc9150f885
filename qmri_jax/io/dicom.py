"""DICOM series reading with pydicom: skip non-DICOM files, sort by TI/TE/flip, build the Protocol.

Never used under ``jit``. Errors name the offending file and field.
"""

from __future__ import annotations

import collections
import os
import pathlib

import numpy as np

from qmri_jax.io.series import ImageSeries
from qmri_jax.physics.protocol import Protocol

__all__ = ["read_dicom_series", "DicomError"]


class DicomError(ValueError):
    """A DICOM input that cannot be turned into one image series."""


def _iter_files(paths):
    if isinstance(paths, (str, os.PathLike)):  # one file or folder, not its characters
        paths = [paths]
    for p in paths:
        p = pathlib.Path(p)
        if p.is_dir():
            for root, _, names in os.walk(p):
                for n in sorted(names):
                    yield pathlib.Path(root) / n
        elif p.is_file():
            yield p
        else:
            raise DicomError(f"{p}: no such file or folder")


def _float(ds, keyword, path, required=True):
    value = ds.get(keyword, None)
    if value is None or value == "":
        if required:
            raise DicomError(f"{path}: missing DICOM field {keyword}")
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DicomError(f"{path}: DICOM field {keyword} = {value!r} is not a number") from None


def _inversion_time(ds, path):
    """InversionTime in ms, or None when absent or 0 (spin-echo headers often carry TI = 0)."""
    ti = _float(ds, "InversionTime", path, required=False)
    return None if ti is None or ti == 0 else ti


def _clipped(raw, bits, pixel_representation):
    """Samples at the stored range's limits: ``2^b - 1`` for unsigned pixels; ``2^(b-1) - 1`` and
    ``-2^(b-1)`` for signed ones (PixelRepresentation 1)."""
    if pixel_representation == 1:
        return (raw >= 2 ** (bits - 1) - 1) | (raw <= -(2 ** (bits - 1)))
    return raw >= 2**bits - 1


def _sequence(ds) -> tuple[str, ...]:
    seq = ds.get("ScanningSequence", "")
    items = [seq] if isinstance(seq, str) else list(seq)
    return tuple(sorted(str(s).upper() for s in items if str(s)))


def _kind(ds, ti):
    seq = _sequence(ds)
    if ti is not None or "IR" in seq:
        return "ir"
    if "GR" in seq and "SE" not in seq:
        return "spgr"
    return "se"


def read_dicom_series(paths, kind: str | None = None, name: str = "dicom") -> ImageSeries:
    """Reads weighted images from DICOM files/folders into one :class:`ImageSeries`.

    Files that are not DICOM are skipped. Images are grouped by contrast (TI, TE, TR, flip angle),
    contrasts sorted by TI, then TE, then flip angle; within a contrast, slices are sorted along
    the slice normal.

    Args:
      paths: files or folders (searched recursively), e.g. one folder per inversion time.
      kind: sequence kind for every image (``"ir"``, ``"se"``, ``"spgr"``); default from the headers
        (InversionTime present and > 0, or ScanningSequence IR -> ``ir``; GR -> ``spgr``; else
        ``se``). FlipAngle is required for ``spgr``; for spin-echo and IR it defaults to 90.
      name: protocol name.

    Returns:
      :class:`ImageSeries` with ``images [X, Y, Z, N]``.

    Raises:
      DicomError: no DICOM files; mixed series (different matrix, orientation, sequence or slice
        sets); an IR image without InversionTime; a gradient-echo image without FlipAngle;
        duplicate images. Clipped samples (at the limits of the stored range, signed or unsigned
        per PixelRepresentation) are marked invalid in ``valid``.
    """
    import pydicom

    records = []
    skipped = []
    for path in _iter_files(paths):
        try:
            ds = pydicom.dcmread(path)
        except (pydicom.errors.InvalidDicomError, OSError):
            skipped.append(path)
            continue
        if "PixelData" not in ds:
            skipped.append(path)
            continue
        records.append((path, ds))
    if not records:
        raise DicomError(f"no DICOM images found in {[str(p) for p in paths]} "
                         f"({len(skipped)} non-DICOM files skipped)")

    # Header consistency: one matrix, one orientation, one bit depth.
    first_path, first = records[0]
    ref_shape = (int(first.Rows), int(first.Columns))
    ref_iop = np.asarray(first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    ref_seq = _sequence(first)
    any_ti = any(_inversion_time(ds, path) is not None for path, ds in records)
    for path, ds in records:
        shape = (int(ds.Rows), int(ds.Columns))
        if shape != ref_shape:
            raise DicomError(f"mixed series: {path} is {shape[0]}x{shape[1]} but {first_path} is "
                             f"{ref_shape[0]}x{ref_shape[1]} (Rows x Columns)")
        iop = np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
        if not np.allclose(iop, ref_iop, atol=1e-3):
            raise DicomError(f"mixed series: {path} has ImageOrientationPatient {iop.tolist()}, "
                             f"{first_path} has {ref_iop.tolist()}")
        seq = _sequence(ds)
        if seq != ref_seq:
            raise DicomError(f"mixed series: {path} has ScanningSequence {list(seq)} but "
                             f"{first_path} has {list(ref_seq)} (one acquisition type per input)")
    groups = collections.defaultdict(list)
    for path, ds in records:
        ti = _inversion_time(ds, path)
        if any_ti and ti is None:
            raise DicomError(f"{path}: missing InversionTime (0018,0082); other images of this "
                             "inversion-recovery series have it")
        tr = _float(ds, "RepetitionTime", path)
        te = _float(ds, "EchoTime", path)
        k = kind or _kind(ds, ti)
        # The flip angle drives the gradient-echo signal; spin-echo and IR models do not use it.
        fa = _float(ds, "FlipAngle", path, required=k in ("spgr", "mprage"))
        fa = 90.0 if fa is None else fa
        contrast = (k, round(ti or 0.0, 3), round(te, 3), round(tr, 3), round(fa, 3))
        groups[contrast].append((path, ds))

    kinds = {c[0] for c in groups}
    if len(kinds) > 1:
        raise DicomError(f"mixed series: sequence kinds {sorted(kinds)} in one input "
                         f"(e.g. {[str(groups[c][0][0]) for c in groups][:3]})")
    contrasts = sorted(groups, key=lambda c: (c[1], c[2], c[4], c[3]))

    normal = np.cross(ref_iop[:3], ref_iop[3:])
    slice_sets = {}
    for c in contrasts:
        pos = []
        for path, ds in groups[c]:
            ipp = np.asarray(ds.get("ImagePositionPatient", [0, 0, 0]), float)
            pos.append(round(float(ipp @ normal), 2))
        if len(set(pos)) != len(pos):
            dup = [str(p) for (p, _), s in zip(groups[c], pos) if pos.count(s) > 1][:2]
            raise DicomError(f"mixed series: two images with the same contrast (TI={c[1]}, TE={c[2]}, "
                             f"flip={c[4]}) at the same slice position: {dup}")
        slice_sets[c] = sorted(zip(pos, range(len(pos))))
    ref_pos = [p for p, _ in slice_sets[contrasts[0]]]
    for c in contrasts[1:]:
        pos = [p for p, _ in slice_sets[c]]
        if len(pos) != len(ref_pos) or not np.allclose(pos, ref_pos, atol=0.05):
            raise DicomError(f"mixed series: contrast TI={c[1]} TE={c[2]} flip={c[4]} has slices at "
                             f"{pos[:4]}... ({len(pos)}), contrast TI={contrasts[0][1]} "
                             f"TE={contrasts[0][2]} flip={contrasts[0][4]} at {ref_pos[:4]}... "
                             f"({len(ref_pos)}); e.g. {groups[c][0][0]}")

    nz, (nr, nc) = len(ref_pos), ref_shape
    images = np.zeros((nc, nr, nz, len(contrasts)), np.float32)
    valid = np.ones(images.shape, bool)
    files = []
    bits = None
    for n, c in enumerate(contrasts):
        files.append([str(groups[c][i][0]) for _, i in slice_sets[c]])
        for z, (_, i) in enumerate(slice_sets[c]):
            path, ds = groups[c][i]
            raw = ds.pixel_array
            b = int(ds.get("BitsStored", 16))
            bits = b if bits is None else min(bits, b)
            clipped = _clipped(raw, b, int(ds.get("PixelRepresentation", 0) or 0))
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            inter = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            img = raw.astype(np.float32) * slope + inter
            images[:, :, z, n] = img.T
            valid[:, :, z, n] = ~clipped.T

    # Affine (RAS+) for the [X = column, Y = row, Z = slice] array.
    ds0 = groups[contrasts[0]][slice_sets[contrasts[0]][0][1]][1]
    dr, dc = (float(v) for v in ds0.get("PixelSpacing", [1.0, 1.0]))
    if nz > 1:
        dz = float(np.median(np.diff(ref_pos)))
    else:
        dz = float(ds0.get("SliceThickness", 1.0) or 1.0)
    ipp0 = np.asarray(ds0.get("ImagePositionPatient", [0, 0, 0]), float)
    lps = np.eye(4)
    lps[:3, 0] = ref_iop[:3] * dc
    lps[:3, 1] = ref_iop[3:] * dr
    lps[:3, 2] = normal * dz
    lps[:3, 3] = ipp0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    k = contrasts[0][0]
    protocol = Protocol.create(
        [k] * len(contrasts), tr_ms=[c[3] for c in contrasts], te_ms=[c[2] for c in contrasts],
        ti_ms=[c[1] for c in contrasts], flip_deg=[c[4] for c in contrasts],
        names=[f"TI{c[1]:g}_TE{c[2]:g}_FA{c[4]:g}" for c in contrasts], name=name)
    return ImageSeries(images, valid, protocol, affine, files, bits)
