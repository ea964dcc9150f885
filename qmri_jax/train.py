"""Train and evaluate any task from a config: ``config -> task -> engine``, then the task's report.

``python -m qmri_jax.main --config=configs/<name>.py --workdir=DIR`` calls
:func:`train_and_evaluate`. The workdir gets ``config.json``, ``protocol.json`` (the acquisition
protocol the network was trained on, read back by ``--mode=predict``), ``metrics.jsonl``, ``tb/``,
``checkpoints/``, ``checkpoints_best/`` and ``eval/`` (the task's test-split report).
"""

from __future__ import annotations

import os

import jax

from qmri_jax import engine
from qmri_jax.engine import checkpoint as ckpt_lib
from qmri_jax.io.nifti import write_json
from qmri_jax.tasks import create_task
from qmri_jax.tasks.data import load_data

__all__ = ["train_and_evaluate", "load_data"]


def train_and_evaluate(config, workdir: str, stop_at: int | None = None, data: dict | None = None):
    """Train ``config.task`` (resuming from ``workdir`` if it holds a checkpoint), then evaluate
    on the test split.

    Args:
      config: the ml_collections config (see ``configs/default.py``).
      workdir: the output folder.
      stop_at: stop after this global step without the final evaluation, as a killed run would
        (for resume tests).
      data: pre-loaded data (tests); default :func:`qmri_jax.tasks.data.load_data`.

    Returns:
      ``(state, metrics)`` with the evaluation metrics (``None`` if stopped early).
    """
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "config.json"), config.to_dict())
    task = create_task(config)
    if data is None:  # a task with its own data (e.g. 3D volumes and patches) loads it
        data = task.load_data(config) if hasattr(task, "load_data") else load_data(config)
    if jax.process_index() == 0 and "protocol" in data:
        write_json(os.path.join(workdir, "protocol.json"), data["protocol"])
    state, finished = engine.train(task, workdir, engine.LoopConfig.from_config(config.train),
                                   data, seed=config.seed, stop_at=stop_at)
    if not finished:
        return state, None
    if getattr(task, "evaluate_best", False):  # the task selects its model on validation
        restored = ckpt_lib.restore_latest(ckpt_lib.create_managers(workdir)[1],
                                                    state)
        if restored is not None:
            state = restored[0]
    return state, task.evaluate(state, data, os.path.join(workdir, "eval"))
