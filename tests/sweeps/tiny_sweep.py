"""A 4-trial sweep of a tiny U-Net (seconds per trial) for the sweep tests.

The data folder comes from ``QMRI_SWEEP_TEST_DATA`` (the tests' temporary folder). Presets:
``""`` 2 losses x 2 repeats, 100 steps (a few seconds of training: time to interrupt one);
``failing``: the same sweep (same name and trial names) plus a loss that does not exist, whose
two trials fail.
"""

import os

from qmri_jax.sweeps import Sweep, grid, repeats

TINY = {"model.features": (4, 8), "train.batch_size": 4, "train.log_every": 1,
        "train.eval_every": 25, "train.checkpoint_every": 50, "train.warmup_steps": 1,
        "data.num_subjects": 5, "data.slices_per_subject": 2, "data.resolution_mm": 4,
        "eval.figures": False}


def get_sweep(preset: str = ""):
    losses = ["mae", "mse"] + (["no_such_loss"] if preset == "failing" else [])
    return Sweep(name="tiny", config="configs/unet.py",
                 axes=[grid({"train.loss": losses}), repeats(2)],
                 fixed={**TINY, "train.num_steps": 100,
                        "data.data_dir": os.environ.get("QMRI_SWEEP_TEST_DATA", "")},
                 metrics=("T1.median_abs_pct", "PD.median_abs_pct"), compare="train.loss")
