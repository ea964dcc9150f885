"""Differentiable MRI signal physics: signal equations, EPG, protocols, noise models."""

from qmri_jax.physics.epg import cpmg_echo_train, echo_train
from qmri_jax.physics.slice_profile import SliceProfile, cpmg_slice_echo_train, pulse_profile
from qmri_jax.physics.noise import (add_rician_noise, estimate_noise_background,
                                    estimate_sigma_background, gaussian_nll,
                                    log_i0_and_ratio, log_i0e_and_ratio, rician_moments,
                                    rician_nll, rician_objective)
from qmri_jax.physics.protocol import (MAP_UNITS, SEQUENCE_KINDS, Protocol, get_protocol,
                                       list_protocols, simulate)
from qmri_jax.physics.signals import (decay, flair, inversion_recovery, ir_fse_magnitude,
                                      ir_three_parameter, multi_echo_spin_echo, spin_echo,
                                      spoiled_gradient_echo)
from qmri_jax.physics.space import space_echo_amplitude, space_flair
