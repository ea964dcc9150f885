"""Real-scan validation on the NIST/ISMRM system phantom: voxelwise T1 (VIR) and T2 (multi-echo).

Usage:
  python -m experiments.nist_phantom --data ../shared/nist_phantom/A --out OUT [--temperature 20]

Reads the DICOM series (``dicom/vir/*`` and ``dicom/mse/*``), the sphere ROI labels (``rois.npz``)
and the certified reference values (``reference.csv`` at 20 C, or
``reference_all_temperatures.csv`` in the folder or its parent for ``--temperature``); everything
protocol-related comes from the DICOM headers, so any scan session of the same layout works.

Per sphere it prints the reference, the estimate (ROI median of the voxelwise map), the % bias, the
median sqrt(CRLB) and the number of clipped samples excluded, and writes ``OUT/results.json``, the
maps as NIfTI, PNG figures and a one-page PDF report (``OUT/report.pdf``: whole-phantom maps with
the ROIs outlined and numbered, measured vs reference on log axes with ROI SDs, % bias per sphere
against the tolerance band, clipped samples per sphere; ``experiments.phantom_report``).

Analysis choices (stated in results.json):
* clipped samples (stored value = 2^BitsStored - 1) are excluded, never fitted;
* T1: IR magnitude model with inversion efficiency, ``|PD (1 - (1+k) e^{-TI/T1} + k e^{-TR/T1})|``,
  Rician maximum likelihood, sigma from the background;
* T2 (the estimate): EPG summed over a slice profile (Hann-sinc pulses, TBW 3, refocusing slice
  1.2x the excitation slice, T1 fixed at 1000 ms; ``--t2-t1 vfa``: T1 per voxel from the session's
  VFA slab, ``experiments.phantom_vfa``, with the 1000 ms fit beside it) with a transmit field B1
  that is smooth over the phantom (``qmri_jax.fitting.fit_t2_smooth_b1``): B1 fitted per voxel in
  the sphere ROIs whose echoes are >= 90% unclipped, a plane fitted to it robustly (CRLB weights,
  Tukey biweights), T2 refitted with B1 fixed; all unclipped echoes, Rician MLE. The B1 map (x 180
  = the central refocusing angle) is written and drawn. Reported beside it: the mono-exponential
  fit with offset and the mono-exponential Rician MLE (first echo excluded: it carries no
  stimulated echo, unlike every later echo of an imperfect CPMG train; MR-BIAS does the same).
* Temperature: the scan's was not recorded. With ``reference_all_temperatures.csv`` beside the data
  the T2 bias is tabulated at every listed temperature and the one with the smallest median |bias|
  over the judged spheres is named (``temperature_sensitivity`` in results.json); the judged
  numbers stay at ``--temperature`` (default 20 C).
Accuracy is judged on T1 spheres 1-10 and T2 spheres 2-12; the others lie outside the protocols'
fittable range (README of the phantom data) and are reported only.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import pathlib
import sys
import time

import numpy as np

from experiments.phantom_learned import learned_t1
from experiments.phantom_report import roi_sd, write_report
from experiments.phantom_vfa import vfa_t1
from qmri_jax.evaluation import plot_maps, roi_medians
from qmri_jax.fitting import EPG_T1_MS, SolverOptions, auto_mask, fit_images, fit_t2_smooth_b1
from qmri_jax.io import read_dicom_series, write_fit_outputs, write_json, write_nifti

T1_JUDGED = range(1, 11)
T2_JUDGED = range(2, 13)


def load_reference(data: pathlib.Path, temperature: float | None) -> dict:
    """(array, index) -> {"T1": ms, "T2": ms, "T1_unc": ms, "T2_unc": ms} at the requested
    temperature (default 20 C); the uncertainties are NaN where the table has none."""
    rows = None
    if temperature is not None:
        for cand in (data / "reference_all_temperatures.csv", data.parent / "reference_all_temperatures.csv"):
            if cand.is_file():
                with open(cand) as f:
                    rows = [r for r in csv.DictReader(f) if abs(float(r["temp_C"]) - temperature) < 0.01]
                if not rows:
                    temps = sorted({float(r["temp_C"]) for r in csv.DictReader(open(cand))})
                    raise SystemExit(f"{cand}: no reference rows at {temperature} C; available {temps}")
                break
        else:
            raise SystemExit(f"--temperature needs reference_all_temperatures.csv in {data} or {data.parent}")
    if rows is None:
        path = data / "reference.csv"
        if not path.is_file():
            raise SystemExit(f"{path}: reference values not found")
        with open(path) as f:
            rows = list(csv.DictReader(f))
    ref = {}
    for r in rows:
        try:
            ref[(r["sphere_array"], int(r["sphere_index"]))] = {
                "T1": float(r["ref_T1_ms"]), "T2": float(r["ref_T2_ms"]),
                "T1_unc": float(r.get("ref_T1_unc_ms") or "nan"),
                "T2_unc": float(r.get("ref_T2_unc_ms") or "nan")}
        except (KeyError, ValueError) as e:
            raise SystemExit(f"reference table: bad row {r}: {e}") from None
    return ref


def series_dirs(data, name):
    """The DICOM series folders of one protocol of a scan session (``data/dicom/<name>/*``)."""
    dirs = sorted(glob.glob(str(data / "dicom" / name / "*")))
    if not dirs:
        raise SystemExit(f"{data / 'dicom' / name}: no series folders found")
    return dirs


def _clipped_per_roi(valid, labels):
    return {int(k): int((~valid[labels == k]).sum()) for k in np.unique(labels[labels > 0])}


def _crlb_per_roi(res, name, labels):
    return roi_medians(res.crlb_sd[name], labels, keep=res.converged)


def scale_and_clip(series, factor: float):
    """``series`` as a scan ``factor`` times brighter would have stored it: the stored values times
    ``factor``, clipped at the stored bit depth's maximum (``2**BitsStored - 1``), the newly
    clipped samples marked invalid. A harder test of clipped-sample handling than the scan itself."""
    if not factor > 0:
        raise SystemExit(f"--vir-scale {factor}: expected a factor > 0")
    if series.bits_stored is None:
        raise SystemExit(f"--vir-scale: {series.files[0]} has no BitsStored (needed for the "
                         "clipping level)")
    top = float(2 ** series.bits_stored - 1)
    scaled = series.images * np.float32(factor)
    return dataclasses.replace(series, images=np.minimum(scaled, top).astype(np.float32),
                               valid=series.valid & (scaled < top))


def run(data: pathlib.Path, out: pathlib.Path, temperature: float | None = None,
        checkpoint=None, vir_scale: float = 1.0, t2_t1: str = "fixed") -> dict:
    data = pathlib.Path(data)
    out = pathlib.Path(out)
    ref = load_reference(data, temperature)
    rois_path = data / "rois.npz"
    if not rois_path.is_file():
        raise SystemExit(f"{rois_path}: ROI label maps not found")
    rois = np.load(rois_path)
    for key in ("t1_labels", "t2_labels"):
        if key not in rois:
            raise SystemExit(f"{rois_path}: field {key!r} missing (expected [rows, cols] labels)")

    results = {"data": str(data), "temperature_C": temperature if temperature is not None else 20.0,
               "spheres": [], "settings": {}}
    t0 = time.perf_counter()

    # ---- T1 from variable inversion recovery.
    vir = read_dicom_series(series_dirs(data, "vir"), kind="ir", name="vir")
    if vir_scale != 1.0:
        vir = scale_and_clip(vir, vir_scale)
        results["vir_scale"] = vir_scale
        print(f"VIR images x {vir_scale:g}, clipped at {2 ** vir.bits_stored - 1}: "
              f"{vir.n_clipped} clipped samples")
    t1_labels = np.asarray(rois["t1_labels"]).T  # rows/cols -> NIfTI x/y
    if t1_labels.shape != vir.images.shape[:2]:
        raise SystemExit(f"{rois_path}: t1_labels {rois['t1_labels'].shape} does not match the VIR "
                         f"images {vir.images.shape[1::-1]}")
    valid = vir.valid[:, :, 0]
    mask = t1_labels > 0
    phantom = auto_mask(vir.images[:, :, 0]) | mask  # the whole phantom, for the report's map
    t1 = fit_vir(vir, phantom)
    t1_est = roi_medians(t1.maps["T1"], t1_labels, keep=t1.converged)
    t1_crlb = _crlb_per_roi(t1, "T1", t1_labels)
    t1_clip = _clipped_per_roi(valid, t1_labels)
    write_fit_outputs(out / "maps", t1, vir.affine, vir.protocol, prefix="vir")
    single = isinstance(checkpoint, (str, pathlib.Path))
    checkpoints = [checkpoint] if single else list(checkpoint or [])
    learned = [learned_t1(c, vir, mask, out) for c in checkpoints]
    learned_est = [roi_medians(m["T1"], t1_labels) for m in learned]
    learned_sd = [roi_medians(m["T1_std"], t1_labels) if "T1_std" in m else None for m in learned]

    # ---- T2 from multi-echo spin echo.
    mse = read_dicom_series(series_dirs(data, "mse"), kind="se", name="mse")
    t2_labels = np.asarray(rois["t2_labels"]).T
    if t2_labels.shape != mse.images.shape[:2]:
        raise SystemExit(f"{rois_path}: t2_labels does not match the MSE images")
    img2, valid2 = mse.images[:, :, 0], mse.valid[:, :, 0]
    no_first = valid2.copy()
    no_first[..., 0] = False
    mask2 = t2_labels > 0
    # The mono-exponential Rician fit covers the whole phantom (the report's map); the others the
    # ROIs. (The t2_offset fit of all 31k phantom voxels stalls XLA:CPU with 4 host devices on 2
    # cores, in its batched 2x2 LAPACK solve.)
    phantom2 = auto_mask(img2) | mask2
    if t2_t1 not in ("fixed", "vfa"):
        raise SystemExit(f"--t2-t1 {t2_t1!r}: expected 'fixed' or 'vfa'")
    vfa = vfa_t1(data, mse, mask2, rois, t1_est, EPG_T1_MS) if t2_t1 == "vfa" else None
    if t2_t1 == "vfa" and vfa is None:
        raise SystemExit(f"--t2-t1 vfa: {data / 'dicom' / 'vfa'} has no series")
    t1_for_t2 = vfa["t1_map"] if vfa else EPG_T1_MS
    epg = fit_t2_smooth_b1(img2, mse.protocol, mask2, valid2, b1_mask=mask2, t1_ms=t1_for_t2)
    t1_used = (roi_medians(t1_for_t2, t2_labels) if vfa else
               {int(k): EPG_T1_MS for k in np.unique(t2_labels[t2_labels > 0])})
    fits = {
        "epg": epg.t2,
        "epg_t1_fixed": (fit_t2_smooth_b1(img2, mse.protocol, mask2, valid2, b1_mask=mask2).t2
                         if vfa else epg.t2),
        "mono_offset": fit_images(img2, mse.protocol, "t2_offset", mask=mask2, valid=no_first,
                                  options=SolverOptions(max_iter=30)),
        "mono_rician": fit_images(img2, mse.protocol, "t2", mask=phantom2, valid=no_first,
                                  options=SolverOptions(loss="rician", max_iter=30)),
    }
    t2_est = {k: roi_medians(r.maps["T2"], t2_labels, keep=r.converged) for k, r in fits.items()}
    t2_crlb = _crlb_per_roi(fits["epg"], "T2", t2_labels)
    t2_clip = _clipped_per_roi(valid2, t2_labels)
    b1_roi = roi_medians(np.where(mask2, epg.b1, np.nan), t2_labels)
    b1_voxel = roi_medians(epg.b1_voxel.maps["B1"], t2_labels)
    write_fit_outputs(out / "maps", fits["epg"], mse.affine, mse.protocol, prefix="mse_epg")
    write_fit_outputs(out / "maps", fits["mono_offset"], mse.affine, mse.protocol, prefix="mse")
    write_nifti(out / "maps" / "mse_B1map.nii.gz", np.where(phantom2, epg.b1, 0.0)[:, :, None],
                mse.affine)

    # ---- Report.
    print(f"NIST/ISMRM phantom: {data}  (reference at {results['temperature_C']:g} C)")
    print(f"T1 (VIR, {len(vir.protocol)} TIs, sigma {t1.sigma:.1f}; IR model with inversion efficiency, Rician MLE)")
    print(f"{'sphere':>6} {'ref ms':>9} {'est ms':>9} {'bias %':>8} {'CRLB sd':>8} {'clipped':>8}")
    for k in sorted(t1_est):
        r = ref[("T1", k)]["T1"]
        e = t1_est[k]
        b = 100 * (e / r - 1)
        flag = "" if k in T1_JUDGED else "  (outside fittable range)"
        print(f"{k:>6} {r:>9.1f} {e:>9.1f} {b:>+8.1f} {t1_crlb[k]:>8.1f} {t1_clip[k]:>8}{flag}")
        row = {"array": "T1", "index": k, "reference_ms": r, "estimate_ms": e,
               "bias_percent": b, "crlb_sd_ms": t1_crlb[k],
               "clipped_samples_excluded": t1_clip[k], "judged": k in T1_JUDGED}
        row["learned"] = []
        for j, est in enumerate(learned_est):
            le = est.get(k, float("nan"))
            entry = {"checkpoint": str(checkpoints[j]), "estimate_ms": le,
                     "bias_percent": 100 * (le / r - 1)}
            if learned_sd[j] is not None:
                entry["posterior_sd_ms"] = learned_sd[j].get(k, float("nan"))
            row["learned"].append(entry)
        results["spheres"].append(row)
    if learned:
        print("T1 from trained models beside the fit (bias %; posterior sd in ms for a DDPM):")
        for j, m in enumerate(learned):
            print(f"  model {j + 1}: {checkpoints[j]} ({m['kind']})")
        head = f"{'sphere':>6} {'ref ms':>9} {'fit %':>8}"
        for j, sd in enumerate(learned_sd):
            head += f" {'model ' + str(j + 1) + ' %':>10}" + (f" {'sd ms':>7}" if sd is not None else "")
        print(head)
        for row in [x for x in results["spheres"] if x["array"] == "T1"]:
            line = f"{row['index']:>6} {row['reference_ms']:>9.1f} {row['bias_percent']:>+8.1f}"
            for e in row["learned"]:
                line += f" {e['bias_percent']:>+10.1f}"
                if "posterior_sd_ms" in e:
                    line += f" {e['posterior_sd_ms']:>7.1f}"
            print(line + ("" if row["judged"] else "  (not judged)"))
        for j, m in enumerate(learned):
            judged = [abs(x["learned"][j]["bias_percent"]) for x in results["spheres"]
                      if x["array"] == "T1" and x["judged"]]
            print(f"  model {j + 1}: max |bias| over judged spheres {max(judged):.1f}%, "
                  f"median {float(np.median(judged)):.1f}%")
        results["learned"] = [{"checkpoint": str(c), "kind": m["kind"]}
                              for c, m in zip(checkpoints, learned)]
    if vfa:
        results["vfa_t1"] = {k: v for k, v in vfa.items() if k != "t1_map"}
        print(f"T1 for the EPG T2 fit: {vfa['description']}; MSE slice at VFA slice "
              f"{vfa['slice_position_vox']:.2f}. Check on the T1 plate, VFA vs VIR fit (%): " +
              " ".join(f"{k}:{c['difference_percent']:+.0f}" for k, c in vfa["check"].items()))
    print(f"T2 (MSE, {len(mse.protocol)} echoes, sigma {fits['epg'].sigma:.1f}; EPG with slice "
          f"profile and a smooth B1 (plane), mono-exp fits without the first echo)")
    print(f"{'sphere':>6} {'ref ms':>9} {'EPG+B1':>9} {'bias %':>8} {'T1 used':>8} {'T1 1000':>8} "
          f"{'B1':>6} {'B1 vox':>6} {'mono+C':>9} {'bias %':>8} {'mono ML':>9} {'bias %':>8} "
          f"{'CRLB sd':>8} {'clipped':>8}")
    for k in sorted(int(v) for v in np.unique(t2_labels) if v > 0):
        r = ref[("T2", k)]["T2"]
        row = {"array": "T2", "index": k, "reference_ms": r}
        vals = {}
        for name in ("epg", "epg_t1_fixed", "mono_offset", "mono_rician"):
            e = t2_est[name].get(k, float("nan"))
            vals[name] = (e, 100 * (e / r - 1))
        row.update({"estimate_ms": vals["epg"][0], "bias_percent": vals["epg"][1],
                    "t1_used_ms": t1_used.get(k, float("nan")),
                    "epg_t1_fixed_ms": vals["epg_t1_fixed"][0],
                    "epg_t1_fixed_bias_percent": vals["epg_t1_fixed"][1],
                    "b1": b1_roi[k], "b1_voxelwise_median": b1_voxel.get(k, float("nan")),
                    "refocus_deg": 180 * b1_roi[k],
                    "mono_offset_ms": vals["mono_offset"][0],
                    "mono_offset_bias_percent": vals["mono_offset"][1],
                    "mono_rician_ms": vals["mono_rician"][0],
                    "mono_rician_bias_percent": vals["mono_rician"][1],
                    "crlb_sd_ms": t2_crlb.get(k, float("nan")),
                    "clipped_samples_excluded": t2_clip[k], "judged": k in T2_JUDGED})
        results["spheres"].append(row)
        flag = "" if k in T2_JUDGED else "  (outside fittable range)"
        print(f"{k:>6} {r:>9.1f} {vals['epg'][0]:>9.1f} {vals['epg'][1]:>+8.1f} "
              f"{row['t1_used_ms']:>8.0f} {vals['epg_t1_fixed'][1]:>+8.1f} {b1_roi[k]:>6.3f} "
              f"{b1_voxel.get(k, float('nan')):>6.3f} {vals['mono_offset'][0]:>9.1f} "
              f"{vals['mono_offset'][1]:>+8.1f} {vals['mono_rician'][0]:>9.1f} "
              f"{vals['mono_rician'][1]:>+8.1f} {row['crlb_sd_ms']:>8.1f} {t2_clip[k]:>8}{flag}")
    results["temperature_sensitivity"] = temperature_table(data, t2_est["epg"])
    if results["temperature_sensitivity"]:
        ts = results["temperature_sensitivity"]
        print("T2 (EPG + smooth B1) bias % by reference temperature, spheres " +
              " ".join(str(k) for k in T2_JUDGED))
        for t, row in ts["by_temperature"].items():
            print(f"  {t:>5} C: " + " ".join(f"{b:+.1f}" for b in row["bias_percent"]) +
                  f"   median |bias| {row['median_abs_bias_percent']:.1f}%")
        print(f"  best fitting temperature (smallest median |bias|): {ts['best_temperature_C']:g} C")
    judged_t1 = [s["bias_percent"] for s in results["spheres"] if s["array"] == "T1" and s["judged"]]
    judged_t2 = [s["bias_percent"] for s in results["spheres"] if s["array"] == "T2" and s["judged"]]
    results["summary"] = {"t1_max_abs_bias_percent_spheres_1_10": float(np.max(np.abs(judged_t1))),
                          "t2_max_abs_bias_percent_spheres_2_12": float(np.max(np.abs(judged_t2))),
                          "seconds": time.perf_counter() - t0}
    results["settings"] = {
        "t1_model": t1.model.description, "t1_loss": "rician", "t2_model": fits["epg"].model.description,
        "t2_b1": (f"per-voxel B1 in the sphere ROIs with >= 90% valid echoes, a degree-{epg.degree} "
                  f"polynomial fitted robustly, T2 refitted with it fixed"),
        "t2_t1": vfa["description"] if vfa else f"fixed at {EPG_T1_MS:g} ms (no VFA scan)",
        "t2_mono_first_echo_excluded": True, "clipped_samples_excluded": True,
        "estimate": "median over the sphere ROI of converged voxels",
    }
    print(f"max |bias| T1 spheres 1-10: {results['summary']['t1_max_abs_bias_percent_spheres_1_10']:.1f}%   "
          f"T2 spheres 2-12 (EPG + smooth B1): "
          f"{results['summary']['t2_max_abs_bias_percent_spheres_2_12']:.1f}%")

    plot_maps({"T1": t1.maps["T1"]}, out / "t1_map.png",
              title="VIR T1 (ms), sphere ROIs", crlb_sd={"T1": t1.crlb_sd["T1"]},
              ranges={"T1": (0, 2000)})
    plot_maps({"T2 EPG + B1": fits["epg"].maps["T2"], "T2 mono+C": fits["mono_offset"].maps["T2"],
               "refocusing angle": np.where(phantom2, 180 * epg.b1, np.nan),
               "voxelwise angle": 180 * epg.b1_voxel.maps["B1"]},
              out / "t2_map.png", title="MSE T2 (ms) and the central refocusing angle (deg)",
              ranges={"T2 EPG + B1": (0, 500), "T2 mono+C": (0, 500),
                      "refocusing angle": (120, 240), "voxelwise angle": (120, 240)})
    t1_sd = roi_sd(t1.maps["T1"], t1_labels, keep=t1.converged)
    t2_sd = roi_sd(fits["epg"].maps["T2"], t2_labels, keep=fits["epg"].converged)
    for row in results["spheres"]:
        row["roi_sd_ms"] = (t1_sd if row["array"] == "T1" else t2_sd).get(row["index"], float("nan"))
    write_json(out / "results.json", results)
    write_report(out / "report.pdf", results, t1.maps["T1"], fits["mono_rician"].maps["T2"],
                 t1_labels, t2_labels, t1_sd, t2_sd)
    print(f"wrote {out / 'results.json'}, {out / 'report.pdf'}, maps in {out / 'maps'}, figures "
          f"{out}/t1_map.png t2_map.png")
    return results


def temperature_table(data: pathlib.Path, t2_est: dict) -> dict:
    """T2 bias of the judged spheres at every temperature of ``reference_all_temperatures.csv``
    (in ``data`` or its parent; ``{}`` without it) and the temperature with the smallest median
    |bias|."""
    for cand in (data / "reference_all_temperatures.csv", data.parent / "reference_all_temperatures.csv"):
        if cand.is_file():
            with open(cand) as f:
                rows = [r for r in csv.DictReader(f) if r["sphere_array"] == "T2"]
            break
    else:
        return {}
    by_t = {}
    for r in rows:
        by_t.setdefault(float(r["temp_C"]), {})[int(r["sphere_index"])] = float(r["ref_T2_ms"])
    table = {}
    for t in sorted(by_t):
        bias = [100 * (t2_est[k] / by_t[t][k] - 1) for k in T2_JUDGED]
        table[f"{t:g}"] = {"bias_percent": bias,
                           "median_abs_bias_percent": float(np.median(np.abs(bias)))}
    best = min(table, key=lambda t: table[t]["median_abs_bias_percent"])
    return {"spheres": list(T2_JUDGED), "by_temperature": table, "best_temperature_C": float(best)}


def fit_vir(vir, mask):
    """The voxelwise Rician fit of the ``ir`` model (PD, T1, k) to the VIR series inside ``mask``,
    clipped samples excluded: the project's reference T1 on the phantom."""
    return fit_images(vir.images[:, :, 0], vir.protocol, "ir", mask=mask, valid=vir.valid[:, :, 0],
                      options=SolverOptions(loss="rician", max_iter=30))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=pathlib.Path, help="scan-session folder (e.g. .../nist_phantom/A)")
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    parser.add_argument("--temperature", type=float, default=None,
                        help="phantom temperature in C (picks the reference row; default 20 C)")
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="a trained qmri_jax.main workdir (DDPM, RIM, ResNet, ...) to evaluate "
                             "beside the fit; repeat for several")
    parser.add_argument("--vir-scale", type=float, default=1.0,
                        help="multiply the VIR images by this factor and clip them at the stored "
                             "maximum before anything is fitted (a harder clipping test; "
                             "default 1: the scan as it is)")
    parser.add_argument("--t2-t1", choices=("fixed", "vfa"), default="fixed",
                        help="T1 of the EPG T2 fit: fixed at 1000 ms, or per voxel from the "
                             "session's VFA slab (experiments.phantom_vfa; the fixed-T1 fit is "
                             "reported beside it)")
    args = parser.parse_args(argv)
    run(args.data, args.out, args.temperature, args.checkpoint, args.vir_scale, args.t2_t1)


if __name__ == "__main__":
    sys.exit(main())
