"""Learned maps of real in-vivo brains beside the voxelwise fits of the same images.

Usage:
  python -m experiments.invivo_learned --data ../shared/invivo --out OUT [--checkpoint WORKDIR ...]

Two models, each trained on synthetic brains only (never on these scans):
* the per-voxel DDPM of the main job for the in-vivo IR protocol (``configs/ddpm.py:invivo_ir``,
  protocol ``qmrlab_ir``), applied to ``ir/`` at its native 2 mm grid: posterior mean and SD of
  T1, PD and k, beside the voxelwise fit (``|a + b exp(-TI/T1)|``, Rician MLE, as
  ``experiments.invivo``) and, on ``--exact-voxels`` random mask voxels, the exact per-voxel
  posterior (:func:`qmri_jax.fitting.posterior.posterior_nodes`) under the DDPM's training prior
  (T1 log-uniform over ``ddpm.voxel_t1_range``, k uniform over ``ddpm.voxel_k_range``, PD uniform
  0-1.5) with the noise SD from the image background;
* a U-Net (regression, ``configs/unet.py:invivo_mtsat``, protocol ``qmrlab_mtsat``) applied to the
  3D PDw / T1w volumes of ``mtsat/``, brought to its 2 mm training grid (trilinear) and its maps
  back to the 1.5 mm grid, beside the two-angle DESPOT1 fit (``vfa`` model, no B1 map exists).

A ``--checkpoint`` is matched to its scan by the protocol it was trained on (the workdir's
``protocol.json``, checked against the scan's JSON sidecars); a model not given is trained first
into ``OUT/train_<name>`` with its preset (``--steps`` overrides the step count, e.g. for a quick
look). Brain masks: the source's for ``ir/``; for ``mtsat/`` computed (the PDw volume above half
its Otsu threshold, holes filled per slice, largest component, eroded by 12 mm: skull and scalp
out; :func:`brain_only`). WM and GM: a two-class mixture on log T1 of the fit's map
(400-2500 ms), as ``experiments.invivo``.

Writes ``OUT/results.json``, ``OUT/table.md`` (per model: WM / GM medians of model and fit, the
median voxel's |model / fit - 1|, the posterior SD, the SD ratio to the exact posterior and the
exact posterior mass inside the model's mean +- 2 SD; for the DDPM also the same agreement of its
posterior median, the median of its draws), ``OUT/invivo_learned.png`` and the maps as NIfTI
under ``OUT/maps``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from experiments import invivo
from qmri_jax.evaluation.transfer import otsu_threshold
from qmri_jax.io import write_json, write_nifti
from qmri_jax.io.nifti import write_text

MODELS = {"qmrlab_ir": ("ddpm_ir", "configs/ddpm.py", "invivo_ir"),
          "qmrlab_mtsat": ("unet_mtsat", "configs/unet.py", "invivo_mtsat")}


def preset_config(preset_file: str, preset: str):
    """``get_config(preset)`` of the config file ``preset_file`` (e.g. ``configs/ddpm.py``)."""
    import importlib
    module = importlib.import_module(preset_file.replace("/", ".").removesuffix(".py"))
    return module.get_config(preset)


def _load_config(workdir: pathlib.Path):
    import ml_collections
    path = workdir / "config.json"
    if not path.is_file():
        raise SystemExit(f"--checkpoint {workdir}: no config.json (expected a qmri_jax.main "
                         "workdir)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def find_models(checkpoints, out: pathlib.Path, steps: int | None) -> dict:
    """``{protocol name: workdir}`` for both models: the given workdirs by their protocol.json,
    the missing ones trained into ``out/train_<name>``."""
    found = {}
    for c in checkpoints or []:
        wd = pathlib.Path(c)
        prot = wd / "protocol.json"
        if not prot.is_file():
            raise SystemExit(f"--checkpoint {wd}: no protocol.json (expected a qmri_jax.main "
                             "workdir)")
        name = json.loads(prot.read_text())["name"]
        if name not in MODELS:
            raise SystemExit(f"--checkpoint {wd}: trained on protocol {name!r}; this experiment "
                             f"needs one of {sorted(MODELS)}")
        found[name] = wd
    from qmri_jax import train
    for name, (short, cfg_file, preset) in MODELS.items():
        if name in found:
            continue
        cfg = preset_config(cfg_file, preset)
        if steps:
            with cfg.unlocked():
                cfg.train.num_steps = int(steps)
                cfg.train.warmup_steps = min(int(cfg.train.warmup_steps), int(steps) // 4)
        wd = out / f"train_{short}"
        print(f"training {cfg_file}:{preset} ({cfg.train.num_steps} steps) into {wd}", flush=True)
        t0 = time.perf_counter()
        train.train_and_evaluate(cfg, str(wd))
        print(f"  trained in {time.perf_counter() - t0:.0f} s", flush=True)
        found[name] = wd
    return found


def _load(workdir: pathlib.Path, series_protocol, n_images: int, image_shape, source: str):
    from qmri_jax import predict as predict_lib
    config = _load_config(workdir)
    trained = json.loads((workdir / "protocol.json").read_text())
    predict_lib.check_protocol(trained, series_protocol, n_images, source)
    task, state = predict_lib.load_trained(config, str(workdir), image_shape, prefer_best=False)
    return config, task, state


#: The head mask of a 3D volume is eroded by this much to leave skull and scalp out: the learned
#: path normalises by the in-brain 95th percentile, as its synthetic brains were (with the head's,
#: bright scalp fat lowered the brain 1.44x on the MTsat volume and its T1 came out +50%).
BRAIN_EROSION_MM = 12.0


def brain_only(image3d, affine) -> np.ndarray:
    """A brain mask of a 3D head volume: the voxels above half the Otsu threshold (dark white
    matter of a PD-weighted image included), holes filled slice by slice, the largest component,
    eroded by :data:`BRAIN_EROSION_MM` (skull and scalp out), its largest component."""
    from scipy import ndimage
    fg = image3d > 0.5 * otsu_threshold(image3d)
    fg = np.stack([ndimage.binary_fill_holes(fg[:, :, z]) for z in range(fg.shape[2])], axis=2)
    voxel = float(np.min(np.abs(np.diag(affine)[:3])))
    core = ndimage.binary_erosion(fg, iterations=max(1, int(round(BRAIN_EROSION_MM / voxel))))
    lab, n = ndimage.label(core)
    if n == 0:
        raise SystemExit(f"brain mask: nothing left after a {BRAIN_EROSION_MM:g} mm erosion")
    return lab == 1 + int(np.argmax(ndimage.sum(core, lab, range(1, n + 1))))


def tissue_classes(t1_fit, ok) -> tuple[np.ndarray, np.ndarray]:
    """WM and GM masks: the two-class mixture on log T1 of the fit within 400-2500 ms."""
    sel = ok & np.isfinite(t1_fit) & (t1_fit > 400) & (t1_fit < 2500)
    cls = invivo.two_class_mixture(t1_fit[sel])
    wm, gm = np.zeros_like(sel), np.zeros_like(sel)
    wm[sel], gm[sel] = cls == 0, cls == 1
    return wm, gm


def agreement(model_t1, fit_t1, wm, gm) -> dict:
    """Per class: medians of model and fit, and the median voxel's |model / fit - 1| (%)."""
    out = {}
    for name, m in (("WM", wm), ("GM", gm)):
        m = m & np.isfinite(model_t1)
        rel = np.abs(model_t1[m] / fit_t1[m] - 1) * 100
        out[name] = {"voxels": int(m.sum()), "model_median_ms": float(np.median(model_t1[m])),
                     "fit_median_ms": float(np.median(fit_t1[m])),
                     "median_abs_diff_pct": float(np.median(rel)),
                     "medians_diff_pct": float(100 * (np.median(model_t1[m])
                                                      / np.median(fit_t1[m]) - 1))}
    return out


