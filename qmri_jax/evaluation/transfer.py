"""Contrast-transfer evaluation: every acquired contrast to every other against the identity
baseline, the maps in the middle against the truth and a least-squares fit, transfer to unseen
(TE, TR) settings, and the discriminator's class map over a TE x TR grid.

Image metrics (per slice, then mean +- SD over slices and input/target pairs) are computed inside
an Otsu foreground mask of the target image, every image (target, synthesised, baseline) divided
by its own 99th percentile in that mask, as images of different contrasts are compared after
intensity normalisation: the scores measure the contrast between tissues, not the global scale.
The identity baseline is the input image itself (normalised the same way): what a copy of the
input scores without physics.

``write_transfer_report(task, state, split, out_dir)`` needs of ``task``: ``protocol``,
``transfer_all(state, images [B, H, W, K])``, ``class_probs(state, x [B, H, W])``,
``patch_mask(mask [B, H, W])`` and
``config.train.batch_size`` (the :class:`qmri_jax.tasks.gan.GanTask`).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from qmri_jax.evaluation import metrics as M
from qmri_jax.physics.signals import spin_echo

__all__ = ["otsu_threshold", "foreground", "image_metrics", "transfer_metrics",
           "UNSEEN_SETTINGS", "write_transfer_report", "IMAGE_METRICS"]

IMAGE_METRICS = ("mse", "nrmse", "psnr", "ssim")
#: (TE, TR) in ms inside the five-contrast protocol's range and outside it.
UNSEEN_SETTINGS = {"interpolated": ((40.0, 2000.0), (100.0, 1500.0), (20.0, 3000.0)),
                   "extrapolated": ((200.0, 6000.0), (8.0, 250.0), (30.0, 8000.0))}
TISSUES = ("WM", "GM", "CSF")


def otsu_threshold(x, bins: int = 256) -> float:
    """Otsu's threshold of the values of ``x`` (maximum between-class variance)."""
    v = np.asarray(x, np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def foreground(x) -> np.ndarray:
    """Otsu foreground mask of one image ``[H, W]``."""
    return np.asarray(x) > otsu_threshold(x)


def _p99(x, mask):
    return max(float(np.percentile(x[mask], 99)), 1e-12) if mask.any() else 1.0


def image_metrics(pred, target, mask) -> dict:
    """MSE, NRMSE, PSNR (peak: the normalised target's in-mask maximum) and SSIM of one image pair
    ``[H, W]``, each image divided by its own 99th percentile in ``mask``."""
    p = np.asarray(pred, np.float64) / _p99(np.asarray(pred), mask)
    t = np.asarray(target, np.float64) / _p99(np.asarray(target), mask)
    return {"mse": float(np.mean((p[mask] - t[mask]) ** 2)), "nrmse": M.nrmse(p, t, mask),
            "psnr": M.psnr(p, t, mask), "ssim": M.ssim(p, t, mask)}


def transfer_metrics(pred, images) -> dict:
    """``pred [K_in, N, H, W, K_out]`` synthesised from ``images [N, H, W, K]``.

    Returns ``{"model": rows, "baseline": rows}``, ``rows[(i, j)]`` a list (over slices) of
    :func:`image_metrics` dicts for input ``i`` != target ``j``.
    """
    k, n = pred.shape[0], pred.shape[1]
    out = {"model": {}, "baseline": {}}
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            rm, rb = [], []
            for s in range(n):
                tgt, inp = images[s, ..., j], images[s, ..., i]
                m = foreground(tgt)
                rm.append(image_metrics(pred[i, s, ..., j], tgt, m))
                rb.append(image_metrics(inp, tgt, m))
            out["model"][(i, j)], out["baseline"][(i, j)] = rm, rb
    return out


def _summary(rows_by_pair, key):
    v = np.array([r[key] for rows in rows_by_pair.values() for r in rows])
    return {"mean": float(np.mean(v)), "sd": float(np.std(v))}


def _matrix(rows_by_pair, key, k):
    mat = np.full((k, k), np.nan)
    for (i, j), rows in rows_by_pair.items():
        mat[i, j] = np.mean([r[key] for r in rows])
    return mat


def _map_errors(maps, split, names=("PD", "T1", "T2")) -> dict:
    """Median |% error| of ``maps [N, H, W, 3]`` in the brain and per tissue."""
    brain = split["mask"].astype(bool)
    out = {}
    for c, name in enumerate(names):
        t = split["targets"][..., c]
        entry = {"median_abs_pct": float(np.median(M.abs_pct_errors(maps[..., c], t, brain)))}
        entry["by_tissue"] = {
            tissue: float(np.median(M.abs_pct_errors(maps[..., c], t,
                                                     brain & split[tissue].astype(bool))))
            for tissue in TISSUES if tissue in split and (brain & split[tissue].astype(bool)).any()}
        out[name] = entry
    return out


def _fit_maps(images, mask, protocol) -> np.ndarray:
    """Levenberg-Marquardt least-squares fit of every contrast (PD, T1, T2), NaN outside."""
    from qmri_jax.fitting.maps import fit_images
    from qmri_jax.fitting.solver import SolverOptions
    res = fit_images(images, protocol, "joint", mask=mask, options=SolverOptions(loss="gaussian"),
                     estimate_sigma=False)
    return np.stack([res.maps[n] for n in ("PD", "T1", "T2")], -1)


def _unseen(maps_by_input, fit_maps, split) -> dict:
    brain = split["mask"].astype(bool)
    t = split["targets"]
    out = {}
    for group, settings in UNSEEN_SETTINGS.items():
        out[group] = {}
        for te, tr in settings:
            truth = np.asarray(spin_echo(t[..., 0], t[..., 1], t[..., 2], tr, te))
            model = [image_metrics(np.asarray(spin_echo(m[s, ..., 0], m[s, ..., 1], m[s, ..., 2],
                                                        tr, te)), truth[s], brain[s])
                     for m in maps_by_input for s in range(len(truth)) if brain[s].any()]
            fm = np.nan_to_num(fit_maps)
            fit = [image_metrics(np.asarray(spin_echo(fm[s, ..., 0], fm[s, ..., 1],
                                                      np.maximum(fm[s, ..., 2], 1e-3), tr, te)),
                                 truth[s], brain[s]) for s in range(len(truth)) if brain[s].any()]
            out[group][f"TE{te:g}_TR{tr:g}"] = {
                "model": {k: float(np.mean([r[k] for r in model])) for k in IMAGE_METRICS},
                "fit": {k: float(np.mean([r[k] for r in fit])) for k in IMAGE_METRICS}}
    return out


def _batched(fn, arrays, batch):
    """``fn(x [batch, ...]) -> tuple of [K, batch, ...]`` over ``arrays [N, ...]`` (the last batch
    padded) -> tuple of ``[K, N, ...]``."""
    outs = []
    for i in range(0, len(arrays), batch):
        x = arrays[i:i + batch]
        n = len(x)
        if n < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - n, 0)])
        outs.append([np.asarray(a)[:, :n] for a in fn(x)])
    return tuple(np.concatenate(parts, axis=1) for parts in zip(*outs))


