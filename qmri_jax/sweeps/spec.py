"""Sweep definitions: a base config and axes of ``--config.x=y`` overrides -> named trials.

A sweep file (``configs/sweeps/NAME.py``) has ``get_sweep(preset="") -> Sweep``::

    from qmri_jax.sweeps import Sweep, grid, repeats

    def get_sweep(preset=""):
        return Sweep(name="lr_scan", config="configs/unet.py",
                     axes=[grid({"model.name": ["unet", "uresnet"],
                                 "train.learning_rate": [1e-3, 1e-4]}),
                           repeats(3)],
                     metrics=("T1.median_abs_pct",), compare="model.name")

The trials are the product of the axes. Axes of kind ``"point"`` (:func:`grid`, :func:`zip_axes`,
:func:`values`, :func:`explicit`) make the grid points of the results table; axes of kind
``"repeat"`` (:func:`repeats`, :func:`folds`) are averaged over (mean +- SD). A trial's name is
built from its overrides only, so it is the same on every run and its workdir is
``OUT/<sweep name>/<trial name>``: a re-run finds what is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import os
import re
from typing import Any

__all__ = ["Axis", "Sweep", "Trial", "grid", "zip_axes", "values", "explicit", "repeats", "folds",
           "load_sweep", "format_value"]


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis: a list of override dicts (``{"train.loss": "mae", ...}``) and its kind."""

    points: tuple
    kind: str = "point"  # "point": a grid coordinate; "repeat": averaged over

    def __post_init__(self):
        if self.kind not in ("point", "repeat"):
            raise ValueError(f"Axis kind {self.kind!r}: expected 'point' or 'repeat'")
        if not self.points:
            raise ValueError("an axis needs at least one point")
        for p in self.points:
            if not isinstance(p, dict) or not p:
                raise ValueError(f"axis point {p!r}: expected a non-empty dict of overrides")

    @property
    def keys(self) -> tuple:
        return tuple(dict.fromkeys(k for p in self.points for k in p))


def grid(axes: dict) -> Axis:
    """The product of ``{key: [values]}``: every combination is a point."""
    keys = list(axes)
    for k in keys:
        if not isinstance(axes[k], (list, tuple)) or not axes[k]:
            raise ValueError(f"grid axis {k!r}: expected a non-empty list of values")
    return Axis(tuple(dict(zip(keys, combo)) for combo in itertools.product(*axes.values())))


def zip_axes(axes: dict) -> Axis:
    """``{key: [values]}`` with lists of one length, taken together (the i-th of each)."""
    lengths = {k: len(v) for k, v in axes.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"zip_axes: the lists differ in length {lengths}")
    n = next(iter(lengths.values()))
    return Axis(tuple({k: v[i] for k, v in axes.items()} for i in range(n)))


def values(key: str, vals) -> Axis:
    """One key over a list of values."""
    return grid({key: list(vals)})


def explicit(points) -> Axis:
    """An explicit list of override dicts."""
    return Axis(tuple(dict(p) for p in points))


def repeats(n: int, key: str = "seed", start: int = 0) -> Axis:
    """``n`` repeats of every point with ``key`` (the run's seed) = start, start + 1, ..."""
    if n < 1:
        raise ValueError(f"repeats({n}): expected n >= 1")
    return Axis(tuple({key: start + i} for i in range(n)), kind="repeat")


def folds(k: int, fold_key: str = "data.cv_fold", count_key: str = "data.cv_folds") -> Axis:
    """``k``-fold cross-validation: fold i is trial i's test split (``config.data.cv_fold``)."""
    if k < 2:
        raise ValueError(f"folds({k}): expected k >= 2")
    return Axis(tuple({count_key: k, fold_key: i} for i in range(k)), kind="repeat")


