"""Voxelwise fitting of quantitative maps: models, the JAX solver, CRLB, DESPOT1."""

from qmri_jax.fitting.despot1 import despot1
from qmri_jax.fitting.maps import MapResult, auto_mask, fit_images
from qmri_jax.fitting.models import EPG_T1_MS, FitModel, epg_model, get_model, list_models
from qmri_jax.fitting.crlb import crlb
from qmri_jax.fitting.solver import FitResult, SolverOptions, fit_signals, fit_voxels
from qmri_jax.fitting.t2_b1 import SmoothB1Fit, fit_t2_smooth_b1, smooth_field
