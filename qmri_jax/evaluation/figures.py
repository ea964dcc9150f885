"""Figures a radiologist can read: maps with colour bars in physical units."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np

from qmri_jax.physics.protocol import MAP_UNITS

__all__ = ["plot_maps"]

_CMAPS = {"T1": "viridis", "T2": "magma", "PD": "gray", "a": "gray"}


def plot_maps(maps: dict, path, title: str = "", crlb_sd: dict | None = None,
              ranges: dict | None = None) -> pathlib.Path:
    """Saves a PNG with one panel per map (and its sqrt(CRLB) map below when given).

    Args:
      maps: name -> 2D ``[X, Y]`` array (NIfTI order; shown radiologically with x left-right).
      path: output PNG (written atomically).
      title: figure title.
      crlb_sd: optional name -> 2D sqrt(CRLB) maps.
      ranges: optional name -> (vmin, vmax); default the 1st-99th percentile inside the data.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    rows = 2 if crlb_sd else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(3.6 * len(names), 3.3 * rows), squeeze=False)
    for j, name in enumerate(names):
        panels = [(maps[name], name)] + ([(crlb_sd[name], f"sqrt(CRLB) {name}")] if crlb_sd else [])
        for i, (data, label) in enumerate(panels):
            data = np.asarray(data, float)
            finite = data[np.isfinite(data)]
            if ranges and name in ranges and i == 0:
                vmin, vmax = ranges[name]
            elif finite.size:
                vmin, vmax = np.percentile(finite, [1, 99])
            else:
                vmin, vmax = 0.0, 1.0
            ax = axes[i, j]
            im = ax.imshow(np.rot90(data), cmap=_CMAPS.get(name, "viridis"), vmin=vmin, vmax=vmax)
            ax.set_title(label)
            ax.axis("off")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            cb.set_label(MAP_UNITS.get(name, "a.u.").split(" ")[0])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
