"""Thin Orbax wrappers: a latest-N manager and a best-on-validation manager, exact restore.

A checkpoint holds a task's state pytree (as a state dict) and a small JSON
``extra`` (early-stopping state). Orbax writes each step to a temporary folder and renames it when
complete; a step folder that is present but unreadable is reported, never silently replaced.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from flax import serialization

__all__ = ["CheckpointError", "create_managers", "save", "restore_latest"]


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (truncated, corrupt or incompatible)."""


def create_managers(workdir: str, max_to_keep: int = 2):
    """``(latest, best)`` managers under ``workdir/checkpoints`` and ``workdir/checkpoints_best``."""
    opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                        enable_async_checkpointing=False)
    latest = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                   options=opts)
    best_opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[
        "val_loss"], best_mode="min", enable_async_checkpointing=False)
    best = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints_best"),
                                 options=best_opts)
    return latest, best


def save(manager, step: int, state, extra: dict, metrics: dict | None = None) -> None:
    args = ocp.args.Composite(state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                              extra=ocp.args.JsonSave(extra))
    manager.save(step, args=args, metrics=metrics, force=True)
    manager.wait_until_finished()


def restore_latest(manager, target_state, step: int | None = None):
    """Restore ``(state, extra, step)`` from the latest (or given) step; ``None`` if there is none.

    Raises:
      CheckpointError: the step folder exists but cannot be read.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        _refuse_stray_folders(manager.directory)
        return None
    abstract = serialization.to_state_dict(target_state)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises several types for missing/corrupt files
        raise CheckpointError(
            f"checkpoint {os.path.join(str(manager.directory), str(step))} exists but cannot be "
            f"restored ({type(e).__name__}: {str(e)[:300]}). It is truncated or from another "
            "model; refusing to start over. Delete that folder to resume from an earlier step, "
            "or use a fresh --workdir.") from e
    state = serialization.from_state_dict(target_state, restored["state"])
    return state, dict(restored["extra"]), step


def _refuse_stray_folders(directory) -> None:
    """Step folders orbax does not recognise (e.g. a half-copied checkpoint) are an error."""
    directory = str(directory)
    if not os.path.isdir(directory):
        return
    stray = [d for d in os.listdir(directory) if d.isdigit()]
    if stray:
        raise CheckpointError(f"{directory} holds step folders {sorted(stray)} that are not valid "
                              "checkpoints (truncated?); refusing to re-initialise. Delete them or "
                              "use a fresh --workdir.")
