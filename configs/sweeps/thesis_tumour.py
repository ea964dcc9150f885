"""The thesis's tumour experiment: a U-AttenNet trained on healthy brains only, tested on brains
with tumours; errors in the whole brain, in the tumour and in the healthy rest. The control
point trains with tumours in every split.

Cluster (paper sizes, 3 repeats):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_tumour.py --out=DIR --backend=slurm \\
      --partition=gpu --gpus-per-trial=1 --time-min=240
Here (4 trials, 2 CPU cores, ~10 minutes with the two dataset builds):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_tumour.py:cpu --out=DIR
"""

from qmri_jax.sweeps import Sweep, repeats, values

METRICS = tuple(f"{m}.{region}median_abs_pct" for m in ("T1", "T2", "PD")
                for region in ("", "lesion.", "healthy."))
SPLITS = [("test",), ("train", "validation", "test")]
FIXED = {"data.pathology_fraction": 1.0, "data.pathology_kinds": ("tumour",)}


def get_sweep(preset: str = ""):
    if preset == "":
        return Sweep(name="thesis_tumour", config="configs/uattennet.py:thesis_paper",
                     axes=[values("data.pathology_splits", SPLITS), repeats(3)], fixed=FIXED,
                     metrics=METRICS, compare="data.pathology_splits",
                     slurm={"gpus_per_node": 1, "time_min": 240, "cpus_per_task": 8,
                            "mem_gb": 32},
                     description="Thesis tumour experiment at the paper's sizes.")
    if preset == "cpu":
        return Sweep(name="thesis_tumour_cpu", config="configs/uattennet.py:thesis",
                     axes=[values("data.pathology_splits", SPLITS), repeats(2)],
                     fixed={**FIXED, "train.num_steps": 300, "train.eval_every": 100,
                            "train.checkpoint_every": 100, "eval.figures": False},
                     metrics=METRICS, compare="data.pathology_splits", slurm={"time_min": 30},
                     description="Thesis tumour experiment for 2 CPU cores: U-AttenNet, 300 "
                                 "steps, 2 repeats; every subject of the pathology splits has a "
                                 "tumour.")
    raise ValueError(f"configs/sweeps/thesis_tumour.py: unknown preset {preset!r} (available: "
                     "'' (cluster), cpu)")
