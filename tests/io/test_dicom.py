"""DICOM header defects found in review (issue 28, items 3 and 6), on synthetic DICOM files."""

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from qmri_jax.io import DicomError, read_dicom_series


def _write(path, pixels, *, signed=False, bits=12, ti=None, te=10.0, tr=500.0, flip=90.0,
           seq="SE", z=0.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z]
    ds.ScanningSequence = seq
    ds.EchoTime, ds.RepetitionTime = te, tr
    if flip is not None:
        ds.FlipAngle = flip
    if ti is not None:
        ds.InversionTime = ti
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_signed_pixels_clip_at_the_signed_maximum(tmp_path):
    """PixelRepresentation 1 (signed, 12 bits): the stored range is -2048..2047, so 2047 and -2048
    are clipped; 4095 (the unsigned maximum) cannot occur (the old code flagged nothing)."""
    px = np.array([[0, 100, 2047], [-2048, -5, 2046]])
    _write(tmp_path / "a.dcm", px, signed=True, ti=100.0, seq="IR")
    s = read_dicom_series([tmp_path])
    np.testing.assert_array_equal(s.images[..., 0, 0].T, px)
    np.testing.assert_array_equal(~s.valid[..., 0, 0].T, [[0, 0, 1], [1, 0, 0]])


def test_unsigned_pixels_clip_at_the_unsigned_maximum(tmp_path):
    px = np.array([[0, 4095], [4094, 7]])
    _write(tmp_path / "a.dcm", px, ti=100.0, seq="IR")
    s = read_dicom_series([tmp_path])
    np.testing.assert_array_equal(~s.valid[..., 0, 0].T, [[0, 1], [0, 0]])


def test_inversion_time_zero_is_not_an_inversion(tmp_path):
    """Spin-echo headers often carry InversionTime = 0: a spin-echo series, not IR."""
    for i, te in enumerate((10.0, 20.0, 30.0)):
        _write(tmp_path / f"e{i}.dcm", np.full((2, 2), 100 - i), ti=0.0, te=te, tr=3000.0)
    s = read_dicom_series([tmp_path])
    assert s.protocol.kinds == ("se",) * 3
    np.testing.assert_array_equal(s.protocol.te_ms, [10, 20, 30])


def test_missing_flip_angle_is_an_error_for_gradient_echo(tmp_path):
    """The flip angle is the VFA/SPGR signal's main parameter: missing, it is an error naming the
    file (the old code silently used 90 degrees)."""
    _write(tmp_path / "a.dcm", np.ones((2, 2)), seq="GR", tr=15.0, te=3.0, flip=3.0)
    _write(tmp_path / "b.dcm", np.ones((2, 2)), seq="GR", tr=15.0, te=3.0, flip=None)
    with pytest.raises(DicomError, match="b.dcm: missing DICOM field FlipAngle"):
        read_dicom_series([tmp_path])
