"""A per-voxel look-up table from GE intensity to TSE: the floor a translation network should beat.

  python -m experiments.high_to_low.lut_baseline --out DIR [--split test] [--bins 80]

Two tables are fitted on the training subjects of ``configs/high_to_low.py``'s data, each with
the information its network counterpart has:

* ``lut_high_to_low``: one TSE value per GE-intensity bin, fitted by least squares so that the
  thick slices of the mapped thin-slice GE (the kernel [1/6, 1/3, 1/3, 1/6] of the default) match
  the acquired thick-slice TSE (the High-to-low objective, linear in the table);
* ``lut_low_to_low``: the mean acquired thick-slice TSE per bin of the GE averaged to the thick
  slices.

Both are applied to the thin-slice GE of the ``--split`` subjects and scored like the networks
(:func:`qmri_jax.evaluation.translation.volume_scores`, inside the brain, against the true thin
TSE), alone (``high_res``) and made consistent with the acquired thick slices (one
back-projection step, ``high_res_consistent``). Writes ``DIR/lut_baseline.json``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from configs import high_to_low
from qmri_jax.data import translation as data_lib
from qmri_jax.data.slice_interp import consistent_thin_slices, cubic_thin_slices
from qmri_jax.evaluation.translation import volume_scores
from qmri_jax.tasks.data import data_dir
from qmri_jax.tasks.translation import data_settings

def _bins(x, edges):
    return np.clip(np.digitize(x, edges), 0, len(edges))


def fit_high_to_low(ge, tse_lr, edges, kernel, factor=4, ridge=1e-3):
    """Table ``t [B]`` minimising ``sum (sum_k K_k t[bin(ge[f j + k])] - tse_lr[j])^2``
    (``kernel`` K normalised here, its first tap on the slice's first thin slice)."""
    kernel = np.asarray(kernel, np.float64) / np.sum(kernel)
    nb = len(edges) + 1
    ata, atb = np.zeros((nb, nb)), np.zeros(nb)
    for g, y in zip(ge, tse_lr):
        n = min(y.shape[2], g.shape[2] // factor)
        b = _bins(g, edges)
        rows = np.zeros((g.shape[0] * g.shape[1] * n, nb))
        for k, w in enumerate(kernel):
            idx = b[:, :, k::factor][:, :, :n].reshape(-1)
            np.add.at(rows, (np.arange(idx.size), idx), w)
        ata += rows.T @ rows
        atb += rows.T @ y[:, :, :n].reshape(-1)
    return np.linalg.solve(ata + ridge * np.eye(nb), atb)


def fit_low_to_low(ge_lr, tse_lr, edges):
    """Mean thick-slice TSE per bin of the thick-slice GE (empty bins: 0)."""
    b = _bins(ge_lr, edges).ravel()
    nb = len(edges) + 1
    return np.bincount(b, tse_lr.ravel(), nb) / np.maximum(np.bincount(b, None, nb), 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="test", choices=("validation", "test"))
    ap.add_argument("--bins", type=int, default=80)
    args = ap.parse_args(argv)
    cfg = high_to_low.get_config()
    dcfg = data_settings(cfg)
    builder = data_lib.build(dcfg, data_dir(cfg))
    train, ev = data_lib.load_split(builder, "train"), data_lib.load_split(builder, args.split)
    edges = np.linspace(0.0, 1.6, args.bins - 1)
    f = dcfg.slice_factor
    kernel = np.asarray(cfg.translation.kernel, np.float64)  # the default's, offset 0
    tables = {"lut_high_to_low": fit_high_to_low(train["ge"], train["tse_lr"], edges, kernel, f),
              "lut_low_to_low": fit_low_to_low(train["ge_lr"], train["tse_lr"], edges)}
    out = {}
    for name, table in tables.items():
        rows = {"high_res": [], "high_res_consistent": [], "high_res_interpolation": []}
        for i in range(len(ev["ge"])):
            truth, brain, thick = ev["tse_hr"][i], ev["brain"][i], ev["tse_lr"][i]
            tissues = {t: ev[t][i] for t in ("GM", "WM", "CSF")}
            pred = table[_bins(ev["ge"][i], edges)].astype(np.float32)
            rows["high_res"].append(volume_scores(pred, truth, brain, tissues))
            rows["high_res_consistent"].append(volume_scores(
                consistent_thin_slices(pred, thick, kernel, f), truth, brain, tissues))
            rows["high_res_interpolation"].append(volume_scores(
                cubic_thin_slices(thick, f), truth, brain, tissues))
        out[name] = {sec: {m: float(np.mean([r[m] for r in v])) for m in ("mae", "mi", "ssim")}
                     | {"per_subject": [{m: r[m] for m in ("mae", "mi", "ssim")} for r in v]}
                     for sec, v in rows.items()}
        print(name, {sec: {m: round(v[m], 4) for m in ("mae", "mi", "ssim")}
                     for sec, v in out[name].items()}, flush=True)
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, "lut_baseline.json.tmp")
    with open(tmp, "w") as fh:
        json.dump({"split": args.split, "bins": args.bins, **out}, fh, indent=1)
    os.replace(tmp, os.path.join(args.out, "lut_baseline.json"))


if __name__ == "__main__":
    main()
