"""Voxelwise fit of a simulated NIST-like phantom (nist_vir protocol, Rician noise).

Run: python -m qmri_jax.main --config=configs/fit.py --workdir=/tmp/qmri_fit
Preset: --config=configs/fit.py:large (256 x 256 phantom).
"""

from configs import default


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "fit"
    if preset == "large":
        config.phantom.size = 256
    elif preset:
        raise ValueError(f"configs/fit.py: unknown preset {preset!r} (known: 'large')")
    return config
