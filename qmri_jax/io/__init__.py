"""DICOM and NIfTI input/output (host side, never under jit)."""

from qmri_jax.io.dicom import DicomError, read_dicom_series
from qmri_jax.io.nifti import (bids_map_name, read_nifti_series, write_fit_outputs, write_json,
                               write_nifti)
from qmri_jax.io.resample import resample_to_grid
from qmri_jax.io.series import ImageSeries
