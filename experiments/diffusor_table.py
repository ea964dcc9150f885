"""The qMRI Diffusor paper's phantom table on this project's NIST/ISMRM phantom scan: per sphere
(all 14) the ROI mean +- SD of T1 for the reference, the ResNet, the RIM and the DDPM, beside the
voxelwise fit, and the T1 and PD maps of the phantom for each method (one figure).

Usage:
  python -m experiments.diffusor_table --data ../shared/nist_phantom/A --out OUT \\
      --resnet W_RESNET --rim W_RIM --ddpm W_DDPM

Each ``W_*`` is a ``qmri_jax.main`` workdir of ``configs/{resnet,rim,ddpm}.py:diffusor`` trained
on the phantom's own protocol (``--config.data.protocol=nist_vir``): the paper's phantom was
scanned with its 7-TI IR-FSE protocol, which this project has no scan of; the 10-TI VIR series of
``../shared/nist_phantom`` is the closest real data, and a model only reads the protocol it was
trained on (checked against the DICOM headers). Any of the three may be left out.

Method: the VIR DICOMs are read, normalised like the training data (p95 over the sphere ROIs),
block-averaged to the training voxel size and mapped by each model
(:func:`experiments.phantom_learned.learned_t1`; clipped samples marked invalid for a model
trained with the validity mask); the maps come back to the scan grid by repetition. Per sphere the
ROI mean +- SD (over the ROI's voxels at the scan grid) is reported; the reference is the
certified T1 +- its stated uncertainty at ``--temperature`` (default 20 C). The voxelwise Rician
fit of the ``ir`` model (``experiments.nist_phantom.fit_vir``) is the column beside them. Spheres
11-14 (T1 < 61 ms) lie outside what a TI >= 35 ms protocol can measure; they are listed, as in the
paper's table, and left out of the bias summary (spheres 1-10).

Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/diffusor_maps.png``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from experiments.nist_phantom import T1_JUDGED, fit_vir, load_reference, series_dirs
from experiments.phantom_learned import learned_t1
from qmri_jax.fitting import auto_mask
from qmri_jax.io import read_dicom_series, write_json

METHODS = ("resnet", "rim", "ddpm")
LABELS = {"fit": "voxelwise fit", "resnet": "ResNet", "rim": "RIM", "ddpm": "DDPM"}


def roi_stats(values, labels, keep=None) -> dict[int, tuple[float, float]]:
    """``{sphere: (mean, SD)}`` of the finite ``values`` (and ``keep``) in each labelled ROI; NaN
    for an ROI without such voxels."""
    ok = np.isfinite(values) if keep is None else np.isfinite(values) & keep
    out = {}
    for k in np.unique(labels[labels > 0]):
        v = values[(labels == k) & ok]
        out[int(k)] = (float(v.mean()), float(v.std())) if v.size else (np.nan, np.nan)
    return out


def bias_summary(stats: dict, ref: dict, spheres=T1_JUDGED) -> dict:
    """Max and median |% bias| of the ROI means over ``spheres`` (NaN means count as missing)."""
    bias = [100 * (stats[k][0] / ref[("T1", k)]["T1"] - 1) for k in spheres if k in stats]
    finite = [abs(b) for b in bias if np.isfinite(b)]
    return {"spheres": list(spheres), "bias_percent": bias,
            "max_abs_bias_percent": max(finite) if finite else float("nan"),
            "median_abs_bias_percent": float(np.median(finite)) if finite else float("nan"),
            "missing": len(bias) - len(finite)}


def _cell(mean_sd) -> str:
    m, s = mean_sd
    return "n/a" if not np.isfinite(m) else f"{m:.0f} ± {s:.0f}"


def write_table(path: pathlib.Path, rows: list[dict], columns: list[str], summary: dict):
    lines = ["| sphere | reference T1 (ms) | " + " | ".join(LABELS[c] for c in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for r in rows:
        ref = f"{r['reference_ms']:.1f} ± {r['reference_unc_ms']:.1f}"
        cells = [_cell((r[c]["mean_ms"], r[c]["sd_ms"])) for c in columns]
        flag = "" if r["judged"] else " (not judged)"
        lines.append(f"| {r['sphere']}{flag} | {ref} | " + " | ".join(cells) + " |")
    lines.append("| max / median \\|bias\\| %, spheres 1-10 | | " + " | ".join(
        f"{summary[c]['max_abs_bias_percent']:.1f} / {summary[c]['median_abs_bias_percent']:.1f}"
        for c in columns) + " |")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def plot(path: pathlib.Path, maps: dict, phantom, labels):
    """T1 and PD of every method (columns), the phantom outside the mask blank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(maps)
    fig, axes = plt.subplots(2, len(cols), figsize=(2.8 * len(cols), 5.6), squeeze=False)
    for j, c in enumerate(cols):
        for i, (name, vmax) in enumerate((("T1", 2500.0), ("PD", None))):
            ax = axes[i, j]
            img = np.where(phantom, maps[c].get(name, np.full(phantom.shape, np.nan)), np.nan)
            if vmax is None:  # PD units differ (fit: image units; learned: normalised)
                finite = img[np.isfinite(img)]
                vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
            im = ax.imshow(img.T, origin="lower", cmap="magma" if name == "T1" else "gray",
                           vmin=0, vmax=vmax)
            ax.contour((labels > 0).T.astype(float), levels=[0.5], colors="cyan",
                       linewidths=0.4)
            ax.set_title(f"{LABELS[c]}: {name}" + (" (ms)" if name == "T1" else " (a.u.)"),
                         fontsize=8)
            ax.axis("off")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run(data: pathlib.Path, out: pathlib.Path, workdirs: dict, temperature=None) -> dict:
    data, out = pathlib.Path(data), pathlib.Path(out)
    if not workdirs:
        raise SystemExit("give at least one of --resnet, --rim, --ddpm")
    out.mkdir(parents=True, exist_ok=True)
    ref = load_reference(data, temperature)
    rois_path = data / "rois.npz"
    if not rois_path.is_file():
        raise SystemExit(f"{rois_path}: ROI label maps not found")
    labels = np.asarray(np.load(rois_path)["t1_labels"]).T
    vir = read_dicom_series(series_dirs(data, "vir"), kind="ir", name="vir")
    if labels.shape != vir.images.shape[:2]:
        raise SystemExit(f"{rois_path}: t1_labels {labels.shape[::-1]} does not match the VIR "
                         f"images {vir.images.shape[1::-1]}")
    spheres = labels > 0
    phantom = auto_mask(vir.images[:, :, 0]) | spheres
    fit = fit_vir(vir, phantom)
    maps = {"fit": {"T1": np.where(fit.converged, fit.maps["T1"], np.nan),
                    "PD": fit.maps["PD"]}}
    kinds = {"fit": "Rician MLE of the ir model, clipped samples excluded"}
    for m in METHODS:
        if m in workdirs:
            # batch 1: the one slice, not padded with 7 copies (8x the work of the DDPM's 1000
            # ancestral steps x 10 draws)
            res = learned_t1(workdirs[m], vir, phantom, out, norm_mask=spheres, batch_size=1)
            maps[m], kinds[m] = res, res["kind"]
    columns = list(maps)
    stats = {c: roi_stats(maps[c]["T1"], labels) for c in columns}
    post_sd = (roi_stats(maps["ddpm"]["T1_std"], labels)
               if "ddpm" in maps and "T1_std" in maps["ddpm"] else None)
    rows = []
    for k in sorted(stats["fit"]):
        r = ref[("T1", k)]
        row = {"sphere": k, "reference_ms": r["T1"], "reference_unc_ms": r["T1_unc"],
               "judged": k in T1_JUDGED}
        for c in columns:
            mean, sd = stats[c][k]
            row[c] = {"mean_ms": mean, "sd_ms": sd, "bias_percent": 100 * (mean / r["T1"] - 1)}
        if post_sd is not None:
            row["ddpm"]["posterior_sd_ms"] = post_sd[k][0]
        rows.append(row)
    summary = {c: bias_summary(stats[c], ref) for c in columns}
    results = {"data": str(data), "temperature_C": 20.0 if temperature is None else temperature,
               "protocol": vir.protocol.to_dict(), "workdirs": {k: str(v) for k, v in
                                                                  workdirs.items()},
               "methods": kinds, "spheres": rows, "summary": summary,
               "note": "the paper's phantom was scanned with its 7-TI IR-FSE protocol; this "
                       "table uses the 10-TI VIR series, the closest real data here"}
    write_json(out / "results.json", results)
    write_table(out / "table.md", rows, columns, summary)
    plot(out / "diffusor_maps.png", maps, phantom, labels)
    print((out / "table.md").read_text())
    for c in columns:
        print(f"{LABELS[c]}: {kinds[c]}")
    print(f"outputs: {out} (results.json, table.md, diffusor_maps.png)")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=pathlib.Path,
                        help="scan-session folder (e.g. ../shared/nist_phantom/A)")
    parser.add_argument("--out", required=True, type=pathlib.Path)
    for m in METHODS:
        parser.add_argument(f"--{m}", type=pathlib.Path, default=None,
                            help=f"workdir of configs/{m}.py:diffusor trained on nist_vir")
    parser.add_argument("--temperature", type=float, default=None,
                        help="phantom temperature in C for the reference (default 20 C)")
    args = parser.parse_args(argv)
    workdirs = {m: getattr(args, m) for m in METHODS if getattr(args, m) is not None}
    run(args.data, args.out, workdirs, args.temperature)
    return 0


if __name__ == "__main__":
    sys.exit(main())
