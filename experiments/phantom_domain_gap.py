"""Where does a learned model's T1 bias on the real NIST phantom come from? Inference-only probes.

Usage:
  python -m experiments.phantom_domain_gap --data ../shared/nist_phantom/A --checkpoint WORKDIR \
      [--out OUT] [--scales 0.7 0.85 1.15 1.4] [--snr 50] [--seeds 2]

The trained model (any ``qmri_jax.main`` workdir that ``experiments.nist_phantom --checkpoint``
takes) is applied to the real VIR scans several times, each with one change to its input, and the
per-sphere T1 bias against the certified reference (spheres 1-10) is printed for each:

* ``as scanned``: the images as ``experiments.nist_phantom`` gives them (p95 over the spheres);
* ``object p95``: the normalisation's 95th percentile taken over the whole phantom (every voxel whose
  series maximum exceeds 10% of the image's), as it is over the whole brain in training;
* ``scale s``: the normalised series multiplied by ``s``. A model that reads T1 from the *shape*
  of the inversion-recovery curve is unmoved; a model that leans on absolute intensity moves;
* ``SNR n``: Rician noise added so that the series maximum's p95 over the spheres has SNR ``n``
  (training used SNR 50; the scans are nearer 200).

Writes ``OUT/domain_gap.json`` with every row. Nothing is fitted or trained here.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from experiments.nist_phantom import T1_JUDGED, _series_dirs, learned_t1, load_reference
from qmri_jax.evaluation import roi_medians
from qmri_jax.io import read_dicom_series
from qmri_jax.physics.noise import add_rician_noise


def _object_mask(images: np.ndarray) -> np.ndarray:
    """Voxels whose series maximum exceeds 10% of the image's largest: the phantom's body."""
    smax = images.max(axis=-1)
    return smax > 0.1 * smax.max()


def _rician(snr: float, seed: int, sphere_mask: np.ndarray):
    def add(images):
        sigma = np.percentile(images[sphere_mask].max(axis=-1), 95) / snr
        return np.asarray(add_rician_noise(jax.random.key(seed), jnp.asarray(images), sigma))
    return add


def run(data, checkpoint, out=None, scales=(0.7, 0.85, 1.15, 1.4), snr=50.0, seeds=2) -> dict:
    data = pathlib.Path(data)
    ref = load_reference(data, None)
    rois = np.load(data / "rois.npz")
    vir = read_dicom_series(_series_dirs(data, "vir"), kind="ir", name="vir")
    labels = np.asarray(rois["t1_labels"]).T
    mask = labels > 0
    spheres = [k for k in T1_JUDGED if (labels == k).any()]
    reference = np.array([ref[("T1", k)]["T1"] for k in spheres])

    probes = [("as scanned", {}),
              ("object p95", {"norm_mask": _object_mask(vir.images[:, :, 0].astype(np.float32))})]
    probes += [(f"scale {s:g}", {"transform": (lambda s: lambda x: x * s)(s)}) for s in scales]
    if snr:
        probes += [(f"SNR {snr:g} (seed {i})", {"transform": _rician(snr, i, mask)})
                   for i in range(seeds)]
    rows = []
    print(f"{'probe':<22}" + "".join(f"{k:>7d}" for k in spheres) + "   max|bias|")
    print(f"{'reference (ms)':<22}" + "".join(f"{r:7.0f}" for r in reference))
    for name, kw in probes:
        t1 = learned_t1(checkpoint, vir, mask, out, **kw)["T1"]
        est = roi_medians(t1, labels)
        bias = np.array([100.0 * (est[k] - r) / r for k, r in zip(spheres, reference)])
        rows.append({"probe": name, "bias_pct": dict(zip(map(int, spheres), bias.round(2).tolist())),
                     "max_abs_bias_pct": float(np.abs(bias).max())})
        print(f"{name:<22}" + "".join(f"{b:+7.1f}" for b in bias) + f"   {np.abs(bias).max():6.1f}")
    result = {"data": str(data), "checkpoint": str(checkpoint), "spheres": spheres,
              "reference_ms": reference.tolist(), "rows": rows}
    if out is not None:
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "domain_gap.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out / "domain_gap.json")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=pathlib.Path)
    parser.add_argument("--checkpoint", required=True, type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--scales", type=float, nargs="*", default=[0.7, 0.85, 1.15, 1.4])
    parser.add_argument("--snr", type=float, default=50.0, help="0: no noise probe")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    run(args.data, args.checkpoint, args.out, tuple(args.scales), args.snr, args.seeds)


if __name__ == "__main__":
    main()
