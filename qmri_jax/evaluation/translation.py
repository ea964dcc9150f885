"""Scores of a GE -> TSE translation on whole test volumes, at both resolutions.

* ``low_res``: the model's thick slices against the acquired thick-slice TSE (what the High-to-low
  paper could measure), inside the thick-slice brain mask;
* ``high_res``: the model's high-resolution TSE against the true high-resolution TSE (what it could
  not: no scanner delivers it), inside the brain; a low-to-low network is applied to the
  thin-slice GE (it is fully convolutional), and ``high_res_cubic`` is its thick-slice output
  interpolated;
* ``high_res_consistent`` (when ``config.translation.consistency`` > 0): the same output made
  consistent with the acquired thick slices
  (:func:`qmri_jax.data.slice_interp.consistent_thin_slices`);
* ``high_res_interpolation``: cubic interpolation of the acquired thick-slice TSE along ``z``.

Each section: ``mae``, ``mi`` (mutual information, 128 bins, nats), ``ssim`` (box window
21 x 21 x 3) as means over the test subjects, ``by_tissue`` MAE (GM / WM / CSF at high resolution),
and ``per_subject`` lists. Intensities are in units of the acquired TSE's in-brain 99th percentile.
"""

from __future__ import annotations

import json
import os

import numpy as np
from scipy import ndimage

from qmri_jax.data.slice_interp import cubic_thin_slices
from qmri_jax.evaluation.metrics import mae, mutual_information

__all__ = ["ssim_box", "cubic_thin_slices", "volume_scores", "evaluate_translation"]

SSIM_WINDOW = (21, 21, 3)


def ssim_box(pred, truth, mask, window=SSIM_WINDOW) -> float:
    """Mean SSIM inside ``mask`` with a box window (``window`` voxels), data range of ``truth``
    in the mask (Wang et al. 2004 constants)."""
    p, t, m = (np.asarray(a, np.float64) for a in (pred, truth, mask))
    m = m.astype(bool)
    rng = float(t[m].max() - t[m].min()) or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2

    def f(x):
        return ndimage.uniform_filter(x, size=window, mode="reflect")

    mp, mt = f(p), f(t)
    spp, stt, spt = f(p * p) - mp ** 2, f(t * t) - mt ** 2, f(p * t) - mp * mt
    s = ((2 * mp * mt + c1) * (2 * spt + c2)) / ((mp ** 2 + mt ** 2 + c1) * (spp + stt + c2))
    return float(np.mean(s[m]))


def volume_scores(pred, truth, mask, tissues: dict | None = None) -> dict:
    """``{"mae", "mi", "ssim"}`` inside ``mask``, plus ``by_tissue`` MAE."""
    m = np.asarray(mask, bool)
    out = {"mae": mae(pred, truth, m), "mi": mutual_information(pred, truth, m, bins=128),
           "ssim": ssim_box(pred, truth, m)}
    if tissues:
        out["by_tissue"] = {k: mae(pred, truth, np.asarray(v, bool) & m)
                            for k, v in tissues.items() if np.any(np.asarray(v, bool) & m)}
    return out


def _mean(rows: list[dict]) -> dict:
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("mae", "mi", "ssim")}
    out["sd"] = {k: float(np.std([r[k] for r in rows])) for k in ("mae", "mi", "ssim")}
    tissues = sorted(set().union(*[r.get("by_tissue", {}) for r in rows]))
    if tissues:
        out["by_tissue"] = {t: float(np.mean([r["by_tissue"][t] for r in rows
                                              if t in r.get("by_tissue", {})])) for t in tissues}
    out["per_subject"] = [{k: r[k] for k in ("mae", "mi", "ssim")} for r in rows]
    return out


def evaluate_translation(task, state, vols: dict, out_dir: str, figures: bool = True) -> dict:
    """Scores of ``task`` (a :class:`~qmri_jax.tasks.translation.TranslationTask`) on the test
    volumes ``vols`` (stacked, :func:`qmri_jax.data.translation.load_split`); writes
    ``out_dir/metrics.json`` (and ``translation.png``)."""
    os.makedirs(out_dir, exist_ok=True)
    f = task.factor
    rows = {k: [] for k in ("low_res", "high_res", "high_res_consistent", "high_res_cubic",
                            "high_res_interpolation")}
    example = None
    for i in range(len(vols["ge"])):
        tissues = {t: vols[t][i] for t in ("GM", "WM", "CSF")}
        brain, brain_lr = vols["brain"][i], vols["brain_lr"][i]
        truth_hr, tse_lr = vols["tse_hr"][i], vols["tse_lr"][i]
        res = task.translate_volume(state, vols["ge"][i], thin=True,
                                    thick=tse_lr if task.s.consistency else None)
        hr = res["mean"]
        if task.h2l:
            lr = res["thick"]  # the network's own thick slices
        else:
            lr = task.translate_volume(state, vols["ge_lr"][i])["mean"]
            rows["high_res_cubic"].append(volume_scores(cubic_thin_slices(lr, f), truth_hr,
                                                        brain, tissues))
        interp = cubic_thin_slices(tse_lr, f)
        rows["low_res"].append(volume_scores(lr, tse_lr, brain_lr))
        rows["high_res"].append(volume_scores(hr, truth_hr, brain, tissues))
        if "consistent" in res:
            rows["high_res_consistent"].append(volume_scores(res["consistent"], truth_hr, brain,
                                                             tissues))
        rows["high_res_interpolation"].append(volume_scores(interp, truth_hr, brain, tissues))
        if example is None:
            example = dict(ge=vols["ge"][i], thick=tse_lr, interp=interp, model=hr,
                           truth=truth_hr, brain=brain)
    metrics = {k: _mean(v) for k, v in rows.items() if v}
    metrics["mode"] = task.s.mode
    metrics["kernel"] = [float(x) for x in np.asarray(task.kernel(state))]
    metrics["consistency"] = int(task.s.consistency)
    metrics["num_subjects"] = len(vols["ge"])
    tmp = os.path.join(out_dir, "metrics.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(metrics, fh, indent=1)
    os.replace(tmp, os.path.join(out_dir, "metrics.json"))
    if figures and example is not None:
        _figure(example, f, os.path.join(out_dir, "translation.png"))
    return metrics


def _figure(ex, factor, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = int(np.argmax(ex["brain"].sum(axis=(0, 2))))  # the coronal plane with the most brain
    z = int(np.argmax(ex["brain"].sum(axis=(0, 1))))
    thick_up = np.repeat(ex["thick"], factor, axis=2)
    panels = [("GE (input)", ex["ge"]), ("TSE thick slices", thick_up),
              ("cubic interpolation", ex["interp"]), ("model", ex["model"]),
              ("true thin-slice TSE", ex["truth"])]
    fig, axes = plt.subplots(2, len(panels), figsize=(3 * len(panels), 6))
    for j, (title, vol) in enumerate(panels):
        hi = float(np.percentile(vol[ex["brain"].astype(bool)], 99.5)) if j else None
        axes[0, j].imshow(np.rot90(vol[:, :, z]), cmap="gray", vmin=0, vmax=hi)
        axes[1, j].imshow(np.rot90(vol[:, y, :]), cmap="gray", vmin=0, vmax=hi,
                          aspect="auto")
        axes[0, j].set_title(title, fontsize=9)
        for a in axes[:, j]:
            a.axis("off")
    axes[0, 0].text(-0.1, 0.5, "axial", transform=axes[0, 0].transAxes, rotation=90,
                    va="center")
    axes[1, 0].text(-0.1, 0.5, "coronal", transform=axes[1, 0].transAxes, rotation=90,
                    va="center")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