def class_map(task, state, maps, te_grid, tr_grid, fg) -> np.ndarray:
    """The discriminator's class (argmax of the mean probability over foreground patches) of one
    slice's ``maps [H, W, 3]`` synthesised at every (TE, TR) of the grid: ``[len(te), len(tr)]``."""
    te, tr = np.meshgrid(te_grid, tr_grid, indexing="ij")
    imgs = np.asarray(spin_echo(maps[..., 0], maps[..., 1], maps[..., 2],
                                tr.ravel()[:, None, None], te.ravel()[:, None, None]))
    probs = np.asarray(jax.jit(task.class_probs)(state, imgs))
    pm = np.asarray(task.patch_mask(fg[None].astype(np.float32)))[0]
    mean = (probs * pm[None, ..., None]).sum((1, 2)) / max(pm.sum(), 1.0)
    return mean.argmax(-1).reshape(te.shape)


def write_transfer_report(task, state, split, out_dir, figures: bool = True) -> dict:
    """``metrics.json`` (``transfer``, ``maps``, ``maps_fit``, ``unseen_settings``) and figures
    (``nrmse_matrix.png``, ``class_map.png``, ``example.png``) for the test split."""
    prot = task.protocol
    names = list(prot.names)
    k = len(names)
    images = np.asarray(split["images"], np.float32)
    bs = int(task.config.train.batch_size)
    fn = jax.jit(task.transfer_all)
    pred, maps = _batched(lambda x: fn(state, x), images, bs)
    rows = transfer_metrics(pred, images)
    transfer = {m: {side: _summary(rows[side], m) for side in ("baseline", "model")}
                for m in IMAGE_METRICS}
    transfer["psnr_gain_db"] = transfer["psnr"]["model"]["mean"] - transfer["psnr"]["baseline"][
        "mean"]
    transfer["contrasts"] = names
    transfer["nrmse_matrix"] = {side: _matrix(rows[side], "nrmse", k).tolist()
                                for side in ("baseline", "model")}
    transfer["psnr_by_pair"] = {
        f"{names[i]}->{names[j]}": {side: float(np.mean([r["psnr"] for r in rows[side][(i, j)]]))
                                    for side in ("baseline", "model")} for (i, j) in rows["model"]}
    brain = split["mask"].astype(bool)
    fit = _fit_maps(images, brain, prot)
    per_input = [_map_errors(maps[i], split) for i in range(k)]
    pooled = _map_errors(maps.reshape(-1, *maps.shape[2:]),
                         {key: np.concatenate([split[key]] * k) for key in
                          ("mask", "targets", *[t for t in TISSUES if t in split])})
    for name in pooled:
        pooled[name]["by_input"] = {names[i]: per_input[i][name]["median_abs_pct"]
                                    for i in range(k)}
    metrics = {"transfer": transfer, "maps": pooled, "maps_fit": _map_errors(fit, split),
               "unseen_settings": _unseen(list(maps), fit, split)}
    path = os.path.join(out_dir, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(path + ".tmp", path)
    if figures:
        from qmri_jax.evaluation.transfer_figures import plot_class_map, plot_example, plot_nrmse
        plot_nrmse(os.path.join(out_dir, "nrmse_matrix.png"), transfer["nrmse_matrix"], names)
        s = int(np.argmax(brain.sum((1, 2))))
        te_grid, tr_grid = np.geomspace(5, 300, 20), np.geomspace(200, 8000, 20)
        cm = class_map(task, state, maps[0, s], te_grid, tr_grid, brain[s])
        plot_class_map(os.path.join(out_dir, "class_map.png"), cm, te_grid, tr_grid,
                       np.asarray(prot.te_ms), np.asarray(prot.tr_ms), names)
        plot_example(os.path.join(out_dir, "example.png"), images[s], pred[:, s], maps[:, s],
                     split["targets"][s], brain[s], names)
    return metrics
