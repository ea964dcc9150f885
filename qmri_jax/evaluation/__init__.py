"""Evaluation: masked metrics, ROI statistics and Bland-Altman agreement, reports and figures."""

from qmri_jax.evaluation.figures import plot_maps
from qmri_jax.evaluation.metrics import bland_altman, masked_metrics
from qmri_jax.evaluation.roi import roi_medians
