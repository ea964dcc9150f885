"""qmri-jax: quantitative MRI in JAX.

Subpackages: :mod:`qmri_jax.physics` (signal models, protocols), :mod:`qmri_jax.fitting`
(voxelwise NLLS / Rician MLE with CRLB), :mod:`qmri_jax.io` (DICOM/NIfTI), :mod:`qmri_jax.data`
(phantoms), :mod:`qmri_jax.evaluation` (metrics, figures).
"""

__version__ = "0.1.0"
