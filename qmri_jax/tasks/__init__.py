"""Training tasks: each owns its networks, optimisers, state, pure steps and ``predict``
(the protocol: :mod:`qmri_jax.tasks.base`). :data:`TASKS` maps ``config.task`` to its class;
add a task by writing its module and one entry here."""

from __future__ import annotations

from qmri_jax.tasks.base import Task, predict_in_batches
from qmri_jax.tasks.ddpm import DdpmTask
from qmri_jax.tasks.gan import GanTask
from qmri_jax.tasks.regression import RegressionTask
from qmri_jax.tasks.rim import RimTask
from qmri_jax.tasks.translation import TranslationTask

__all__ = ["TASKS", "Task", "create_task", "predict_in_batches", "RegressionTask", "RimTask",
           "DdpmTask", "GanTask", "TranslationTask"]

TASKS = {"regression": RegressionTask, "rim": RimTask, "ddpm": DdpmTask, "gan": GanTask,
         "translation": TranslationTask}


def create_task(config) -> Task:
    """The task of ``config.task`` (default ``"regression"``), built from ``config``."""
    name = config.get("task", "regression")
    if name not in TASKS:
        raise ValueError(f"config.task={name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name](config)
