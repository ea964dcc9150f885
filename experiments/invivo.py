"""Voxelwise maps of real in-vivo brains: IR T1, VFA T1 with B1, multi-echo T2, two-angle 3D T1.

Usage:
  python -m experiments.invivo --data ../shared/invivo --out OUT

Processes whichever of ``ir/``, ``mese/``, ``vfa/``, ``mtsat/`` the folder holds (layout of
``../shared/invivo/README.md``: one ``sub-XX_<suffix>.nii.gz`` series per folder with a JSON sidecar
giving the protocol in ms / degrees, and ``sub-XX_mask.nii.gz`` where the source has one), so another
subject laid out the same way can be dropped in. Every map is written on the input grid as BIDS
NIfTI (``OUT/<folder>/sub-XX_T1map.nii.gz``, ...), with ``OUT/results.json``, ``OUT/table.md`` and
``OUT/invivo.png``.

Analysis choices (also in results.json):
* IR: the general three-parameter model ``|a + b exp(-TI/T1)|`` (the ``ir_fse`` model, RD-NLS of
  Barral et al. 2010), Rician maximum likelihood, sigma from the image background; magnitude data,
  polarity restored by the fit. The ``ir`` model with the sidecar's TR (2500 ms) does not fit this
  scan: its inversion efficiency comes out at a median 1.13 and on the 1.5 bound in 22% of the mask,
  so the recovery between inversions is not the plain TR (readout, TR - TI timing).
* MESE (30 echoes), the T2 estimate (``sub-XX_T2map``): EPG summed over a slice profile (generic
  Hann-sinc pulses, TBW 3, refocusing slice 1.2x; T1 fixed at 1000 ms) with a transmit field B1
  smooth over the slice (``qmri_jax.fitting.fit_t2_smooth_b1``: B1 fitted in every second voxel of
  the mask, a degree-2 polynomial fitted robustly, T2 refitted with B1 fixed; the B1 map is written
  as ``sub-XX_TB1map``), every unclipped echo, Rician MLE. Beside it the mono-exponential Rician fit
  (``sub-XX_desc-monoexp_T2map``) with the first echo excluded (no stimulated echo in it, unlike the
  later ones). Samples at the stored maximum (4095) are excluded. The 4-echo full resolution set:
  the mono-exponential model on its 4 echoes (too few echoes for EPG), compared voxelwise with the T2
  map shipped with it.
* VFA: DESPOT1 with the flip angles scaled by the B1 map.
* MTsat 3D: the ``vfa`` model on PDw (6 deg, TR 28) and T1w (20 deg, TR 18): two samples, two
  parameters; no B1 map exists, so it carries the transmit-field bias. Brain mask computed (below).
* Masks: the source's where present; otherwise Otsu on the mean image, eroded twice, the largest
  connected component, dilated twice, holes filled.
* Tissue classes: a two-class Gaussian mixture on log T1 (or log T2) of the mask's voxels with T1 in
  400-2500 ms (T2 in 30-200 ms), which leaves CSF and fat out: the lower class is WM, the upper GM.
* Judged against published ranges at 3 T and at 1.5 T (field strength not stated by the source,
  and the folders come from different demos, so possibly different scanners): the table says, per
  method, which field's ranges its WM and GM medians fall in.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import nibabel as nib
import numpy as np
from scipy import ndimage

from qmri_jax.evaluation.transfer import otsu_threshold
from qmri_jax.fitting import SolverOptions, despot1, fit_images, fit_t2_smooth_b1
from qmri_jax.io import write_json, write_nifti
from qmri_jax.io.nifti import write_text
from qmri_jax.physics import Protocol

#: Published WM / GM ranges (ms). 3 T: Bojorquez et al. MRI 35:69 (2017), Stanisz et al. MRM 54:507
#: (2005), Wansapura et al. JMRI 9:531 (1999). 1.5 T: Stanisz 2005, Gelman et al. Radiology 210:759
#: (1999), Deoni 2003.
LITERATURE = {
    "3T": {"T1": {"WM": (690, 1100), "GM": (1200, 1900)}, "T2": {"WM": (55, 85), "GM": (70, 110)}},
    "1.5T": {"T1": {"WM": (550, 900), "GM": (900, 1400)}, "T2": {"WM": (65, 95), "GM": (80, 120)}},
}
_CLASS_RANGE = {"T1": (400.0, 2500.0), "T2": (30.0, 200.0)}


def _series(folder: pathlib.Path, suffix: str):
    """(subject, image array, affine, sidecar) of ``sub-XX_<suffix>.nii.gz`` in ``folder``."""
    files = sorted(folder.glob(f"sub-*_{suffix}.nii.gz"))
    if not files:
        raise FileNotFoundError(f"{folder}: no sub-*_{suffix}.nii.gz")
    path = files[0]
    img = nib.load(path)
    side = path.with_name(path.name.replace(".nii.gz", ".json"))
    meta = json.loads(side.read_text()) if side.is_file() else {}
    return path.name.split("_")[0], np.asarray(img.dataobj, np.float32), img.affine, meta


def _field(meta: dict, key: str, path: pathlib.Path):
    if key not in meta:
        raise KeyError(f"{path}: sidecar field {key!r} missing")
    return meta[key]


def brain_mask(image3d) -> np.ndarray:
    """Otsu foreground, eroded twice, largest component, dilated twice, holes filled (in 2D for a
    single slice)."""
    image3d = np.asarray(image3d)
    if image3d.ndim == 3 and 1 in image3d.shape:
        return brain_mask(np.squeeze(image3d)).reshape(image3d.shape)
    fg = image3d > otsu_threshold(image3d)
    fg = ndimage.binary_erosion(fg, iterations=2)
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    keep = lab == (1 + int(np.argmax(ndimage.sum(fg, lab, range(1, n + 1)))))
    keep = ndimage.binary_dilation(keep, iterations=2)
    return ndimage.binary_fill_holes(keep)


def _mask(folder, subject, shape, mean_image):
    f = folder / f"{subject}_mask.nii.gz"
    if f.is_file():
        m = np.asarray(nib.load(f).dataobj) > 0
        return m.reshape(shape), "source"
    return brain_mask(mean_image), "computed"


def two_class_mixture(values, iters: int = 200):
    """Two-component 1D Gaussian mixture by EM on ``log(values)``; returns the class (0 = lower
    mean) of every value."""
    x = np.log(np.asarray(values, np.float64))
    mu = np.percentile(x, [25, 75])
    sd = np.full(2, x.std() / 2 + 1e-6)
    pi = np.full(2, 0.5)
    for _ in range(iters):
        like = pi * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2) / sd
        r = like / np.maximum(like.sum(1, keepdims=True), 1e-300)
        nk = r.sum(0) + 1e-12
        mu = (r * x[:, None]).sum(0) / nk
        sd = np.sqrt((r * (x[:, None] - mu) ** 2).sum(0) / nk) + 1e-6
        pi = nk / nk.sum()
    return np.argmax(r, axis=1) if mu[0] < mu[1] else 1 - np.argmax(r, axis=1)


def tissue_medians(values, mask, kind: str) -> dict:
    """WM / GM medians of a T1 or T2 map by the two-class mixture (module docstring)."""
    lo, hi = _CLASS_RANGE[kind]
    v = values[mask & np.isfinite(values)]
    v = v[(v > lo) & (v < hi)]
    if v.size < 20:
        return {"WM": float("nan"), "GM": float("nan"), "voxels": int(v.size)}
    cls = two_class_mixture(v)
    return {"WM": float(np.median(v[cls == 0])), "GM": float(np.median(v[cls == 1])),
            "WM_voxels": int((cls == 0).sum()), "GM_voxels": int((cls == 1).sum())}


def _write(out, folder, subject, name, data, affine):
    path = out / folder / f"{subject}_{name}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, np.asarray(data, np.float32), affine)
    return str(path)


def ir_protocol(meta: dict, folder) -> Protocol:
    """The IR series' protocol from its sidecar (TR, TIs; TE not stated: 0)."""
    return Protocol.create("ir", tr_ms=float(_field(meta, "RepetitionTime_ms", folder)),
                           ti_ms=_field(meta, "InversionTime_ms", folder), te_ms=0.0,
                           name="invivo_ir")


