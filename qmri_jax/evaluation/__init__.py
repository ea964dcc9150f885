"""Evaluation: ROI statistics and figures."""

from qmri_jax.evaluation.figures import plot_maps
from qmri_jax.evaluation.roi import roi_medians
