"""DDIM with few steps against 1000-step ancestral DDPM, on the same trained qMRI Diffusor and the
same test-split slices.

  python -m experiments.ddim_vs_ddpm --workdir DIR [--slices 8] [--num-samples 10]
      [--ddim-steps 50] [--out DIR/eval_samplers]

``DIR`` is a ``qmri_jax.main --config=configs/ddpm.py`` workdir (its ``config.json`` and
checkpoint are used; the data is rebuilt or read from the TFDS cache). Both samplers draw
``--num-samples`` posterior samples per slice; the posterior mean is the estimate. Prints, per map,
the median |% error| (brain) of each sampler, their difference in percentage points, both
samplers' wall time, and writes ``OUT/samplers.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np


def run(workdir, slices, num_samples, ddim_steps, out):
    import ml_collections

    from qmri_jax import predict
    from qmri_jax.evaluation import report
    from qmri_jax.evaluation.uncertainty import uncertainty_metrics
    from qmri_jax.tasks import TASKS
    from qmri_jax.tasks.data import load_data
    from qmri_jax.io import write_json

    workdir = pathlib.Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise SystemExit(f"--workdir {workdir}: no config.json (expected a qmri_jax.main workdir)")
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    if not hasattr(TASKS.get(config.get("task", "regression")), "sample_split"):
        raise SystemExit(f"--workdir {workdir}: config.task is {config.get('task')!r}, which "
                         "has no posterior sampler (expected a DDPM workdir)")
    with config.unlocked():
        config.ddpm.eval_slices = slices
        config.ddpm.eval_batch = min(int(config.ddpm.eval_batch), slices)  # no padded slices
    data = load_data(config)
    task, state = predict.load_trained(config, str(workdir), data["test"]["images"].shape[1:])
    sub = task.eval_subset(data["test"])
    names = tuple(config.targets)
    results = {"workdir": str(workdir), "num_slices": int(len(sub["images"])),
               "num_samples": num_samples, "samplers": {}}
    runs = [("ddim", ddim_steps), ("ddpm", int(config.ddpm.num_steps))]  # ancestral: all T steps
    for kind, steps in runs:
        t = time.perf_counter()
        mean, std = task.sample_split(state, sub, sampler=kind, steps=steps,
                                      num_samples=num_samples, key=0)
        wall = time.perf_counter() - t
        m = report.evaluate_maps(mean, sub, names)
        unc = uncertainty_metrics(mean, std, sub, names)
        results["samplers"][f"{kind}{steps}"] = {
            "kind": kind, "steps": steps, "wall_s": wall, "uncertainty": unc,
            **{n: {"median_abs_pct": m[n]["median_abs_pct"], "mean_abs_pct": m[n]["mean_abs_pct"],
                   "median_std": float(np.median(std[..., c][sub["mask"].astype(bool)]))}
               for c, n in enumerate(names)}}
        print(f"{kind}-{steps}: {wall:.1f} s, median |%| "
              + ", ".join(f"{n} {m[n]['median_abs_pct']:.2f}" for n in names)
              + f"; {names[0]} Spearman(std, |err|) {unc['spearman_std_abs_err']:.3f}, "
              f"coverage {unc['coverage_2sigma']:.3f}", flush=True)
    a, b = (results["samplers"][f"{k}{s}"] for k, s in runs)
    results["difference_pp"] = {n: a[n]["median_abs_pct"] - b[n]["median_abs_pct"] for n in names}
    print("DDIM - DDPM (percentage points): "
          + ", ".join(f"{n} {v:+.2f}" for n, v in results["difference_pp"].items()))
    out = pathlib.Path(out or workdir / "eval_samplers")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "samplers.json", results)
    print(f"outputs: {out / 'samplers.json'}")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--num-samples", type=int, default=10)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    run(args.workdir, args.slices, args.num_samples, args.ddim_steps, args.out)


if __name__ == "__main__":
    main()