def format_value(v: Any) -> str:
    """A value as ml_collections parses it on the command line (``--config.key=VALUE``)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):  # a Python literal: strings inside it quoted
        return "(" + ",".join(repr(x) if isinstance(x, str) else format_value(x) for x in v) \
            + ("," if len(v) == 1 else "") + ")"
    return str(v)


def _name_part(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):  # (16, 32) -> 16x32; ("T1w", "T2w") -> T1w+T2w
        sep = "+" if v and all(isinstance(x, str) for x in v) else "x"
        return sep.join(_name_part(x) for x in v) or "none"
    return str(v)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run: its deterministic name, its overrides (``fixed`` + every axis), its grid point
    (the ``"point"`` axes' overrides) and its repeat (the ``"repeat"`` axes' overrides)."""

    name: str
    overrides: dict
    point: dict
    repeat: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Sweep:
    """A sweep: the base config, its axes and how to read the results.

    Attributes:
      name: the sweep's folder under ``--out``.
      config: ``path/to/config.py[:preset]``, relative to the current folder or to the folder
        above ``configs/``.
      axes: their product gives the trials.
      fixed: overrides of every trial (not in the trial names).
      metrics: the main metrics, dotted paths into a trial's ``eval/metrics.json``
        (``"T1.median_abs_pct"``): the results table, the best point and the tests use them.
      higher_is_better: those of ``metrics`` where higher is better (e.g. a PSNR).
      compare: an axis key: paired t-tests between each two of its values, the trials paired by
        every other axis value and repeat.
      group: an axis key: the best point (first metric) per value of it; default ``compare``.
      slurm: defaults of the SLURM backend (``qmri_jax.sweeps.backends.SlurmOptions`` fields).
      description: one line for the results page.
      roi: dotted paths to per-subject ROI agreement dicts in ``eval/metrics.json``
        (``"T1.roi_eroded"``: ``measured``, ``reference`` and ``label`` lists): ``--collect``
        pools their rows over the trials of each grid point (with :func:`folds`, every subject
        once) into Bland-Altman limits and paired t-tests per region, as papers report ROIs.
    """

    name: str
    config: str
    axes: list
    fixed: dict = dataclasses.field(default_factory=dict)
    metrics: tuple = ()
    higher_is_better: tuple = ()
    compare: str | None = None
    group: str | None = None
    slurm: dict = dataclasses.field(default_factory=dict)
    description: str = ""
    roi: tuple = ()

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ValueError(f"sweep name {self.name!r}: use letters, digits, '.', '_', '-'")
        seen = {}
        for i, axis in enumerate(self.axes):
            for k in axis.keys:
                if k in seen:
                    raise ValueError(f"sweep {self.name}: key {k!r} is on axes {seen[k]} and {i}")
                if k in self.fixed:
                    raise ValueError(f"sweep {self.name}: key {k!r} is both fixed and on axis {i}")
                seen[k] = i
        point_keys = {k for a in self.axes if a.kind == "point" for k in a.keys}
        for attr in ("compare", "group"):
            k = getattr(self, attr)
            if k is not None and k not in point_keys:
                raise ValueError(f"sweep {self.name}: {attr}={k!r} is not a key of a point axis "
                                 f"({sorted(point_keys)})")
        bad = [m for m in self.higher_is_better if m not in self.metrics]
        if bad:
            raise ValueError(f"sweep {self.name}: higher_is_better {bad} not in metrics")

    def trials(self) -> list[Trial]:
        """Every trial, in axis order (the first axis slowest)."""
        keys = [k for a in self.axes for k in a.keys]
        short = _short_names(keys)
        out, names = [], set()
        for combo in itertools.product(*(a.points for a in self.axes)):
            point, repeat = {}, {}
            for axis, p in zip(self.axes, combo):
                (point if axis.kind == "point" else repeat).update(p)
            overrides = {**self.fixed, **point, **repeat}
            parts = [f"{short[k]}={_name_part(v)}" for k, v in {**point, **repeat}.items()]
            name = re.sub(r"[^A-Za-z0-9._=+-]", "_", "_".join(parts)) or "default"
            if len(name) > 120:
                name = name[:110] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
            if name in names:
                raise ValueError(f"sweep {self.name}: two trials are named {name!r}")
            names.add(name)
            out.append(Trial(name, overrides, point, repeat))
        return out

    def meta(self, config_path: str, sweep_arg: str = "") -> dict:
        """What ``--collect`` needs (written as ``OUT/<name>/sweep.json``)."""
        return {"name": self.name, "sweep": sweep_arg, "config": config_path,
                "description": self.description, "metrics": list(self.metrics),
                "higher_is_better": list(self.higher_is_better), "compare": self.compare,
                "group": self.group, "roi": list(self.roi),
                "point_keys": [k for a in self.axes if a.kind == "point" for k in a.keys],
                "repeat_keys": [k for a in self.axes if a.kind == "repeat" for k in a.keys],
                "trials": [t.to_dict() for t in self.trials()]}

    def resolve_config(self, sweep_file: str | None = None) -> str:
        """The absolute config path (with its ``:preset``)."""
        path, _, preset = self.config.partition(":")
        candidates = [os.path.abspath(path)]
        if sweep_file:  # configs/sweeps/x.py -> the folder above configs/
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(sweep_file))))
            candidates.append(os.path.join(root, path))
        for c in candidates:
            if os.path.isfile(c):
                return c + (f":{preset}" if preset else "")
        raise FileNotFoundError(f"sweep {self.name}: config {path!r} not found (looked at "
                                f"{candidates})")


def _short_names(keys) -> dict:
    """The last component of each dotted key where that is unique, else the whole key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def load_sweep(spec: str) -> tuple[Sweep, str]:
    """``path/to/sweep.py[:preset]`` -> (the file's ``get_sweep(preset)``, the file's path)."""
    path, _, preset = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--sweep={spec}: no file {path}")
    mod_spec = importlib.util.spec_from_file_location(
        f"_qmri_sweep_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise AttributeError(f"--sweep={spec}: {path} defines no get_sweep(preset)")
    sweep = module.get_sweep(preset)
    if not isinstance(sweep, Sweep):
        raise TypeError(f"--sweep={spec}: get_sweep returned {type(sweep).__name__}, not a Sweep")
    return sweep, os.path.abspath(path)
