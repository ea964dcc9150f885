"""Figures of the contrast-transfer report: the input/target NRMSE matrix, the discriminator's
class map over a TE x TR grid, and one slice transferred to every contrast with its maps."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["plot_nrmse", "plot_class_map", "plot_example"]


def _save(fig, path):
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_nrmse(path, matrices: dict, names) -> None:
    """Side by side: NRMSE of transfer input (rows) -> target (columns), identity vs model."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(matrices), figsize=(5.2 * len(matrices), 4.6))
    vmax = max(np.nanmax(np.asarray(m)) for m in matrices.values())
    for ax, (side, m) in zip(np.atleast_1d(axes), matrices.items()):
        m = np.asarray(m)
        im = ax.imshow(m, vmin=0, vmax=vmax, cmap="viridis")
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.3f}", ha="center", va="center", fontsize=8,
                            color="w" if m[i, j] < 0.6 * vmax else "k")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("target contrast")
        ax.set_ylabel("input contrast")
        ax.set_title(f"NRMSE, {side}")
        fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
    plt.close(fig)


def plot_class_map(path, classes, te_grid, tr_grid, te_train, tr_train, names) -> None:
    """The discriminator's class of images synthesised over (TE, TR), training settings marked."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    labels = list(names) + ["synthetic"]
    cmap = ListedColormap(plt.get_cmap("tab10").colors[:len(labels)])
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.pcolormesh(tr_grid, te_grid, classes, cmap=cmap, vmin=-0.5, vmax=len(labels) - 0.5,
                  shading="nearest")
    for c, (te, tr) in enumerate(zip(te_train, tr_train)):
        ax.scatter([tr], [te], color=cmap(c), edgecolor="k", s=80, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("TR (ms)")
    ax.set_ylabel("TE (ms)")
    handles = [plt.Line2D([], [], marker="s", ls="", color=cmap(i), label=lab)
               for i, lab in enumerate(labels)]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("Discriminator class of synthesised images (dots: training contrasts)")
    _save(fig, path)
    plt.close(fig)


def plot_example(path, images, pred, maps, truth, brain, names) -> None:
    """Row 1: acquired contrasts; row 2: each synthesised from the first contrast; row 3: maps
    from the first contrast and the true maps (PD, T1 ms, T2 ms)."""
    plt = _plt()
    k = len(names)
    fig, axes = plt.subplots(3, max(k, 6), figsize=(2.2 * max(k, 6), 7))
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(k):
        vmax = np.percentile(images[..., j][brain], 99) if brain.any() else None
        axes[0, j].imshow(images[..., j].T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        axes[0, j].set_title(f"acquired {names[j]}", fontsize=8)
        axes[1, j].imshow(pred[0, ..., j].T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        axes[1, j].set_title(f"from {names[0]}", fontsize=8)
    panels = (("PD", "gray"), ("T1 (ms)", "viridis"), ("T2 (ms)", "magma"))
    for c, (name, cmap) in enumerate(panels):
        vmax = np.percentile(truth[..., c][brain], 99) if brain.any() else None
        for col, (src, label) in enumerate(((maps[0], "model"), (truth, "true"))):
            ax = axes[2, 2 * c + col]
            im = ax.imshow(np.where(brain, src[..., c], 0).T, cmap=cmap, vmin=0, vmax=vmax,
                           origin="lower")
            ax.set_title(f"{name}, {label}", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
    plt.close(fig)
