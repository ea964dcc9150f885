"""Synthetic data: NIST-like phantoms, MNI152 brain subjects, acquisition, datasets.

Modules: :mod:`~qmri_jax.data.tissues` (literature table), :mod:`~qmri_jax.data.anatomy` (MNI152
from nilearn), :mod:`~qmri_jax.data.subjects`, :mod:`~qmri_jax.data.acquisition`,
:mod:`~qmri_jax.data.datasets` (TFDS array_record builders; batches: :mod:`qmri_jax.engine.loader`),
:mod:`~qmri_jax.data.export` (CLI).
"""

from qmri_jax.data.phantoms import NIST_T1_SPHERES_MS, nist_like_phantom
