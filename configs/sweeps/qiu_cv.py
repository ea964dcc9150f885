"""Qiu et al.'s evaluation: 6-fold cross-validation over subjects of the U-Net that maps MPRAGE,
GRE and 3D FLAIR to T1 and T2 (configs/unet_qiu.py:qiu), and the input-subset supplement.

Metrics as the paper reports them: per test slice, in the brain without CSF dilated by one voxel,
MAE, mean percentage error, PSNR and SSIM (each fold's mean over its slices; the table: mean +- SD
over the folds); ROI means per test subject in eroded WM and GM and in the putamen and thalamus,
pooled over the folds (every subject once) into Bland-Altman limits and paired t-tests.

Cluster (paper sizes, one GPU per trial):
  python -m qmri_jax.sweep --sweep=configs/sweeps/qiu_cv.py --out=DIR --backend=slurm \\
      --partition=gpu --gpus-per-trial=1 --time-min=480
  ... qiu_cv.py:inputs   the input subsets (all three, MPRAGE + FLAIR, MPRAGE + GRE, MPRAGE), 6 folds
                         each, paired t-tests against all three
Here (6 trials, 2 CPU cores):
  python -m qmri_jax.sweep --sweep=configs/sweeps/qiu_cv.py:cpu --out=DIR
  ... qiu_cv.py:inputs_cpu   the input subsets on folds 0-2 of the 6 (12 trials, 400 steps each)
"""

import math

from qmri_jax.sweeps import Axis, Sweep, folds, values

INPUTS = [("MPRAGE", "GRE", "FLAIR"), ("MPRAGE", "FLAIR"), ("MPRAGE", "GRE"), ("MPRAGE",)]
_REGION = "excluding_CSF_dilated.per_sample"
METRICS = tuple(f"{m}.{_REGION}.{k}.mean" for m in ("T1", "T2") for k in
                ("mae", "mean_abs_pct", "psnr", "ssim"))
ROI = ("T1.roi_eroded", "T2.roi_eroded")
_GPU = {"gpus_per_node": 1, "time_min": 480, "cpus_per_task": 8, "mem_gb": 32}


def get_sweep(preset: str = ""):
    if preset == "":
        return Sweep(name="qiu_cv", config="configs/unet_qiu.py:qiu", axes=[folds(6)],
                     metrics=METRICS, slurm=_GPU, roi=ROI,
                     description="Qiu et al. 6-fold CV at the paper's sizes.")
    if preset == "inputs":
        return Sweep(name="qiu_cv_inputs", config="configs/unet_qiu.py:qiu",
                     axes=[values("data.inputs", INPUTS), folds(6)], metrics=METRICS,
                     compare="data.inputs", slurm=_GPU, roi=ROI,
                     description="Qiu et al. input subsets, 6-fold CV each.")
    if preset == "cpu":
        return Sweep(name="qiu_cv_cpu", config="configs/unet_qiu.py:qiu_cpu", axes=[folds(6)],
                     fixed={"eval.figures": False}, metrics=METRICS, slurm={"time_min": 30},
                     roi=ROI,
                     description="Qiu et al. 6-fold CV for 2 CPU cores (configs/unet_qiu.py:"
                                 "qiu_cpu, 600 steps per fold).")
    if preset == "inputs_cpu":
        return Sweep(name="qiu_cv_inputs_cpu", config="configs/unet_qiu.py:qiu_cpu",
                     axes=[values("data.inputs", INPUTS), Axis(tuple(
                         {"data.cv_folds": 6, "data.cv_fold": f} for f in range(3)),
                         kind="repeat")],
                     # the schedule of configs/unet_qiu.py for 400 steps: flat for 3/5 of them
                     fixed={"eval.figures": False, "train.num_steps": 400,
                            "train.decay_after": 240,
                            "train.decay_rate": math.exp(-0.02 * 200 / 160),
                            "train.eval_every": 200, "train.checkpoint_every": 200},
                     metrics=METRICS, compare="data.inputs", slurm={"time_min": 30}, roi=ROI,
                     description="Qiu et al. input subsets for 2 CPU cores: folds 0-2 of the "
                                 "6-fold split, 400 steps per trial.")
    raise ValueError(f"configs/sweeps/qiu_cv.py: unknown preset {preset!r} (available: '' "
                     "(cluster), inputs, cpu, inputs_cpu)")
