"""The thesis's experiment 1: {UNet, UResNet, UAttenNet} x {MSE, MAE, MAE+MSE, nMSE, nMAE,
nMAE+nMSE} x learning rate {1e-2, 1e-3, 1e-4} x 3 repeats on the four-contrast brains.

Cluster (162 trials at the paper's sizes, one GPU each):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_grid.py --out=DIR --backend=slurm \\
      --partition=gpu --gpus-per-trial=1 --time-min=240
Here (12 trials, 2 CPU cores, ~15 minutes):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_grid.py:cpu --out=DIR
Then: python -m qmri_jax.sweep --collect --out=DIR/thesis_grid_cpu
"""

from qmri_jax.sweeps import Sweep, grid, repeats

NETWORKS = ["unet", "uresnet", "uattennet"]
LOSSES = ["mse", "mae", "mae_mse", "nmse", "nmae", "nmae_nmse"]
LEARNING_RATES = [1e-2, 1e-3, 1e-4]
METRICS = ("T1.median_abs_pct", "T2.median_abs_pct", "PD.median_abs_pct")


def get_sweep(preset: str = ""):
    if preset == "":
        return Sweep(
            name="thesis_grid", config="configs/unet.py:paper",
            axes=[grid({"model.name": NETWORKS, "train.loss": LOSSES,
                        "train.learning_rate": LEARNING_RATES}), repeats(3)],
            metrics=METRICS, compare="model.name",
            slurm={"gpus_per_node": 1, "time_min": 240, "cpus_per_task": 8, "mem_gb": 32},
            description="Thesis experiment 1 at the paper's sizes (configs/unet.py:paper).")
    if preset == "cpu":
        return Sweep(
            name="thesis_grid_cpu", config="configs/unet.py",
            axes=[grid({"model.name": NETWORKS, "train.loss": ["mae", "nmae_nmse"]}),
                  repeats(2)],
            fixed={"train.num_steps": 100, "train.learning_rate": 1e-3, "train.eval_every": 50,
                   "train.checkpoint_every": 50, "eval.figures": False},
            metrics=METRICS, compare="model.name",
            slurm={"time_min": 30},
            description="Sub-grid of thesis experiment 1 for 2 CPU cores: 3 networks x 2 losses "
                        "x 2 repeats, 100 steps at learning rate 1e-3.")
    raise ValueError(f"configs/sweeps/thesis_grid.py: unknown preset {preset!r} (available: "
                     "'' (cluster), cpu)")
