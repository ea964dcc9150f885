"""Conditional denoising diffusion for quantitative maps: schedules, forward process, samplers."""

from qmri_jax.diffusion.process import diffusion_loss, predict_eps, predict_x0, q_sample
from qmri_jax.diffusion.samplers import ddim_sample, ddpm_sample, posterior_summary
from qmri_jax.diffusion.schedules import Schedule, cosine_schedule, get_schedule, linear_schedule
