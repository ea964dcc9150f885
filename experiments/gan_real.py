"""Contrast transfer of a trained GAN (``configs/gan.py``) on real multi-echo spin-echo scans.

Where real target images exist: every echo of a multi-echo series is a contrast at its own TE and
the series' TR, so one echo (the input) can be transferred to every other echo and scored against
it. Scans: the NIST/ISMRM phantom's multi-echo series (``nist_phantom/A/dicom/mse``: 32 echoes,
TE 10..320 ms, TR 5000 ms) and the in-vivo brain (``invivo/mese``: 30 echoes, TE 12.8..384 ms;
its TR is not in the sidecar, so ``--invivo-tr`` states it). Each image is block-averaged to the
network's training voxel size (``--block`` per scan) first. Scored per target echo, inside the
Otsu foreground of the target (the brain mask ``*_mask.nii.gz`` where the scan has one; the input
is then skull-stripped with it, as the training brains have no skull) without voxels that clip
(4095) in the input or the target, each
image over its own 99th percentile there (:func:`qmri_jax.evaluation.transfer.image_metrics`):
the model, the identity baseline (the input echo itself) and the voxelwise mono-exponential fit
of all echoes
(``S = PD e^{-TE/T2}``; a reference that sees every target, not a competitor).

  python -m experiments.gan_real --workdir W --data ../shared --out OUT [--input-echo 0]

Writes ``OUT/results.json``, ``OUT/results.md`` (one row per target echo and scan) and
``OUT/transfer_<scan>.png``.
"""

from __future__ import annotations

import argparse
import glob
import json
import pathlib

import numpy as np

from experiments.phantom_learned import block_mean

CLIP = 4095.0


def load_scans(data: pathlib.Path, invivo_tr: float, blocks: dict) -> dict:
    """``{scan: (images [X, Y, N], te [N], tr [N], clipped [X, Y, N], brain [X, Y] or None)}``
    for the scans present (``brain``: the scan's own mask, ``*_mask.nii.gz``)."""
    scans = {}
    mse_dirs = sorted(glob.glob(str(data / "nist_phantom" / "A" / "dicom" / "mse" / "*")))
    if mse_dirs:
        from qmri_jax.io.dicom import read_dicom_series
        s = read_dicom_series(mse_dirs, kind="se", name="mse")
        img = s.images[:, :, 0].astype(np.float32)
        f = blocks["phantom"]
        scans["phantom"] = (block_mean(img, None, f), np.asarray(s.protocol.te_ms),
                            np.asarray(s.protocol.tr_ms), block_mean((~s.valid[:, :, 0]).astype(
                                np.float32), None, f) > 0, None)
    mese = data / "invivo" / "mese" / "sub-01_MESE.nii.gz"
    if mese.is_file():
        import nibabel as nib
        img = np.asarray(nib.load(str(mese)).dataobj, np.float32)[:, :, 0]
        side = json.loads((mese.parent / "sub-01_MESE.json").read_text())
        te = np.asarray(side["EchoTime_ms"], np.float32)
        if img.shape[-1] != len(te):
            raise SystemExit(f"{mese}: {img.shape[-1]} echoes but {len(te)} EchoTime_ms in the "
                             "sidecar")
        f = blocks["invivo"]
        mask_path = mese.parent / "sub-01_mask.nii.gz"
        brain = None
        if mask_path.is_file():
            brain = block_mean(np.asarray(nib.load(str(mask_path)).dataobj, np.float32).reshape(
                img.shape[:2]), None, f) >= 0.5
        scans["invivo"] = (block_mean(img, None, f), te, np.full_like(te, invivo_tr),
                           block_mean((img >= CLIP).astype(np.float32), None, f) > 0, brain)
    if not scans:
        raise SystemExit(f"{data}: neither nist_phantom/A/dicom/mse nor invivo/mese found")
    return scans


def load_gan(workdir: pathlib.Path, shape):
    """``(task, state)`` of a GAN workdir, shaped for images ``shape`` (``(X, Y)``, padded to the
    generator's size multiple as :func:`transfer_scan` pads them)."""
    import ml_collections

    from qmri_jax import predict as predict_lib
    from qmri_jax.tasks import create_task
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise SystemExit(f"--workdir {workdir}: no config.json (expected a qmri_jax.main workdir)")
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    n = len(json.loads((workdir / "protocol.json").read_text())["images"])
    m = create_task(config).size_multiple
    padded = tuple(s + (-s) % m for s in shape)
    task, state = predict_lib.load_trained(config, str(workdir), (*padded, n))
    if not hasattr(task, "maps_from"):
        raise SystemExit(f"--workdir {workdir}: its task ({type(task).__name__}) does not "
                         "transfer contrasts (train configs/gan.py)")
    return task, state


