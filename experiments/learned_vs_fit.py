"""Voxelwise NLLS fit on the same synthetic test split a learned model is evaluated on.

The four-contrast brain protocol (T1w SE, T2w SE, PDw SE, FLAIR) has one image per contrast: the
``joint`` model fits PD, T1, T2 to all four by Gaussian NLLS (noise-free data) or Rician MLE
(``--snr``), voxel by voxel, with the same masks and metrics as ``WORKDIR/eval/metrics.json``.

  python -m experiments.learned_vs_fit --config configs/uattennet.py --out DIR [--snr 30]
      [--set data.num_subjects=24 ...]   (the trained run's data overrides: same test split)

Writes ``DIR/metrics.json`` (same schema) and prints the median |% error| per map; when
``--workdir`` names a trained run it prints that run's numbers beside.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

import numpy as np


def _load_config(path):
    """``configs/x.py`` or ``configs/x.py:preset`` (as ``qmri_jax.main --config``)."""
    path, _, preset = str(path).partition(":")
    spec = importlib.util.spec_from_file_location("cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(preset) if preset else mod.get_config()


def _apply_override(cfg, item: str):
    """``data.num_subjects=24`` -> cfg.data.num_subjects = 24 (value parsed as a Python literal)."""
    import ast
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. data.num_subjects=24")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[p]
    if parts[-1] not in node:
        raise SystemExit(f"--set {item!r}: the config has no field {key!r}")
    node[parts[-1]] = type(node[parts[-1]])(parsed) if isinstance(node[parts[-1]], float) else parsed


def run(config, out_dir, workdir=None):
    from qmri_jax.evaluation import report
    from qmri_jax.fitting.maps import fit_images
    from qmri_jax.fitting.solver import SolverOptions
    from qmri_jax.physics.protocol import get_protocol
    from qmri_jax.tasks.data import load_data

    data = load_data(config)
    test = data["test"]
    prot = get_protocol(config.data.protocol)
    noisy = np.isfinite(float(config.data.snr))
    sigma = 1.0 / float(config.data.snr) if noisy else 1e-3
    res = fit_images(test["images"], prot, "joint", mask=test["mask"].astype(bool), sigma=sigma,
                     options=SolverOptions(loss="rician" if noisy else "gaussian", max_iter=30),
                     estimate_sigma=False)
    pred = np.stack([np.nan_to_num(res.maps[t]) for t in config.targets], axis=-1)
    metrics = report.write_report(out_dir, pred, test, config.targets, figures=False,
                                  extra={"method": "voxelwise NLLS (joint PD/T1/T2)",
                                         "converged_fraction": float(res.converged[
                                             res.mask].mean())})
    if workdir:
        with open(os.path.join(workdir, "eval", "metrics.json")) as f:
            learned = json.load(f)
        print("map  learned  NLLS   (median |% error|, brain, test split)")
        for t in config.targets:
            print(f"{t:4s} {learned[t]['median_abs_pct']:7.2f} {metrics[t]['median_abs_pct']:6.2f}")
    return metrics


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/uattennet.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--snr", type=float, default=None)
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--workdir", default=None, help="a trained run to print beside")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override as in qmri_jax.main (--set data.num_subjects=24); "
                         "repeat; use the trained run's data settings so the test split matches")
    args = ap.parse_args()
    cfg = _load_config(args.config)
    with cfg.unlocked():
        for item in args.set:
            _apply_override(cfg, item)
        if args.snr is not None:
            cfg.data.snr = args.snr
        if args.data_dir:
            cfg.data.data_dir = args.data_dir
    run(cfg, args.out, args.workdir)


if __name__ == "__main__":
    main()