def exact_against(signals, valid, sigma, protocol, prior, mean, sd, max_voxels, seed=0) -> dict:
    """The model's T1 posterior (``mean``, ``sd`` ``[V]``) against the exact one on up to
    ``max_voxels`` of the ``[V, N]`` curves: the SD ratio and the exact posterior mass inside the
    model's mean +- 2 SD (0.95 for a Gaussian posterior that matches)."""
    from qmri_jax.fitting.posterior import posterior_nodes
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(signals), min(max_voxels, len(signals)), replace=False)
    ratio, mass, shift, means, medians = [], [], [], [], []
    for part in np.array_split(idx, max(1, len(idx) // 64)):
        nodes = posterior_nodes(signals[part], protocol, sigma, prior, valid=valid[part])
        w = nodes["weight"].reshape(len(part), -1)
        t1 = nodes["T1"].reshape(len(part), -1)
        em = (w * t1).sum(1)
        order = np.argsort(t1, 1)
        cw = np.cumsum(np.take_along_axis(w, order, 1), 1)
        medians.append(np.take_along_axis(t1, order, 1)[
            np.arange(len(part)), (cw < 0.5 * cw[:, -1:]).sum(1)])
        esd = np.sqrt(np.maximum((w * (t1 - em[:, None]) ** 2).sum(1), 0))
        lo, hi = (mean[part] - 2 * sd[part])[:, None], (mean[part] + 2 * sd[part])[:, None]
        mass.append((w * ((t1 >= lo) & (t1 <= hi))).sum(1))
        ratio.append(sd[part] / esd)
        shift.append(np.abs(mean[part] - em) / esd)
        means.append(em)
    ratio, mass, shift, means, medians = map(np.concatenate,
                                             (ratio, mass, shift, means, medians))
    return {"voxels": int(len(idx)), "sd_ratio_median": float(np.median(ratio)),
            "sd_ratio_iqr": [float(q) for q in np.percentile(ratio, [25, 75])],
            "exact_mass_in_model_2sd": float(np.mean(mass)),
            "mean_shift_median_exact_sd": float(np.median(shift)),
            "prior": {"t1_ms": list(prior.t1_ms), "k": list(prior.k), "pd": list(prior.pd)},
            "_index": idx, "_exact_mean": means, "_exact_median": medians}


def run_ir(folder: pathlib.Path, workdir: pathlib.Path, out: pathlib.Path,
           exact_voxels: int) -> dict:
    import jax

    from qmri_jax.data.acquisition import normalise_images
    from qmri_jax.fitting import SolverOptions, fit_images
    from qmri_jax.fitting.posterior import GridPrior
    from qmri_jax.physics.background_noise import estimate_noise_background

    subject, img, affine, meta = invivo._series(folder, "IR")
    if img.ndim != 4 or img.shape[2] != 1:
        raise SystemExit(f"{folder}: expected one IR slice [X, Y, 1, N], got {img.shape}")
    prot = invivo.ir_protocol(meta, folder)
    mask, how = invivo._mask(folder, subject, img.shape[:-1], img.mean(-1))
    fit = fit_images(img, prot, "ir_fse", mask=mask, options=SolverOptions(loss="rician"))
    x, m = img[:, :, 0], mask[:, :, 0]
    valid = np.ones(x.shape, bool)  # magnitude NIfTI: nothing is marked clipped
    config, task, state = _load(workdir, prot, x.shape[-1], (16, 16, x.shape[-1]), str(folder))
    norm = normalise_images(x, m, config.data.normalisation)
    # the noise SD (normalised units) from the background, for the exact posterior and for a
    # noise-conditioned model alike
    sigma = estimate_noise_background(norm, background=~m)[0]
    kw = {"sigma": float(sigma)} if getattr(task, "noise", False) else {}
    t0 = time.perf_counter()
    res = jax.jit(lambda im, key, v: task.predict(state, im, key, v, **kw))(
        norm[None], jax.random.key(0), valid[None])
    names = list(task.targets)
    mean, sd = np.asarray(res["mean"][0]), np.asarray(res["std"][0])
    # the posterior median too: where the likelihood is flat and skewed (GM) the mean lies above
    # the maximum of the likelihood whatever the model (the exact posterior's mean does too)
    median = np.median(np.asarray(res["samples"])[:, 0], axis=0)
    seconds = time.perf_counter() - t0
    t1_fit = fit.maps["T1"][:, :, 0]
    ok = m & fit.converged[:, :, 0]
    wm, gm = tissue_classes(t1_fit, ok)
    i = names.index("T1")
    t1_ddpm, t1_sd = np.where(m, mean[..., i], np.nan), np.where(m, sd[..., i], np.nan)
    row = {"model": f"per-voxel DDPM ({workdir})", "scan": str(folder), "mask": how,
           "fit": "IR |a + b exp(-TI/T1)|, Rician MLE", "fit_converged": float(ok.sum() / m.sum()),
           "seconds_sampling": seconds, "agreement": agreement(t1_ddpm, t1_fit, wm, gm),
           "posterior_sd_ms": {c: float(np.median(t1_sd[cm])) for c, cm in
                               (("WM", wm), ("GM", gm))},
           "agreement_posterior_median": agreement(np.where(m, median[..., i], np.nan), t1_fit,
                                                   wm, gm)}
    d = config.ddpm
    prior = GridPrior(t1_ms=tuple(d.voxel_t1_range), k=tuple(d.voxel_k_range))
    sel = ok & (wm | gm)
    row["exact"] = exact_against(norm[sel], valid[sel], sigma, prot, prior, t1_ddpm[sel],
                                 t1_sd[sel], exact_voxels)
    row["exact"]["sigma_normalised"] = float(sigma)
    # Where the likelihood is flat (GM: T1 ~ TR / 2 and no TI beyond 1700 ms, T1 trades against
    # k) the exact posterior mean itself leaves the fit: how far, on the same voxels.
    idx, em = row["exact"].pop("_index"), row["exact"].pop("_exact_mean")
    emed = row["exact"].pop("_exact_median")
    for c, cm in (("WM", wm[sel][idx]), ("GM", gm[sel][idx])):
        f = t1_fit[sel][idx][cm]
        row["exact"][f"{c}_exact_mean_vs_fit_median_pct"] = float(
            np.median(100 * (em[cm] / f - 1))) if cm.any() else float("nan")
        row["exact"][f"{c}_exact_median_vs_fit_median_pct"] = float(
            np.median(100 * (emed[cm] / f - 1))) if cm.any() else float("nan")
        row["exact"][f"{c}_model_vs_fit_median_pct"] = float(
            np.median(100 * (t1_ddpm[sel][idx][cm] / f - 1))) if cm.any() else float("nan")
    for name, arr in (("T1map", t1_fit), ("desc-ddpm_T1map", t1_ddpm),
                      ("desc-ddpmstd_T1map", t1_sd)):
        write_nifti(out / "maps" / f"{subject}_ir_{name}.nii.gz",
                    np.nan_to_num(arr).astype(np.float32)[:, :, None], affine)
    row["_maps"] = {"fit T1": t1_fit, "DDPM T1": t1_ddpm, "DDPM T1 SD": t1_sd, "mask": m}
    return row


def run_mtsat(folder: pathlib.Path, workdir: pathlib.Path, out: pathlib.Path) -> dict:
    import jax
    from scipy import ndimage

    from qmri_jax import predict as predict_lib
    from qmri_jax.data.acquisition import normalise_images
    from qmri_jax.fitting import SolverOptions, fit_images

    subject, pdw, affine, meta_pd = invivo._series(folder, "PDw")
    _, t1w, _, meta_t1 = invivo._series(folder, "T1w")
    img = np.stack([pdw, t1w], axis=-1)
    prot = invivo.mtsat_protocol(meta_pd, meta_t1, folder)
    mask = brain_only(pdw, affine)
    fit = fit_images(img, prot, "vfa", mask=mask, options=SolverOptions(loss="gaussian"),
                     estimate_sigma=False)
    config, task, state = _load(workdir, prot, 2, (16, 16, 2), str(folder))
    norm = normalise_images(img, mask, config.data.normalisation)
    voxel = np.abs(np.diag(affine)[:3])
    zoom = voxel / float(config.data.resolution_mm)
    small = np.stack([ndimage.zoom(norm[..., c], zoom, order=1) for c in range(2)], axis=-1)
    fn = jax.jit(lambda im, key: task.predict(state, im, key))
    t0 = time.perf_counter()
    maps = predict_lib.predict_volume(fn, small, multiple=task.size_multiple, batch=8)["mean"]
    seconds = time.perf_counter() - t0
    names = list(task.targets)
    back = [s / t for s, t in zip(img.shape[:3], maps.shape[:3])]
    t1_net = ndimage.zoom(maps[..., names.index("T1")], back, order=1)
    t1_net = np.where(mask, t1_net[:mask.shape[0], :mask.shape[1], :mask.shape[2]], np.nan)
    t1_fit = fit.maps["T1"]
    ok = mask & fit.converged
    wm, gm = tissue_classes(t1_fit, ok)
    row = {"model": f"U-Net ({workdir})", "scan": str(folder),
           "mask": f"computed: PDw above half its Otsu threshold, holes filled per slice, "
                   f"largest component, eroded by {BRAIN_EROSION_MM:g} mm (skull and scalp out; "
                   "the p95 normalisation and the tissue classes use it)",
           "fit": "two-angle DESPOT1 (vfa model, no B1 map)",
           "fit_converged": float(ok.sum() / mask.sum()), "seconds_predict": seconds,
           "network_grid_mm": float(config.data.resolution_mm),
           "agreement": agreement(t1_net, t1_fit, wm, gm)}
    for name, arr in (("T1map", t1_fit), ("desc-unet_T1map", t1_net)):
        write_nifti(out / "maps" / f"{subject}_mtsat_{name}.nii.gz",
                    np.nan_to_num(arr).astype(np.float32), affine)
    z = mask.shape[2] // 2 + 8
    row["_maps"] = {"DESPOT1 T1": t1_fit[:, :, z], "U-Net T1": t1_net[:, :, z],
                    "mask": mask[:, :, z]}
    return row


def figure(rows: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(k, name, arr, r["_maps"]["mask"]) for k, r in rows.items()
              for name, arr in r["_maps"].items() if name != "mask"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (k, name, arr, m) in zip(np.atleast_1d(axes), panels):
        is_sd = "SD" in name
        im = ax.imshow(np.where(m, arr, np.nan).T, origin="lower", cmap="magma" if is_sd else "gray",
                       vmin=0, vmax=300 if is_sd else 2500)
        ax.set_title(f"{k}: {name} (ms)", fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def table(rows: dict) -> str:
    lines = ["| scan | model | fit | WM model / fit (ms) | GM model / fit (ms) | median voxel "
             "\\|model/fit - 1\\| WM / GM | posterior SD WM / GM (ms) | SD / exact SD | exact "
             "mass in mean +- 2 SD |", "|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        a = r["agreement"]
        sd = r.get("posterior_sd_ms")
        ex = r.get("exact")
        lines.append(
            f"| {k} | {r['model'].split(' (')[0]} | {r['fit'].replace('|', chr(92) + '|')} | "
            f"{a['WM']['model_median_ms']:.0f} / {a['WM']['fit_median_ms']:.0f} | "
            f"{a['GM']['model_median_ms']:.0f} / {a['GM']['fit_median_ms']:.0f} | "
            f"{a['WM']['median_abs_diff_pct']:.1f}% / {a['GM']['median_abs_diff_pct']:.1f}% | "
            + (f"{sd['WM']:.0f} / {sd['GM']:.0f} | " if sd else "- | ")
            + (f"{ex['sd_ratio_median']:.2f} | {ex['exact_mass_in_model_2sd']:.3f} |" if ex
               else "- | - |"))
        if "agreement_posterior_median" in r:
            a = r["agreement_posterior_median"]
            lines.append(
                f"| {k} | {r['model'].split(' (')[0]}, posterior median | as above | "
                f"{a['WM']['model_median_ms']:.0f} / {a['WM']['fit_median_ms']:.0f} | "
                f"{a['GM']['model_median_ms']:.0f} / {a['GM']['fit_median_ms']:.0f} | "
                f"{a['WM']['median_abs_diff_pct']:.1f}% / {a['GM']['median_abs_diff_pct']:.1f}% "
                "| - | - | - |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=pathlib.Path,
                        help="the in-vivo folder (ir/ and mtsat/ inside)")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="a trained workdir (qmrlab_ir DDPM or qmrlab_mtsat U-Net); repeat")
    parser.add_argument("--steps", type=int, default=None,
                        help="train steps for a model trained here (default: its preset's)")
    parser.add_argument("--exact-voxels", type=int, default=300)
    args = parser.parse_args(argv)
    for sub in ("ir", "mtsat"):
        if not (args.data / sub).is_dir():
            raise SystemExit(f"{args.data / sub}: not found (expected ../shared/invivo's layout)")
    args.out.mkdir(parents=True, exist_ok=True)
    models = find_models(args.checkpoint, args.out, args.steps)
    rows = {"ir": run_ir(args.data / "ir", models["qmrlab_ir"], args.out, args.exact_voxels),
            "mtsat": run_mtsat(args.data / "mtsat", models["qmrlab_mtsat"], args.out)}
    figure(rows, args.out / "invivo_learned.png")
    text = table(rows)
    print(text)
    write_text(args.out / "table.md", text)
    write_json(args.out / "results.json",
               {k: {kk: vv for kk, vv in r.items() if kk != "_maps"} for k, r in rows.items()})
    print(f"wrote {args.out}/results.json, table.md, invivo_learned.png, maps/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
