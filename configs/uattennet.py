"""Attention-gated U-Net on the four-contrast brain protocol (normalised MAE + MSE loss).

Run: python -m qmri_jax.main --config=configs/uattennet.py --workdir=/tmp/qmri_uattennet
GPU preset (the thesis's sizes): --config=configs/uattennet.py:paper

The thesis's own setting, where today's default differs from it (``:thesis`` at CPU size,
``:thesis_paper`` at the thesis's sizes): one additive attention gate (assumed at the deepest skip)
instead of one per skip; dropout (rate 0.2, assumed: the thesis gives none here) on the down-path's
output and before every up-path block instead of none; each input image rescaled to [0.01, 1];
1.5 T tissue values; tumour patients in the test split only. SSIM over whole slices is in every
``metrics.json`` (``ssim_whole_image``).
"""

from configs import default, presets


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.model.name = "uattennet"
    config.train.loss = "mae"
    if preset in ("thesis", "thesis_paper"):
        config = presets.apply(config, "paper" if preset == "thesis_paper" else "", "uattennet")
        config.model.attention_levels = 1
        config.model.dropout = 0.2
        config.model.dropout_at = "paths"
        config.data.normalisation = "rescale"
        config.data.field = "1.5T"
        config.data.pathology_splits = ("test",)  # every test subject has a tumour
        config.data.pathology_fraction = 1.0
        config.data.pathology_kinds = ("tumour",)
        return config
    return presets.apply(config, preset, "uattennet")
