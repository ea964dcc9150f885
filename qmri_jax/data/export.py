"""Export synthetic subjects as BIDS-style NIfTI with a PNG montage per subject.

Run::

    python -m qmri_jax.data.export --subjects 3 --protocol four_contrast_brain --field 3T --out DIR

writes, per subject ``sub-NN``: ``sub-NN_T1map.nii.gz`` / ``_T2map`` (ms) / ``_PDmap`` (a.u.) with
JSON sidecars stating the units, ``sub-NN_label-{GM,WM,CSF,lesion}_probseg.nii.gz`` (lesion only
when present), one image per contrast (``sub-NN_T1w.nii.gz`` ..., or ``sub-NN_acq-<name>_MR`` for
contrasts without a BIDS suffix) with its timing in the sidecar, and ``sub-NN_montage.png``.
All files are written atomically (temp name, then rename).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from qmri_jax.data import acquisition, anatomy as anatomy_lib, subjects as subjects_lib
from qmri_jax.io.nifti import write_json, write_nifti
from qmri_jax.physics.protocol import get_protocol, list_protocols

__all__ = ["export_subject", "plot_montage", "main"]

_BIDS_CONTRASTS = {"T1w", "T2w", "PDw", "FLAIR", "T2starw"}
_MAP_SIDECAR = {
    "T1": {"Units": "ms", "Description": "longitudinal relaxation time T1"},
    "T2": {"Units": "ms", "Description": "transverse relaxation time T2"},
    "PD": {"Units": "arbitrary (water fraction, CSF = 1)", "Description": "proton density"},
}


def plot_montage(path, maps: dict, images: np.ndarray, names, masks: dict, title: str = ""):
    """One-slice montage: maps with colour bars (units), every contrast, masks. Atomic PNG write.

    Args:
      path: output PNG.
      maps: ``{"T1", "T2", "PD"}`` each ``[X, Y]``.
      images: ``[X, Y, N]``.
      names: ``N`` contrast names.
      masks: ``{name: [X, Y]}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qmri_jax.io.nifti import _atomic

    n_img = images.shape[-1]
    ncol = max(3, n_img, 1)
    fig, axes = plt.subplots(3, ncol, figsize=(3.0 * ncol, 9.2))
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")

    def show(ax, img, label, cmap="gray", vmax=None, cbar=None):
        # Axial slice in radiological view: rotate so anterior is up (RAS+ arrays are [x, y]).
        h = ax.imshow(np.rot90(img), cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(label, fontsize=10)
        if cbar:
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.02).set_label(cbar, fontsize=8)

    limits = {"T1": (4000, "T1 (ms)"), "T2": (300, "T2 (ms)"), "PD": (1.0, "PD (a.u.)")}
    for j, p in enumerate(("T1", "T2", "PD")):
        vmax, unit = limits[p]
        show(axes[0, j], maps[p], f"{p} map", "magma" if p != "PD" else "viridis", vmax, unit)
    for j in range(n_img):
        img = images[..., j]
        show(axes[1, j], img, names[j], vmax=float(np.percentile(img, 99.5)) or None)
    for j, (name, m) in enumerate(masks.items()):
        if j < ncol:
            show(axes[2, j], m.astype(np.float32), f"{name} mask", vmax=1.0)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _atomic(pathlib.Path(path), lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def export_subject(out_dir, index: int, *, protocol: str, field: str, resolution_mm: int = 1,
                   pathology: str | None = None, snr: float = float("inf"), seed: int = 0,
                   receive_bias: float = 0.0, transmit_bias: float = 0.0) -> pathlib.Path:
    """Generate subject ``index`` and write its files to ``out_dir/sub-NN/``; returns that folder."""
    anat = anatomy_lib.load_mni152(resolution_mm)
    rng = np.random.default_rng([seed, index])
    subj = subjects_lib.make_brain_subject(rng, anat, field, pathology=pathology)
    prot = get_protocol(protocol)
    acq = acquisition.AcquisitionConfig(snr=snr, receive_bias=receive_bias,
                                        transmit_bias=transmit_bias)
    images, _ = acquisition.acquire(rng, subj.maps, prot, subj.brain, acq, anat.voxel_mm)
    sub = f"sub-{index + 1:02d}"
    d = pathlib.Path(out_dir) / sub
    d.mkdir(parents=True, exist_ok=True)
    for p in ("T1", "T2", "PD"):
        write_nifti(d / f"{sub}_{p}map.nii.gz", subj.maps[p], subj.affine)
        write_json(d / f"{sub}_{p}map.json", {**_MAP_SIDECAR[p], "FieldStrength": field,
                                              "Generator": "qmri_jax.data.export"})
    for t in ("GM", "WM", "CSF", "lesion"):
        prob = subj.prob[t]
        if t == "lesion" and not (prob > 0).any():
            continue
        write_nifti(d / f"{sub}_label-{t}_probseg.nii.gz", prob.astype(np.float32), subj.affine)
    for j, name in enumerate(prot.names):
        stem = f"{sub}_{name}" if name in _BIDS_CONTRASTS else f"{sub}_acq-{name}_MR"
        write_nifti(d / f"{stem}.nii.gz", images[..., j], subj.affine)
        im = prot.to_dict()["images"][j]
        write_json(d / f"{stem}.json", {
            "RepetitionTime": im["tr_ms"] / 1000.0, "EchoTime": im["te_ms"] / 1000.0,
            "InversionTime": im["ti_ms"] / 1000.0 if im["ti_ms"] else None,
            "FlipAngle": im["flip_deg"], "SequenceKind": im["kind"], "tr_ms": im["tr_ms"],
            "te_ms": im["te_ms"], "ti_ms": im["ti_ms"], "SNR": "inf" if not np.isfinite(snr)
            else snr, "Note": "BIDS timing keys in seconds; *_ms keys in milliseconds"})
    write_json(d / f"{sub}_meta.json", {"protocol": prot.to_dict(), **subj.meta})
    area = subj.brain.sum(axis=(0, 1))
    z = int(np.argmax(area >= 0.6 * area.max()) + 0.35 * np.count_nonzero(area >= 0.6 * area.max()))
    lesion_z = np.flatnonzero(subj.prob["lesion"].sum(axis=(0, 1)) > 0)
    if len(lesion_z):  # show the pathology if there is some
        z = int(lesion_z[np.argmax(subj.prob["lesion"].sum(axis=(0, 1))[lesion_z])])
    masks = subj.masks()
    plot_montage(d / f"{sub}_montage.png", {p: subj.maps[p][:, :, z] for p in ("T1", "T2", "PD")},
                 images[:, :, z], prot.names,
                 {m: masks[m][:, :, z] for m in ("GM", "WM", "CSF", "lesion")},
                 title=f"{sub}  {field}  {protocol}  axial slice {z}"
                       + (f"  pathology: {pathology}" if pathology else ""))
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--protocol", default="four_contrast_brain", choices=list_protocols())
    ap.add_argument("--field", default="3T", choices=["1.5T", "3T"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--resolution", type=int, default=1, help="voxel size in mm (integer)")
    ap.add_argument("--pathology", default="mixed", choices=["mixed", "none", "tumour", "ms"],
                    help="mixed: sub-01 tumour, sub-02 MS lesions, then none")
    ap.add_argument("--snr", type=float, default=float("inf"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.subjects < 1:
        ap.error(f"--subjects={args.subjects}: expected >= 1")
    for i in range(args.subjects):
        path = {"mixed": ["tumour", "ms"][i] if i < 2 else None, "none": None}.get(
            args.pathology, args.pathology)
        d = export_subject(args.out, i, protocol=args.protocol, field=args.field,
                           resolution_mm=args.resolution, pathology=path, snr=args.snr,
                           seed=args.seed)
        print(f"wrote {d}")


if __name__ == "__main__":
    main()