def transfer_scan(task, state, images, te, tr, clipped, input_echo: int, brain=None,
                  data_consistency: bool | None = None) -> dict:
    """Per target echo: model / identity / fit metrics (see the module docstring). With a
    ``brain`` mask, the input is skull-stripped with it (the training brains have no skull) and
    the scores are taken inside it instead of the Otsu foreground."""
    import jax.numpy as jnp

    from qmri_jax.evaluation.transfer import foreground, image_metrics
    from qmri_jax.fitting.maps import fit_images
    from qmri_jax.fitting.solver import SolverOptions
    from qmri_jax.physics.protocol import Protocol

    m = task.size_multiple
    nx, ny = images.shape[:2]
    x = images[..., input_echo] * (1.0 if brain is None else brain)
    x = np.pad(x, [(0, (-nx) % m), (0, (-ny) % m)])[None]
    maps = np.asarray(task.maps_from(state, jnp.asarray(x), jnp.asarray([te[input_echo]]),
                                     jnp.asarray([tr[input_echo]]),
                                     data_consistency=data_consistency))[0, :nx, :ny]
    prot = Protocol.create("se", tr_ms=tr, te_ms=te, name="mese")
    fg_any = foreground(images[..., 0])
    scale = float(np.percentile(images[..., 0][fg_any], 99))  # the fit's PD bound is for ~1
    fit = fit_images(images / scale, prot, "t2", mask=fg_any, valid=~clipped,
                     options=SolverOptions(loss="gaussian"), estimate_sigma=False)
    pd_fit = scale * np.nan_to_num(fit.maps["PD"])
    t2_fit = np.nan_to_num(fit.maps["T2"], nan=1.0)
    rows = []
    inp = images[..., input_echo]
    for j in range(images.shape[-1]):
        if j == input_echo:
            continue
        tgt = images[..., j]
        region = foreground(tgt) if brain is None else brain
        mask = region & ~clipped[..., j] & ~clipped[..., input_echo]
        model = maps[..., 0] * (1 - np.exp(-tr[j] / maps[..., 1])) * np.exp(-te[j] / maps[..., 2])
        fitted = pd_fit * np.exp(-te[j] / np.maximum(t2_fit, 1e-3))
        rows.append({"target_te_ms": float(te[j]),
                     "delta_te_ms": float(te[j] - te[input_echo]),
                     "model": image_metrics(model, tgt, mask),
                     "identity": image_metrics(inp, tgt, mask),
                     "fit": image_metrics(fitted, tgt, mask)})
    return {"input_te_ms": float(te[input_echo]), "tr_ms": float(tr[input_echo]), "rows": rows,
            "maps": maps}


def _figure(path, images, res, input_echo):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = res["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    d = [r["target_te_ms"] for r in rows]
    for key, style in (("model", "o-"), ("identity", "s--"), ("fit", "^:")):
        axes[0].plot(d, [r[key]["psnr"] for r in rows], style, label=key)
    axes[0].axvspan(res["input_te_ms"] - 50, res["input_te_ms"] + 50, color="0.9")
    axes[0].set_xlabel("target TE (ms)")
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend()
    axes[0].set_title(f"transfer from TE {res['input_te_ms']:g} ms (grey: within 50 ms)")
    im = axes[1].imshow(res["maps"][..., 2].T, origin="lower", cmap="magma",
                        vmin=0, vmax=np.percentile(res["maps"][..., 2], 99))
    axes[1].set_title("model T2 (ms) from the input echo")
    fig.colorbar(im, ax=axes[1])
    fig.savefig(str(path) + ".tmp.png", dpi=100, bbox_inches="tight")
    pathlib.Path(str(path) + ".tmp.png").replace(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, type=pathlib.Path, help="a configs/gan.py workdir")
    p.add_argument("--data", required=True, type=pathlib.Path, help="the shared data folder")
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--input-echo", type=int, default=0)
    p.add_argument("--invivo-tr", type=float, default=3000.0,
                   help="TR (ms) of the in-vivo series (not in its sidecar)")
    p.add_argument("--data-consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="PD solved from the input given the model's T1 and T2 (GanTask.maps_from;"
                        " default: the workdir's config.gan.data_consistency)")
    p.add_argument("--phantom-block", type=int, default=4, help="block size (pixels), phantom")
    p.add_argument("--invivo-block", type=int, default=2, help="block size (pixels), in vivo")
    args = p.parse_args(argv)
    scans = load_scans(args.data, args.invivo_tr,
                       {"phantom": args.phantom_block, "invivo": args.invivo_block})
    args.out.mkdir(parents=True, exist_ok=True)
    header = ("| scan | input TE | target TE | PSNR model | PSNR identity | PSNR fit | SSIM model "
              "| SSIM identity | NRMSE model | NRMSE identity |")
    results, lines = {}, [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (images, te, tr, clipped, brain) in scans.items():
        task, state = load_gan(args.workdir, images.shape[:2])
        res = transfer_scan(task, state, images, te, tr, clipped, args.input_echo, brain,
                            args.data_consistency)
        _figure(args.out / f"transfer_{name}.png", images, res, args.input_echo)
        far = [r for r in res["rows"] if abs(r["delta_te_ms"]) > 50]
        res["far_targets_beating_identity"] = sum(r["model"]["psnr"] > r["identity"]["psnr"]
                                                  for r in far)
        res["far_targets"] = len(far)
        del res["maps"]
        results[name] = res
        for r in res["rows"]:
            lines.append(f"| {name} | {res['input_te_ms']:g} | {r['target_te_ms']:g} | "
                         f"{r['model']['psnr']:.2f} | {r['identity']['psnr']:.2f} | "
                         f"{r['fit']['psnr']:.2f} | {r['model']['ssim']:.3f} | "
                         f"{r['identity']['ssim']:.3f} | {r['model']['nrmse']:.3f} | "
                         f"{r['identity']['nrmse']:.3f} |")
        print(f"{name}: input TE {res['input_te_ms']:g} ms; model beats identity (PSNR) on "
              f"{res['far_targets_beating_identity']}/{res['far_targets']} target echoes > 50 ms "
              "away")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
