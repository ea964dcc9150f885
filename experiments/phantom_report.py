"""One-page PDF report of a NIST/ISMRM phantom run (``experiments.nist_phantom`` writes it beside
``results.json``): the whole-phantom T1 and T2 maps with the sphere ROIs outlined and numbered,
measured against reference on log axes (ROI SD as error bars, every method side by side, identity
line), the % bias per sphere with the tolerance band, and the clipped samples excluded per sphere.
"""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["roi_sd", "write_report"]

#: Tolerances drawn as bands (%), as the issue's acceptance states them.
TOLERANCE = {"T1": 4.0, "T2": 5.0}


def roi_sd(values, labels, keep=None) -> dict[int, float]:
    """Standard deviation of ``values`` in each labelled ROI (finite, ``keep`` voxels)."""
    ok = np.isfinite(values) if keep is None else np.isfinite(values) & keep
    return {int(k): float(np.std(values[(labels == k) & ok])) if np.any((labels == k) & ok)
            else float("nan") for k in np.unique(labels[labels > 0])}


def _map_panel(ax, image, labels, title, vmax):
    ax.imshow(np.where(np.isfinite(image), image, 0).T, origin="lower", cmap="magma", vmin=0,
              vmax=vmax)
    for k in np.unique(labels[labels > 0]):
        region = (labels == k).T.astype(float)
        ax.contour(region, levels=[0.5], colors="cyan", linewidths=0.6)
        ys, xs = np.nonzero(region)
        ax.text(xs.mean(), ys.mean(), str(int(k)), color="white", fontsize=6, ha="center",
                va="center", weight="bold")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _scatter_panel(ax, rows, methods, quantity):
    ref = np.asarray([r["reference_ms"] for r in rows])
    judged = np.asarray([r["judged"] for r in rows])
    for i, (name, (est_key, sd)) in enumerate(methods.items()):
        est = np.asarray([r[est_key] if isinstance(est_key, str) else est_key(r) for r in rows])
        err = np.asarray([sd.get(r["index"], np.nan) for r in rows]) if sd else None
        marker = "osD^v"[i % 5]
        ax.errorbar(ref[judged], est[judged], yerr=None if err is None else err[judged],
                    fmt=marker, ms=3, lw=0.8, capsize=2, label=name)
        ax.errorbar(ref[~judged], est[~judged], fmt=marker, ms=3, mfc="none", lw=0.8,
                    color=ax.lines[-1].get_color())
    lo, hi = np.nanmin(ref) * 0.7, np.nanmax(ref) * 1.4
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.7, label="identity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"reference {quantity} (ms)", fontsize=7)
    ax.set_ylabel(f"measured {quantity} (ms)", fontsize=7)
    ax.set_title(f"{quantity} vs reference (hollow: not judged)", fontsize=7)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=6)


def _bias_panel(ax, rows, methods, quantity):
    idx = np.asarray([r["index"] for r in rows])
    width = 0.8 / max(1, len(methods))
    judged = np.asarray([r["judged"] for r in rows])
    for i, (name, key) in enumerate(methods.items()):
        bias = np.asarray([r[key] for r in rows])
        x = idx + (i - (len(methods) - 1) / 2) * width
        bars = ax.bar(x[judged], bias[judged], width, label=name)
        ax.bar(x[~judged], bias[~judged], width, color=bars.patches[0].get_facecolor(), alpha=0.35)
    tol = TOLERANCE[quantity]
    ax.axhspan(-tol, tol, color="green", alpha=0.15, label=f"+-{tol:g}%")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(idx)
    ax.set_ylim(-30, 30)
    ax.set_xlabel("sphere", fontsize=7)
    ax.set_ylabel("bias (%)", fontsize=7)
    ax.set_title(f"{quantity} bias (pale: not judged; axis +-30%)", fontsize=7)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=6)


def _clip_panel(ax, t1_rows, t2_rows):
    for rows, name, shift in ((t1_rows, "T1 (VIR)", -0.2), (t2_rows, "T2 (MSE)", 0.2)):
        idx = np.asarray([r["index"] for r in rows])
        ax.bar(idx + shift, [r["clipped_samples_excluded"] for r in rows], 0.4, label=name)
    ax.set_xlabel("sphere", fontsize=7)
    ax.set_ylabel("clipped samples excluded", fontsize=7)
    ax.set_title("clipped samples excluded", fontsize=7)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=6)


def write_report(path, results: dict, t1_map, t2_map, t1_labels, t2_labels, t1_sd: dict,
                 t2_sd: dict) -> pathlib.Path:
    """Writes the one-page report (PDF, or the format of ``path``'s suffix); ``results`` is ``experiments.nist_phantom``'s dictionary, the maps
    and labels ``[X, Y]``, ``t1_sd``/``t2_sd`` the ROI SDs by sphere. Atomic (temp name, rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    t1_rows = [r for r in results["spheres"] if r["array"] == "T1"]
    t2_rows = [r for r in results["spheres"] if r["array"] == "T2"]
    fig = plt.figure(figsize=(11.69, 8.27))  # A4 landscape
    grid = fig.add_gridspec(2, 4, width_ratios=[1.4, 1, 1, 1])
    _map_panel(fig.add_subplot(grid[0, 0]), t1_map, t1_labels, "T1 (ms), VIR fit, 0-2000", 2000)
    _map_panel(fig.add_subplot(grid[1, 0]), t2_map, t2_labels,
               "T2 (ms), MSE mono-exp Rician, 0-500", 500)
    t1_methods = {"IR fit": ("estimate_ms", t1_sd)}
    for j, entry in enumerate(results.get("learned", [])):
        t1_methods[f"model {j + 1} ({entry['kind']})"] = (
            lambda r, j=j: r["learned"][j]["estimate_ms"], None)
    _scatter_panel(fig.add_subplot(grid[0, 1]), t1_rows, t1_methods, "T1")
    _scatter_panel(fig.add_subplot(grid[1, 1]), t2_rows,
                   {"EPG + smooth B1": ("estimate_ms", t2_sd),
                    "mono-exp + offset": ("mono_offset_ms", None)}, "T2")
    t1_bias = {"IR fit": "bias_percent"}
    for row in t1_rows:
        for j, e in enumerate(row.get("learned", [])):
            row[f"_learned{j}"] = e["bias_percent"]
    for j, _ in enumerate(results.get("learned", [])):
        t1_bias[f"model {j + 1}"] = f"_learned{j}"
    _bias_panel(fig.add_subplot(grid[0, 2:]), t1_rows, t1_bias, "T1")
    _bias_panel(fig.add_subplot(grid[1, 2]), t2_rows,
                {"EPG + smooth B1": "bias_percent", "mono-exp + offset": "mono_offset_bias_percent"},
                "T2")
    _clip_panel(fig.add_subplot(grid[1, 3]), t1_rows, t2_rows)
    for row in t1_rows:
        for key in [k for k in row if k.startswith("_learned")]:
            del row[key]
    s = results.get("summary", {})
    fig.suptitle(f"NIST/ISMRM phantom {results['data']}: reference at {results['temperature_C']:g} C; "
                 f"max |bias| T1 spheres 1-10 {s.get('t1_max_abs_bias_percent_spheres_1_10', np.nan):.1f}%, "
                 f"T2 spheres 2-12 {s.get('t2_max_abs_bias_percent_spheres_2_12', np.nan):.1f}%",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "pdf", dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
