"""Scalar metrics of a run: one JSON line per log step in ``workdir/metrics.jsonl`` and
TensorBoard scalars under ``workdir/tb`` (process 0 only)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

__all__ = ["MetricWriter", "scalars"]


def scalars(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The scalar entries of a (host) metrics dict as floats; ``finite`` (the NaN guard's flag)
    and non-scalar entries are left out."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        if k != "finite" and a.ndim == 0 and a.dtype.kind in "fiub":
            out[prefix + k] = float(a)
    return out


class MetricWriter:
    """Append-only JSONL plus optional TensorBoard (tensorboardX) scalars."""

    def __init__(self, workdir: str):
        self.main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.main:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(workdir, "tb"))
            except ImportError:  # TensorBoard scalars are optional
                self.tb = None

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.main or not values:
            return
        row = {"step": int(step), **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), int(step))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
