"""The thesis's 2D vs 3D U-AttenNet: the same network (configs/uattennet.py:thesis, one attention
gate, dropout on the paths, inputs rescaled to [0.01, 1], 1.5 T, tumours only in the test split)
trained on axial slices (2D convolutions) or on 3D patches of the same subjects (3D convolutions),
both scored on the same test slices (the 3D model maps whole test volumes; the report cuts out the
2D test split's slices, so both see exactly the same voxels).

Cluster (the thesis's sizes, 3 repeats, one GPU each; the 3D patch size and batch are assumed,
the thesis does not state them here):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_dims.py --out=DIR --backend=slurm \\
      --partition=gpu --gpus-per-trial=1 --time-min=480
Here (4 trials, 2 CPU cores):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_dims.py:cpu --out=DIR
"""

from qmri_jax.sweeps import Sweep, repeats, zip_axes

METRICS = tuple(f"{m}.per_sample.median_abs_pct.mean" for m in ("T1", "T2", "PD")) + tuple(
    f"{m}.median_abs_pct" for m in ("T1", "T2", "PD"))


def get_sweep(preset: str = ""):
    if preset == "":
        return Sweep(name="thesis_dims", config="configs/uattennet.py:thesis_paper",
                     axes=[zip_axes({"data.dims": [2, 3], "train.crop": [(), (64, 64, 32)],
                                     "train.batch_size": [16, 4]}), repeats(3)],
                     metrics=METRICS, compare="data.dims",
                     slurm={"gpus_per_node": 1, "time_min": 480, "cpus_per_task": 8,
                            "mem_gb": 64},
                     description="Thesis 2D vs 3D U-AttenNet at the paper's sizes.")
    if preset == "cpu":
        # Voxels per batch about equal: 8 slices of 96 x 112 (86k) against 2 patches of
        # 48 x 48 x 24 (111k); the same number of steps.
        return Sweep(name="thesis_dims_cpu", config="configs/uattennet.py:thesis",
                     axes=[zip_axes({"data.dims": [2, 3], "train.crop": [(), (48, 48, 24)],
                                     "train.batch_size": [8, 2]}), repeats(2)],
                     fixed={"train.num_steps": 300, "train.eval_every": 100,
                            "train.checkpoint_every": 100, "eval.figures": False},
                     metrics=METRICS, compare="data.dims", slurm={"time_min": 60},
                     description="Thesis 2D vs 3D U-AttenNet for 2 CPU cores: 300 steps, 2 "
                                 "repeats, the same test slices.")
    raise ValueError(f"configs/sweeps/thesis_dims.py: unknown preset {preset!r} (available: "
                     "'' (cluster), cpu)")
