"""Command line: voxelwise parameter maps from DICOM or NIfTI series.

Examples:
  python -m qmri_jax.fit --model ir --dicom vir/*/ --out OUT
  python -m qmri_jax.fit --model ir --nifti ti*.nii.gz --ti 35 75 100 --tr 4500 --out OUT
  python -m qmri_jax.fit --model t2_offset --dicom mse/ --exclude-images 0 --out OUT

Writes ``OUT/<prefix>_T1map.nii.gz`` (etc., BIDS qMRI names) with JSON sidecars, sqrt(CRLB) maps
(``desc-crlbsd``), the fit and convergence masks, and ``OUT/<prefix>_maps.png``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

from qmri_jax.evaluation import plot_maps
from qmri_jax.fitting import SolverOptions, fit_images, get_model, list_models
from qmri_jax.io import DicomError, read_dicom_series, read_nifti_series, write_fit_outputs
from qmri_jax.physics.protocol import Protocol

_KIND_OF_MODEL = {"ir": "ir", "ir3": "ir", "ir_fse": "ir_fse", "t2": "se", "t2_offset": "se",
                  "t2_epg": "se", "t2_epg_b1": "se", "vfa": "spgr", "joint": None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qmri_jax.fit", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=list_models())
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dicom", nargs="+", help="DICOM files or folders (non-DICOM files are skipped)")
    src.add_argument("--nifti", nargs="+", help="NIfTI files, one per image (or one 4D file)")
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--prefix", default="fit", help="output file prefix (BIDS entities), default 'fit'")
    p.add_argument("--ti", nargs="+", type=float, help="NIfTI input: inversion times (ms), one per image")
    p.add_argument("--te", nargs="+", type=float, help="NIfTI input: echo times (ms)")
    p.add_argument("--tr", nargs="+", type=float, help="NIfTI input: repetition time(s) (ms)")
    p.add_argument("--flip", nargs="+", type=float, help="NIfTI input: flip angles (deg)")
    p.add_argument("--loss", choices=("gaussian", "rician"), default=None,
                   help="default: rician when sigma is known or estimated, else gaussian")
    p.add_argument("--sigma", type=float, default=None, help="noise std (default: from background)")
    p.add_argument("--max-iter", type=int, default=30)
    p.add_argument("--exclude-images", nargs="+", type=int, default=(),
                   help="0-based indices (after sorting) of images to leave out of the fit")
    p.add_argument("--mask-fraction", type=float, default=0.1,
                   help="fit voxels whose max signal exceeds this fraction of the 99th percentile")
    return p


def _nifti_protocol(args, n_files, parser) -> Protocol:
    kind = _KIND_OF_MODEL[args.model]
    if kind is None:
        parser.error("--model joint needs DICOM input (sequence kinds per image come from headers)")
    lists = {k: getattr(args, k) for k in ("ti", "te", "tr", "flip")}
    n = max(len(v) for v in lists.values() if v) if any(lists.values()) else n_files
    if kind in ("ir", "ir_fse") and not args.ti:
        parser.error(f"--model {args.model} with --nifti needs --ti (one inversion time per image)")
    if args.model in ("ir", "ir3") and not args.tr:
        parser.error(f"--model {args.model} with --nifti needs --tr: its inversion efficiency is "
                     "fitted against the recovery over TR, so a guessed TR biases it (use --model "
                     "ir_fse when TR is unknown or >> T1)")
    if kind == "se" and not args.te:
        parser.error(f"--model {args.model} with --nifti needs --te (one echo time per image)")
    if kind == "spgr" and not (args.flip and args.tr):
        parser.error("--model vfa with --nifti needs --flip and --tr")
    for k, v in lists.items():
        if v and len(v) not in (1, n):
            parser.error(f"--{k} has {len(v)} values; expected 1 or {n} (one per image)")
    def values(v, default):
        return default if not v else (v[0] if len(v) == 1 else v)

    # Without --tr (only ir_fse and t2 models get here) TR is long: it enters no fitted model.
    return Protocol.create([kind] * n, tr_ms=values(args.tr, 10000.0), te_ms=values(args.te, 0.0),
                           ti_ms=values(args.ti, 0.0), flip_deg=values(args.flip, 90.0), name="cli")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if args.dicom:
            kind = _KIND_OF_MODEL[args.model]
            series = read_dicom_series(args.dicom, kind=kind, name="dicom")
        else:
            series = read_nifti_series(args.nifti, _nifti_protocol(args, len(args.nifti), parser))
    except (DicomError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = get_model(args.model)
    valid = series.valid.copy()
    for i in args.exclude_images:
        if not 0 <= i < valid.shape[-1]:
            parser.error(f"--exclude-images {i}: only {valid.shape[-1]} images")
        valid[..., i] = False
    images = series.images
    from qmri_jax.fitting.maps import auto_mask
    mask = auto_mask(images, args.mask_fraction)
    loss = args.loss or "rician"
    n_vox = int(mask.sum())
    print(f"{len(series.protocol)} images {images.shape[:-1]}, {n_vox} voxels to fit, model "
          f"{model.name} ({model.description}), {series.n_clipped} clipped samples excluded")
    try:
        result = fit_images(images, series.protocol, model, mask=mask, valid=valid, sigma=args.sigma,
                            options=SolverOptions(loss=loss, max_iter=args.max_iter),
                            progress=n_vox > 100_000)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = write_fit_outputs(args.out, result, series.affine, series.protocol, prefix=args.prefix,
                                extra={"Source": [f for fs in series.files for f in fs][:50]})
    z = images.shape[2] // 2
    plot_maps({p: m[:, :, z] for p, m in result.maps.items()}, args.out / f"{args.prefix}_maps.png",
              title=f"{model.name}: {model.description}",
              crlb_sd={p: m[:, :, z] for p, m in result.crlb_sd.items()})
    dt = time.perf_counter() - t0
    sigma_txt = "unknown (no CRLB)" if result.sigma is None else f"{result.sigma:.4g}"
    print(f"sigma {sigma_txt}; converged {result.converged[mask].mean() * 100:.1f}% of "
          f"{n_vox} voxels in {dt:.1f} s")
    for p, m in result.maps.items():
        v = m[mask & result.converged]
        if v.size:
            print(f"  {p}: median {np.median(v):.4g}, 5-95% [{np.percentile(v, 5):.4g}, "
                  f"{np.percentile(v, 95):.4g}]")
    print(f"wrote {len(written)} files to {args.out} and {args.out / (args.prefix + '_maps.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