def mtsat_protocol(meta_pd: dict, meta_t1: dict, folder) -> Protocol:
    """The PDw / T1w spoiled-gradient-echo pair's protocol from their sidecars (TE: 0)."""
    tr = [float(_field(m, "RepetitionTime_ms", folder)) for m in (meta_pd, meta_t1)]
    fa = [float(_field(m, "FlipAngle_deg", folder)) for m in (meta_pd, meta_t1)]
    return Protocol.create("spgr", tr_ms=tr, te_ms=0.0, flip_deg=fa, names=("PDw", "T1w"),
                           name="invivo_mtsat")


def process_ir(folder, out):
    subject, img, affine, meta = _series(folder, "IR")
    prot = ir_protocol(meta, folder)
    mask, how = _mask(folder, subject, img.shape[:-1], img.mean(-1))
    res = fit_images(img, prot, "ir_fse", mask=mask, options=SolverOptions(loss="rician"))
    files = [_write(out, "ir", subject, "T1map", res.maps["T1"], affine),
             _write(out, "ir", subject, "M0map", res.maps["PD"], affine)]
    ok = mask & res.converged
    return {"method": "IR, |a + b exp(-TI/T1)|, Rician MLE", "map": res.maps["T1"], "kind": "T1",
            "mask": ok, "mask_source": how, "sigma": res.sigma,
            "converged": float(res.converged[mask].mean()), "files": files,
            "B_median": float(np.median(res.maps["B"][ok])) if ok.any() else float("nan")}


