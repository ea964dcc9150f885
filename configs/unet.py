"""U-Net mapping the four-contrast brain protocol (T1w, T2w, PDw, FLAIR) to T1/T2/PD.

Run: python -m qmri_jax.main --config=configs/unet.py --workdir=/tmp/qmri_unet
GPU preset (paper sizes): --config=configs/unet.py:paper
:invivo_mtsat  T1 and PD from the 3D spoiled-gradient-echo PDw / T1w pair of ../shared/invivo/mtsat
    ("qmrlab_mtsat": 6 deg / TR 28 ms, 20 deg / TR 18 ms), 2 mm slices, images normalised by the
    in-brain p95, SNR 1000 relative to PD = 1 (that scan's background noise against its PDw brain
    signal, ~110 in the image), no transmit-field inhomogeneity (so, like the two-angle DESPOT1
    fit it is compared with, it does not correct B1), every training slice scaled by a random gain
    0.5-2 (PD with it; train.intensity_scale); experiments.invivo_learned trains it.
"""

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "unet"
    if preset == "invivo_mtsat":
        config.data.protocol = "qmrlab_mtsat"
        config.targets = ("T1", "PD")
        config.target_scale = (1000.0, 1.0)
        config.data.normalisation = "p95"
        config.data.snr = 1000.0
        config.data.num_subjects = 20
        config.data.slices_per_subject = 16
        config.train.num_steps = 600
        # A real scan's in-brain p95 differs from a synthetic brain's (skull, CSF, field of
        # view); without this the U-Net read T1 +31% against DESPOT1 on that volume.
        config.train.intensity_scale = (0.5, 2.0)
        return config
    if preset not in ("", "paper"):
        raise ValueError(f"configs/unet.py: unknown preset {preset!r} (available: paper, "
                         "invivo_mtsat)")
    return presets.apply(config, preset, "unet")
