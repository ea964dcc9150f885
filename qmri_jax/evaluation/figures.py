"""Figures a radiologist can read: maps with colour bars in physical units."""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np

from qmri_jax.physics.protocol import MAP_UNITS
from qmri_jax.physics.units import unit_label

__all__ = ["plot_maps", "plot_uncertainty"]

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


def plot_uncertainty(out_dir, mean, std, arrays, names) -> pathlib.Path:
    """``out_dir/uncertainty.png``: per map, the posterior mean, std and error on the slice with
    most brain, and the median |error| per std decile against the Gaussian line (0.674 std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qmri_jax.io.nifti import _atomic

    brain = arrays["mask"].astype(bool)
    i = int(np.argmax(brain.reshape(len(brain), -1).sum(1)))
    fig, axes = plt.subplots(len(names), 4, figsize=(15, 3.3 * len(names)), squeeze=False)
    for c, n in enumerate(names):
        unit = unit_label(n)
        t, m = arrays["targets"][i, ..., c], brain[i]
        vmax = float(np.percentile(t[m], 99)) if m.any() else 1.0
        err = np.where(m, mean[i, ..., c] - t, 0)
        sd = np.where(m, std[i, ..., c], 0)
        for j, (img, title, cmap, lo, hi) in enumerate([
                (np.where(m, mean[i, ..., c], 0), f"{n} posterior mean", "magma", 0, vmax),
                (sd, f"{n} posterior std", "viridis", 0, float(np.percentile(sd[m], 99)) or 1),
                (err, f"{n} error", "RdBu_r", -0.2 * vmax, 0.2 * vmax)]):
            h = axes[c, j].imshow(np.rot90(img), cmap=cmap, vmin=lo, vmax=hi)
            axes[c, j].set_title(title, fontsize=9)
            axes[c, j].axis("off")
            fig.colorbar(h, ax=axes[c, j], fraction=0.046).set_label(unit, fontsize=8)
        e = np.abs(mean[..., c] - arrays["targets"][..., c])[brain]
        s = std[..., c][brain]
        edges = np.unique(np.percentile(s, np.linspace(0, 100, 11)))
        idx = np.clip(np.digitize(s, edges[1:-1]), 0, len(edges) - 2)
        xs = [np.median(s[idx == b]) for b in range(len(edges) - 1) if np.any(idx == b)]
        ys = [np.median(e[idx == b]) for b in range(len(edges) - 1) if np.any(idx == b)]
        ax = axes[c, 3]
        ax.plot(xs, ys, "o-", label="median |error| per std decile")
        lim = max(max(xs, default=1), max(ys, default=1))
        ax.plot([0, lim], [0, 0.674 * lim], "k--", lw=0.8, label="Gaussian: 0.674 std")
        ax.set_xlabel(f"posterior std ({unit})")
        ax.set_ylabel(f"|error| ({unit})")
        ax.set_title(f"{n} calibration", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = pathlib.Path(out_dir) / "uncertainty.png"
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return path
