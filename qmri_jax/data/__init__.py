"""Synthetic phantoms (brain phantoms and datasets build on this package in later versions)."""

from qmri_jax.data.phantoms import NIST_T1_SPHERES_MS, nist_like_phantom
