"""Evaluation report of predicted maps on a test split: ``metrics.json`` and figures.

``metrics.json`` holds, per map (``T1``, ``T2``, ``PD`` ...), the metrics of
:func:`~qmri_jax.evaluation.metrics.masked_metrics` in the brain, and ``by_tissue`` (WM, GM, CSF),
``excluding_CSF``, ``excluding_CSF_dilated`` (CSF grown by one voxel left out, with its own
``per_sample``; Qiu et al.), ``lesion`` and ``healthy`` (brain without lesion) dicts of the same,
``per_sample`` each metric's mean, SD and count over the test samples (slices), as papers report
them; ``ssim_whole_image``: the SSIM of whole slices, background included (the thesis); ``roi``:
per-subject region means (WM, GM, CSF and, where the data have them, the deep grey matter ROIs
putamen and thalamus) with Bland-Altman bias and limits of agreement and a paired t-test per
region, ``roi_eroded`` the same with the WM, GM and CSF masks eroded by one voxel (Qiu et al.; the
deep grey matter ROIs are spheres inside the structures and are not eroded). ``by_tissue`` has the
deep grey matter ROIs too. Figures (PNG, units and
colour bars): truth / prediction / difference / % error per map, box plots of % error per tissue,
Bland-Altman plots.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from scipy import ndimage, stats

from qmri_jax.evaluation import metrics as M
from qmri_jax.physics.units import unit_label

__all__ = ["evaluate_maps", "write_report", "write_map_volumes", "dilate_in_plane"]

_TISSUES = ("WM", "GM", "CSF")
_DEEP_GM = ("putamen", "thalamus")  # ROIs inside the structures: never eroded
_REGIONS = _TISSUES + _DEEP_GM


def evaluate_maps(pred: np.ndarray, arrays: dict, targets) -> dict:
    """Metrics dict for predictions ``[N, *S, C]`` against ``arrays["targets"]`` with masks."""
    brain = arrays["mask"].astype(bool)
    out = {}
    for c, name in enumerate(targets):
        p, t = pred[..., c], arrays["targets"][..., c]
        entry = M.masked_metrics(p, t, brain)
        entry["per_sample"] = M.per_sample_metrics(p, t, brain)
        # The thesis's SSIM: over the whole slice (background included), mean +- SD over slices.
        whole = np.array([M.ssim(p[i], t[i], np.ones(p.shape[1:], bool)) for i in range(len(p))])
        entry["ssim_whole_image"] = {"mean": float(whole.mean()), "n": int(whole.size),
                                     "sd": float(whole.std(ddof=1)) if whole.size > 1 else
                                     float("nan")}
        by = {}
        for tissue in _REGIONS:
            if tissue in arrays:
                by[tissue] = M.masked_metrics(p, t, brain & arrays[tissue].astype(bool))
        entry["by_tissue"] = by
        if "CSF" in arrays:
            entry["excluding_CSF"] = M.masked_metrics(p, t, brain & ~arrays["CSF"].astype(bool))
            # Qiu et al.: CSF dilated by one voxel (in-plane, 4-neighbourhood) left out, reported
            # per test sample as well.
            keep = brain & ~dilate_in_plane(arrays["CSF"].astype(bool))
            entry["excluding_CSF_dilated"] = {**M.masked_metrics(p, t, keep),
                                              "per_sample": M.per_sample_metrics(p, t, keep)}
        if "lesion" in arrays and arrays["lesion"].any():
            lesion = arrays["lesion"].astype(bool)
            entry["lesion"] = M.masked_metrics(p, t, brain & lesion)
            entry["healthy"] = M.masked_metrics(p, t, brain & ~lesion)
        entry["roi"] = _roi_agreement(p, t, arrays)
        entry["roi_eroded"] = _roi_agreement(p, t, arrays, erode=1)
        entry["units"] = unit_label(name)
        out[name] = entry
    return out


def _in_plane(op, mask: np.ndarray, voxels: int) -> np.ndarray:
    """``op`` (binary dilation or erosion) of ``mask [N, *S]`` by ``voxels`` within each sample
    (4-/6-neighbourhood over the spatial axes; never across the first axis)."""
    structure = ndimage.generate_binary_structure(mask.ndim - 1, 1)[None]
    return op(mask, structure, iterations=voxels) if voxels > 0 else mask


def dilate_in_plane(mask: np.ndarray, voxels: int = 1) -> np.ndarray:
    """``mask [N, *S]`` dilated by ``voxels`` within each sample (see :func:`_in_plane`)."""
    return _in_plane(ndimage.binary_dilation, mask, voxels)


def _roi_agreement(p, t, arrays, erode: int = 0):
    """Per subject and region (WM, GM, CSF, each mask eroded in-plane by ``erode`` voxels; the
    deep grey matter ROIs putamen and thalamus as they are): ROI means of prediction and truth
    (labels ``sub<i>-<region>``), their Bland-Altman bias and limits, and a paired t-test per
    region over the subjects (``{"WM": {"t", "p", "n"}, ...}``; NaN below 2 subjects). A subject's
    region counts from 10 voxels."""
    if "subject" not in arrays:
        return {}
    rows = {"measured": [], "reference": [], "label": []}
    tests = {}
    for tissue in _REGIONS:
        if tissue not in arrays:
            continue
        region = _in_plane(ndimage.binary_erosion,
                           arrays[tissue].astype(bool) & arrays["mask"].astype(bool),
                           0 if tissue in _DEEP_GM else erode)
        pairs = []
        for s in np.unique(arrays["subject"]):
            m = (arrays["subject"] == s).reshape((-1,) + (1,) * (region.ndim - 1)) & region
            if m.sum() >= 10:
                pairs.append((float(np.mean(p[m])), float(np.mean(t[m]))))
                rows["label"].append(f"sub{int(s)}-{tissue}")
        rows["measured"] += [a for a, _ in pairs]
        rows["reference"] += [b for _, b in pairs]
        diff = np.array([a - b for a, b in pairs])
        if len(pairs) >= 2 and np.ptp(diff) > 1e-9 * np.max(np.abs(diff)):
            res = stats.ttest_rel([a for a, _ in pairs], [b for _, b in pairs])
            tests[tissue] = {"t": float(res.statistic), "p": float(res.pvalue), "n": len(pairs)}
        elif len(pairs) >= 2:  # identical differences (e.g. exact): no spread to test against
            tests[tissue] = {"t": float("nan"), "p": float("nan"), "n": len(pairs)}
    if len(rows["measured"]) < 2:
        return {}
    return {**M.bland_altman(rows["measured"], rows["reference"]), **rows, "paired_t": tests}


def write_report(out_dir: str, pred: np.ndarray, arrays: dict, targets, figures: bool = True,
                 extra: dict | None = None) -> dict:
    """Evaluate, write ``out_dir/metrics.json`` (atomically) and figures; returns the metrics."""
    from qmri_jax.io.nifti import write_json
    os.makedirs(out_dir, exist_ok=True)
    metrics = evaluate_maps(pred, arrays, targets)
    if extra:
        metrics.update(extra)
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    if figures:
        plot_report(out_dir, pred, arrays, targets, metrics)
    for name in targets:
        m = metrics[name]
        print(f"{name}: median |%err| {m['median_abs_pct']:.2f}  mean {m['mean_abs_pct']:.2f}  "
              f"PSNR {m['psnr']:.1f} dB  SSIM {m['ssim']:.3f}  (test split, brain mask)")
    print(f"evaluation written to {out_dir}")
    return metrics


def plot_report(out_dir, pred, arrays, targets, metrics):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qmri_jax.io.nifti import _atomic

    def save(fig, name):
        _atomic(pathlib.Path(out_dir) / name,
                lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        plt.close(fig)

    brain = arrays["mask"].astype(bool)
    i = int(np.argmax(brain.reshape(len(brain), -1).sum(1)))  # the slice with most brain
    fig, axes = plt.subplots(len(targets), 4, figsize=(13, 3.2 * len(targets)), squeeze=False)
    for c, name in enumerate(targets):
        t, p, m = arrays["targets"][i, ..., c], pred[i, ..., c], brain[i]
        vmax = float(np.percentile(t[m], 99)) if m.any() else 1.0
        unit = unit_label(name)
        diff = np.where(m, p - t, 0)
        pct = np.where(m & (t > 0), 100 * (p - t) / np.where(t > 0, t, 1), 0)
        for j, (img, title, cmap, lo, hi, lab) in enumerate([
                (np.where(m, t, 0), f"{name} truth", "magma", 0, vmax, unit),
                (np.where(m, p, 0), f"{name} prediction", "magma", 0, vmax, unit),
                (diff, f"{name} difference", "RdBu_r", -0.2 * vmax, 0.2 * vmax, unit),
                (pct, f"{name} % error", "RdBu_r", -20, 20, "%")]):
            ax = axes[c, j]
            h = ax.imshow(np.rot90(img), cmap=cmap, vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
            fig.colorbar(h, ax=ax, fraction=0.046).set_label(lab, fontsize=8)
    fig.tight_layout()
    save(fig, "maps.png")

    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.5), squeeze=False)
    for c, name in enumerate(targets):
        data, labels = [], []
        for tissue in _REGIONS:
            if tissue in arrays:
                m = brain & arrays[tissue].astype(bool)
                if m.any():
                    data.append(M.abs_pct_errors(pred[..., c], arrays["targets"][..., c], m))
                    labels.append(tissue)
        ax = axes[0, c]
        if data:
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_ylabel("|% error|")
        ax.set_title(f"{name}: |% error| per tissue", fontsize=9)
    fig.tight_layout()
    save(fig, "pct_error_by_tissue.png")

    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.5), squeeze=False)
    for c, name in enumerate(targets):
        roi = metrics[name].get("roi") or {}
        ax = axes[0, c]
        if roi:
            a, b = np.asarray(roi["measured"]), np.asarray(roi["reference"])
            ax.scatter((a + b) / 2, a - b, s=12)
            for y, ls in ((roi["bias"], "-"), (roi["loa_low"], "--"), (roi["loa_high"], "--")):
                ax.axhline(y, color="k", ls=ls, lw=0.8)
        unit = unit_label(name)
        ax.set_xlabel(f"mean of prediction and truth ({unit})")
        ax.set_ylabel(f"prediction - truth ({unit})")
        ax.set_title(f"{name}: Bland-Altman (tissue ROIs)", fontsize=9)
    fig.tight_layout()
    save(fig, "bland_altman.png")


def write_map_volumes(out_dir: str, maps: dict, voxel_mm: float, prefix: str) -> None:
    """NIfTI stacks ``[H, W, num_slices]`` of slice maps ``{file name part: [N, H, W]}``: the key
    is ``(map, desc)`` (``desc`` None for the estimate, e.g. ``"std"`` for its uncertainty), the
    file is :func:`qmri_jax.io.nifti.bids_map_name` of it with ``prefix``."""
    from qmri_jax.io.nifti import bids_map_name, write_nifti
    aff = np.diag([float(voxel_mm)] * 3 + [1.0])
    for (name, desc), vol in maps.items():
        write_nifti(os.path.join(out_dir, bids_map_name(name, prefix=prefix, desc=desc)),
                    np.moveaxis(np.asarray(vol), 0, -1).astype(np.float32), aff)