def process_vfa(folder, out):
    subject, img, affine, meta = _series(folder, "VFA")
    flips = np.asarray(_field(meta, "FlipAngle_deg", folder), float)
    tr = float(_field(meta, "RepetitionTime_ms", folder))
    mask, how = _mask(folder, subject, img.shape[:-1], img.mean(-1))
    b1_file = sorted(folder.glob(f"{subject}_B1map.nii.gz"))
    b1 = np.asarray(nib.load(b1_file[0]).dataobj, np.float32).reshape(mask.shape) if b1_file else None
    t1 = np.full(mask.shape, np.nan, np.float32)
    t1_raw = np.full(mask.shape, np.nan, np.float32)
    t1[mask] = despot1(img[mask], flips, tr, b1=b1[mask] if b1 is not None else 1.0)[0]
    t1_raw[mask] = despot1(img[mask], flips, tr)[0]
    files = [_write(out, "vfa", subject, "T1map", t1, affine)]
    return {"method": "VFA, DESPOT1" + (" with B1" if b1 is not None else " (no B1 map)"),
            "map": t1, "kind": "T1", "mask": mask & np.isfinite(t1), "mask_source": how,
            "files": files, "extra": {"T1_without_B1": t1_raw}}


def process_mese(folder, out):
    subject, img, affine, meta = _series(folder, "MESE")
    te = np.asarray(_field(meta, "EchoTime_ms", folder), float)
    prot = Protocol.create("se", tr_ms=10000.0, te_ms=te, name="invivo_mese")
    mask, how = _mask(folder, subject, img.shape[:-1], img.mean(-1))
    valid = img < img.max() if (img >= 4095).any() else np.ones(img.shape, bool)
    rows = {}
    if img.ndim == 4 and img.shape[2] == 1:  # one slice: the smooth B1 is a 2D surface
        epg = fit_t2_smooth_b1(img[:, :, 0], prot, mask[:, :, 0], valid[:, :, 0], degree=2,
                               b1_stride=2, max_iter=15)
        t2, b1 = epg.t2.maps["T2"][:, :, None], epg.b1[:, :, None]
        conv = epg.t2.converged[:, :, None]
        files = [_write(out, "mese", subject, "T2map", t2, affine),
                 _write(out, "mese", subject, "TB1map", np.where(mask, b1, 0.0), affine)]
        rows["MESE 30 echoes, EPG + slice profile + smooth B1"] = {
            "map": t2, "kind": "T2", "mask": mask & conv, "mask_source": how,
            "sigma": epg.t2.sigma, "converged": float(conv[mask].mean()), "files": files,
            "b1_range_in_mask": [float(b1[mask].min()), float(b1[mask].max())],
            "clipped_samples": int((~valid & mask[..., None]).sum())}
    valid[..., 0] = False  # first echo excluded
    res = fit_images(img, prot, "t2", mask=mask, valid=valid, options=SolverOptions(loss="rician"))
    files = [_write(out, "mese", subject, "desc-monoexp_T2map", res.maps["T2"], affine)]
    rows["MESE 30 echoes (1st excluded), mono-exp Rician"] = {
        "map": res.maps["T2"], "kind": "T2", "mask": mask & res.converged, "mask_source": how,
        "sigma": res.sigma, "converged": float(res.converged[mask].mean()), "files": files,
        "clipped_samples": int((~valid[..., 1:] & mask[..., None]).sum())}
    full = sorted(folder.glob(f"{subject}_echoes-4_fullres.nii.gz"))
    if full:
        _, img4, aff4, meta4 = _series(folder, "echoes-4_fullres")
        prot4 = Protocol.create("se", tr_ms=10000.0, te_ms=_field(meta4, "EchoTime_ms", folder),
                                name="invivo_mese4")
        mask4 = brain_mask(img4.mean(-1))
        res4 = fit_images(img4, prot4, "t2", mask=mask4, options=SolverOptions(loss="rician"))
        files4 = [_write(out, "mese", subject, "desc-echoes4_T2map", res4.maps["T2"], aff4)]
        entry = {"map": res4.maps["T2"], "kind": "T2", "mask": mask4 & res4.converged,
                 "mask_source": "computed", "converged": float(res4.converged[mask4].mean()),
                 "files": files4}
        shipped = sorted(folder.glob(f"{subject}_T2map_qmrlab.nii.gz"))
        if shipped:
            ref = np.asarray(nib.load(shipped[0]).dataobj, np.float32).reshape(mask4.shape)
            both = entry["mask"] & np.isfinite(ref) & (ref > 0) & (ref < 1000)
            diff = np.abs(res4.maps["T2"][both] / ref[both] - 1) * 100
            entry["vs_shipped"] = {"voxels": int(both.sum()), "median_abs_pct": float(np.median(diff)),
                                   "ours_median": float(np.median(res4.maps["T2"][both])),
                                   "shipped_median": float(np.median(ref[both]))}
            rows["shipped qMRLab T2 map (4 echoes)"] = {
                "map": ref, "kind": "T2", "mask": both, "mask_source": "as ours", "files": []}
        rows["4 echoes full resolution, mono-exp Rician"] = entry
    return rows


