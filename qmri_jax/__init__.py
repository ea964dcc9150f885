"""qmri-jax: quantitative MRI in JAX.

Subpackages: :mod:`qmri_jax.physics` (signal models, protocols), :mod:`qmri_jax.fitting`
(voxelwise NLLS / Rician MLE with CRLB), :mod:`qmri_jax.io` (DICOM/NIfTI), :mod:`qmri_jax.data`
(phantoms), :mod:`qmri_jax.evaluation` (metrics, figures).

Importing the package appends one XLA:CPU flag to ``XLA_FLAGS`` (convolutions through XLA's own
Eigen kernels instead of YNNPACK: up to 4x faster conv gradients on CPU); see
:mod:`qmri_jax.xla_cpu` for the measurements and how to opt out (``QMRI_JAX_XLA_CPU_TUNING=0``).
"""

from qmri_jax import xla_cpu as _xla_cpu

#: Why the XLA:CPU flag was or was not applied at import (:func:`qmri_jax.xla_cpu.configure`).
XLA_CPU_TUNING = _xla_cpu.configure()

__version__ = "0.1.0"
