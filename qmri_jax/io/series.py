"""The in-memory form of a weighted image series read from DICOM or NIfTI."""

from __future__ import annotations

import dataclasses

import numpy as np

from qmri_jax.physics.protocol import Protocol

__all__ = ["ImageSeries"]


@dataclasses.dataclass
class ImageSeries:
    """Weighted images with their protocol and geometry.

    Attributes:
      images: ``[X, Y, Z, N]`` float32 magnitudes in NIfTI voxel order (x = DICOM column, y = DICOM
        row, z = slice), image axis last, in protocol order.
      valid: ``[X, Y, Z, N]`` bool; False for samples that are not measurements (clipped at the
        stored bit depth's maximum).
      protocol: one entry per image.
      affine: ``4 x 4`` voxel -> RAS+ world (mm), as NIfTI expects.
      files: for each image, the source file(s).
      bits_stored: stored bit depth (DICOM) or None.
    """

    images: np.ndarray
    valid: np.ndarray
    protocol: Protocol
    affine: np.ndarray
    files: list
    bits_stored: int | None = None

    @property
    def n_clipped(self) -> int:
        return int((~self.valid).sum())
