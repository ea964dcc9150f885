"""Defaults for every qmri_jax job; experiment configs import this and override.

Run: python -m qmri_jax.main --config=configs/fit.py --workdir=/tmp/qmri_fit
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "fit"
    config.seed = 0

    config.phantom = ml_collections.ConfigDict()
    config.phantom.size = 128
    config.phantom.inversion_efficiency = 0.95

    config.acquisition = ml_collections.ConfigDict()
    config.acquisition.protocol = "nist_vir"
    config.acquisition.snr = 50.0  # PD / sigma

    config.fit = ml_collections.ConfigDict()
    config.fit.model = "ir"
    config.fit.loss = "rician"
    config.fit.max_iter = 30
    config.fit.sigma_known = False  # False: estimate sigma from the background like on real data
    return config
