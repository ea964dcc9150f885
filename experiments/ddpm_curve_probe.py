"""A trained VIR-protocol DDPM on ideal inversion-recovery curves: T1 and k read back per grid cell.

Usage:
  python -m experiments.ddpm_curve_probe --checkpoint WORKDIR [--snr 0] [--reps 16]

Voxels with T1 on a grid (100-1900 ms) and inversion efficiency k in 0.85-1.15 (PD 0.8, no T2
weighting) are simulated with the training signal model for the checkpoint's protocol, optionally
given Rician noise at ``--snr`` (0: none), normalised like the training data (p95 of the series
maximum) and sampled with the checkpoint's posterior sampler. Printed per cell: the median T1 bias
(%) of the posterior mean and of the voxelwise least-squares fit, then the k each reads. On
noise-free curves the fit is exact, so any model bias there is the prior the model learned from
its training voxels (e.g. shrinkage toward white and grey matter). Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from qmri_jax import predict as predict_lib
from qmri_jax.diffusion.conditioning import condition_images
from qmri_jax.physics.noise import add_rician_noise
from qmri_jax.physics.protocol import get_protocol, simulate
from qmri_jax.physics.units import unscale_maps

T1_GRID = (100, 125, 150, 175, 200, 250, 350, 500, 700, 1000, 1400, 1900)  # ms
K_GRID = (0.85, 0.95, 1.0, 1.05, 1.1, 1.15)


def run(checkpoint, snr=0.0, reps=16) -> dict:
    wd = pathlib.Path(checkpoint)
    if not (wd / "config.json").is_file():
        raise SystemExit(f"--checkpoint {wd}: no config.json (expected a qmri_jax.main workdir)")
    config = ml_collections.ConfigDict(json.loads((wd / "config.json").read_text()))
    if "T1" not in config.targets:
        raise SystemExit(f"--checkpoint {wd}: targets {tuple(config.targets)}; expected a T1 "
                         "target")
    prot = get_protocol(config.data.protocol)
    t1s, ks = np.asarray(T1_GRID, np.float32), np.asarray(K_GRID, np.float32)
    shape = (len(t1s), len(ks) * reps)
    t1 = np.repeat(np.repeat(t1s[:, None], len(ks), 1), reps, 1)
    k = np.repeat(np.repeat(ks[None, :], len(t1s), 0), reps, 1)
    maps = {"PD": jnp.full(shape, 0.8), "T1": jnp.asarray(t1), "T2": jnp.full(shape, 1e6),
            "k": jnp.asarray(k)}
    img = np.asarray(simulate(maps, prot), np.float32)
    if snr:
        sigma = np.percentile(img.max(-1), 95) / snr
        img = np.asarray(add_rician_noise(jax.random.key(0), jnp.asarray(img), sigma))
    scale = np.percentile(img.max(-1), 95)
    img = img / scale
    task, state = predict_lib.load_trained(config, str(wd), (16, 16, img.shape[-1]),
                                           prefer_best=False)
    names = list(config.targets)
    # a noise-conditioned model is told the noise SD in the normalised units (noise-free curves:
    # SNR 1000, the low end of its training range)
    kw = {"sigma": float(sigma / scale if snr else 1e-3)} if getattr(task, "noise", False) else {}
    mean = np.asarray(jax.jit(lambda x, k: task.predict(state, x, k, **kw))(
        jnp.asarray(img[None]), jax.random.key(0))["mean"])
    cond = condition_images(jnp.asarray(img[None]), "fit", prot)[..., -3:]
    fit = np.asarray(unscale_maps(cond, ("PD", "T1", "k")))[0]
    cells = lambda a: a.reshape(len(t1s), len(ks), reps)
    m_t1, f_t1 = cells(mean[0, ..., names.index("T1")]), cells(fit[..., 1])
    m_k = cells(mean[0, ..., names.index("k")]) if "k" in names else None
    f_k = cells(fit[..., 2])
    rows = []
    print(f"T1 bias % (model / fit); columns k = {' '.join(f'{v:g}' for v in ks)}")
    for i, t in enumerate(t1s):
        mb = [100 * (float(np.median(m_t1[i, j])) - t) / t for j in range(len(ks))]
        fb = [100 * (float(np.median(f_t1[i, j])) - t) / t for j in range(len(ks))]
        rows.append({"T1": float(t), "model_bias_pct": mb, "fit_bias_pct": fb})
        print(f"{t:6.0f} " + " ".join(f"{a:+6.1f}/{b:+5.1f}" for a, b in zip(mb, fb)))
    if m_k is not None:
        print("k read back (model / fit):")
        for i, t in enumerate(t1s):
            print(f"{t:6.0f} " + " ".join(f"{np.median(m_k[i, j]):.3f}/{np.median(f_k[i, j]):.3f}"
                                          for j in range(len(ks))))
    return {"k": ks.tolist(), "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=pathlib.Path)
    parser.add_argument("--snr", type=float, default=0.0, help="Rician noise SNR; 0: none")
    parser.add_argument("--reps", type=int, default=16, help="voxels per grid cell")
    args = parser.parse_args(argv)
    run(args.checkpoint, args.snr, args.reps)


if __name__ == "__main__":
    main()