def process_mtsat(folder, out):
    subject, pdw, affine, meta_pd = _series(folder, "PDw")
    _, t1w, _, meta_t1 = _series(folder, "T1w")
    img = np.stack([pdw, t1w], axis=-1)
    prot = mtsat_protocol(meta_pd, meta_t1, folder)
    mask = brain_mask(pdw)
    res = fit_images(img, prot, "vfa", mask=mask, options=SolverOptions(loss="gaussian"),
                     estimate_sigma=False)
    files = [_write(out, "mtsat", subject, "T1map", res.maps["T1"], affine)]
    return {"method": "3D PDw/T1w, vfa model (no B1)", "map": res.maps["T1"], "kind": "T1",
            "mask": mask & res.converged, "mask_source": "computed", "files": files,
            "converged": float(res.converged[mask].mean())}


def _judge(kind, med):
    ok = {}
    for field, ranges in LITERATURE.items():
        ok[field] = all(ranges[kind][t][0] <= med[t] <= ranges[kind][t][1] for t in ("WM", "GM"))
    return ok


def _figure(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = rows[name]
        m = r["map"]
        z = m.shape[2] // 2 if m.ndim == 3 else None
        sl = (m[:, :, z] if z is not None else m).T
        vmax = 3000 if r["kind"] == "T1" else 200
        im = ax.imshow(np.where(np.isfinite(sl), sl, 0), origin="lower", cmap="magma", vmin=0,
                       vmax=vmax)
        ax.set_title(f"{name}\n{r['kind']} (ms)", fontsize=7)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: no such folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    steps = {"ir": process_ir, "vfa": process_vfa, "mese": process_mese, "mtsat": process_mtsat}
    for name, fn in steps.items():
        folder = args.data / name
        if not folder.is_dir():
            continue
        t = time.perf_counter()
        got = fn(folder, args.out)
        got = got if name == "mese" else {got["method"]: got}
        for k, v in got.items():
            v["seconds"] = time.perf_counter() - t
        rows.update(got)
    if not rows:
        print(f"error: {args.data} holds none of {sorted(steps)}", file=sys.stderr)
        return 2
    results, lines = {}, ["| method | map | WM median (ms) | GM median (ms) | in 3 T ranges | "
                          "in 1.5 T ranges |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        med = tissue_medians(r["map"], r["mask"], r["kind"])
        ok = _judge(r["kind"], med)
        results[name] = {k: v for k, v in r.items() if k not in ("map", "mask", "extra")}
        results[name].update({"tissue_medians_ms": med, "in_published_range": ok})
        lines.append(f"| {name} | {r['kind']} | {med['WM']:.0f} | {med['GM']:.0f} | "
                     f"{'yes' if ok['3T'] else 'no'} | {'yes' if ok['1.5T'] else 'no'} |")
    # The folders may come from different scanners: each method is judged on its own.
    fits = {f: sorted(n for n, r in results.items() if r["in_published_range"][f])
            for f in LITERATURE}
    neither = sorted(n for n, r in results.items() if not any(r["in_published_range"].values()))
    summary = {"methods_in_range": fits, "methods_in_no_range": neither, "ranges_ms": LITERATURE,
               "seconds": time.perf_counter() - t0, "methods": results,
               "choices": __doc__.split("Analysis choices (also in results.json):")[1].strip()}
    write_json(args.out / "results.json", summary)
    table = "\n".join(lines) + "\n\n" + "".join(
        f"In the {f} ranges: {', '.join(v) or 'none'}.\n" for f, v in fits.items()) + (
        f"In neither: {', '.join(neither)}.\n" if neither else "")
    write_text(args.out / "table.md", table)
    _figure(rows, args.out / "invivo.png")
    print(table)
    print(f"wrote {args.out}/results.json, table.md, invivo.png and the maps "
          f"[{time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
