"""The one table of map units, and the fixed scaling of maps into [-1, 1] used by learned models.

:data:`MAP_UNITS` gives the unit of every map name in the package (times in milliseconds);
:func:`unit_label` its short form for figure axes and metrics. :data:`SCALING` maps a physical value
``x`` in ``[low, high]`` to ``[-1, 1]``: log for relaxation times (so a relative error weighs the
same at 20 ms and 2000 ms), linear for PD and the inversion efficiency k. The DDPM diffuses maps on
this scale and the RIM iterates on it.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["MAP_UNITS", "SCALING", "TANH_SCALE", "MAP_SCALINGS", "unit_label", "to_unit_range",
           "from_unit_range", "scale_maps", "unscale_maps"]

#: Units of every map name used across the package.
MAP_UNITS = {
    "T1": "ms",
    "T2": "ms",
    "T2s": "ms",
    "PD": "a.u.",
    "k": "dimensionless (inversion efficiency, inverted fraction)",
    "B": "dimensionless (IR-FSE inversion factor)",
    "B1": "dimensionless (relative flip angle)",
    "offset": "a.u.",
    "refocus": "deg",
}

#: target -> (kind, low, high): x in [low, high] maps to [-1, 1] (log or linear). k up to 1.25:
#: the apparent efficiency of real IR-FSE data exceeds 1 for short T1 (data.k_spread).
SCALING = {"T1": ("log", 10.0, 6000.0), "T2": ("log", 5.0, 3000.0), "PD": ("linear", 0.0, 1.5),
           "k": ("linear", 0.5, 1.25), "B": ("linear", 1.5, 2.25)}

#: target -> ``x0`` of the saturating scaling ``y = 2 tanh(x / x0) - 1`` (``map_scaling="tanh"``,
#: the qMRI Diffusor's style of map scaling): 0 (the background) maps to -1 and every positive
#: value into (-1, 1) without a floor or a ceiling; ``x0`` puts the maps' typical values mid-range
#: (T1 2000 ms: 1000 ms at -0.08; B 2: a perfect inversion at 0.52).
TANH_SCALE = {"T1": 2000.0, "T2": 1000.0, "PD": 1.0, "k": 1.0, "B": 2.0}

#: The map scalings :func:`scale_maps` knows.
MAP_SCALINGS = ("range", "tanh")


def unit_label(name: str) -> str:
    """Short unit of a map for axes and reports: ``"ms"``, ``"a.u."``, ``""`` (dimensionless)."""
    unit = MAP_UNITS.get(name, "")
    return "" if unit.startswith("dimensionless") else unit.split(" ")[0]


def _scaling(name: str):
    if name not in SCALING:
        raise ValueError(f"map {name!r} has no [-1, 1] scaling (known: {sorted(SCALING)})")
    return SCALING[name]


def to_unit_range(x, name: str):
    """Physical values of map ``name`` -> [-1, 1] (log maps floored at their low end; not clipped
    above, so a value past ``high`` lands past 1)."""
    kind, lo, hi = _scaling(name)
    if kind == "log":
        return 2 * (jnp.log(jnp.maximum(x, lo)) - np.log(lo)) / (np.log(hi) - np.log(lo)) - 1
    return 2 * (x - lo) / (hi - lo) - 1


def from_unit_range(y, name: str):
    """[-1, 1] -> physical values of map ``name`` (``y`` held within [-1, 1] first)."""
    kind, lo, hi = _scaling(name)
    y = jnp.clip(y, -1, 1)
    if kind == "log":
        return jnp.exp((y + 1) / 2 * (np.log(hi) - np.log(lo)) + np.log(lo))
    return (y + 1) / 2 * (hi - lo) + lo


def _tanh_scale(name: str) -> float:
    if name not in TANH_SCALE:
        raise ValueError(f"map {name!r} has no tanh scaling (known: {sorted(TANH_SCALE)})")
    return TANH_SCALE[name]


def _check_scaling(scaling: str):
    if scaling not in MAP_SCALINGS:
        raise ValueError(f"map scaling {scaling!r}: expected one of {MAP_SCALINGS}")


def scale_maps(targets, mask, names, scaling: str = "range"):
    """Physical maps ``[..., C]`` (``names`` order) -> [-1, 1], background (``mask`` 0) at -1.

    ``scaling``: ``"range"`` (:data:`SCALING`: log / linear over a fixed range) or ``"tanh"``
    (``2 tanh(x / x0) - 1`` with ``x0`` from :data:`TANH_SCALE`; negative values floored at 0)."""
    _check_scaling(scaling)
    if scaling == "tanh":
        out = [jnp.where(mask > 0, 2 * jnp.tanh(jnp.maximum(targets[..., i], 0.0)
                                                / _tanh_scale(n)) - 1, -1.0)
               for i, n in enumerate(names)]
    else:
        out = [jnp.where(mask > 0, to_unit_range(targets[..., i], n), -1.0)
               for i, n in enumerate(names)]
    return jnp.stack(out, axis=-1)


#: The tanh scaling's inverse holds ``(y + 1) / 2`` below this (``x <= 4.2 x0`` in float32).
_TANH_MAX = 0.9995


def unscale_maps(x, names, scaling: str = "range"):
    """[-1, 1] maps ``[..., C]`` -> physical units (the inverse of :func:`scale_maps`; ``x`` held
    within [-1, 1] first)."""
    _check_scaling(scaling)
    if scaling == "tanh":
        return jnp.stack([_tanh_scale(n) * jnp.arctanh(jnp.clip((x[..., i] + 1) / 2, 0.0,
                                                                 _TANH_MAX))
                          for i, n in enumerate(names)], axis=-1)
    return jnp.stack([from_unit_range(x[..., i], n) for i, n in enumerate(names)], axis=-1)
