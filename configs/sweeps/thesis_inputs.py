"""The thesis's input ablation: which weighted images does the U-AttenNet need? All four
(T1w, T2w, PDw, FLAIR), T1w + T2w + PDw, T1w + T2w, T1w alone; repeats over seeds.

Cluster (paper sizes, 3 repeats, one GPU each):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_inputs.py --out=DIR --backend=slurm \\
      --partition=gpu --gpus-per-trial=1 --time-min=240
Here (8 trials, 2 CPU cores, ~15 minutes):
  python -m qmri_jax.sweep --sweep=configs/sweeps/thesis_inputs.py:cpu --out=DIR
"""

from qmri_jax.sweeps import Sweep, repeats, values

INPUTS = [("T1w", "T2w", "PDw", "FLAIR"), ("T1w", "T2w", "PDw"), ("T1w", "T2w"), ("T1w",)]
METRICS = ("T1.median_abs_pct", "T2.median_abs_pct", "PD.median_abs_pct")


def get_sweep(preset: str = ""):
    if preset == "":
        return Sweep(name="thesis_inputs", config="configs/uattennet.py:thesis_paper",
                     axes=[values("data.inputs", INPUTS), repeats(3)], metrics=METRICS,
                     compare="data.inputs",
                     slurm={"gpus_per_node": 1, "time_min": 240, "cpus_per_task": 8,
                            "mem_gb": 32},
                     description="Thesis input ablation at the paper's sizes "
                                 "(configs/uattennet.py:paper).")
    if preset == "cpu":
        return Sweep(name="thesis_inputs_cpu", config="configs/uattennet.py:thesis",
                     axes=[values("data.inputs", INPUTS), repeats(2)],
                     fixed={"train.num_steps": 300, "train.eval_every": 100,
                            "train.checkpoint_every": 100, "eval.figures": False},
                     metrics=METRICS, compare="data.inputs", slurm={"time_min": 30},
                     description="Thesis input ablation for 2 CPU cores: U-AttenNet, 300 steps, "
                                 "2 repeats.")
    raise ValueError(f"configs/sweeps/thesis_inputs.py: unknown preset {preset!r} (available: "
                     "'' (cluster), cpu)")
