"""The High-to-low paper's comparison on synthetic brains: HighResNet vs U-Net, L1 vs L1 + 0.1 MIND,
High-to-low vs low-to-low, several seeds, mean +- SD and paired t-tests.

  python -m experiments.high_to_low.run --out DIR [--seeds 0 1] [--steps 300]
      [--conditions hr_net unet hr_net+mind unet+mind low_to_low low_to_low+unet]

Each condition is ``configs/high_to_low.py:<preset>`` trained with ``qmri_jax.train`` in
``DIR/<condition>_seed<k>`` (an existing finished run is reused), evaluated on the same test
subjects. ``DIR/results.json`` holds every run's scores; ``DIR/table.md`` the table: per section
(low_res: thick slices against the acquired TSE, what the paper measured; high_res: thin slices
against the true TSE, what it could not; high_res_consistent: the same made consistent with the
acquired thick slices; high_res_interpolation: cubic interpolation) MAE, MI and SSIM as mean +- SD over seeds x test subjects, and paired t-tests (over seeds x subjects) of
High-to-low against low-to-low, of L1 + MIND against L1 and of each condition's thin slices
against interpolation.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from scipy import stats

SECTIONS = ("low_res", "high_res", "high_res_consistent", "high_res_interpolation")
METRICS = ("mae", "mi", "ssim")
DEFAULT_CONDITIONS = ("hr_net", "unet", "hr_net+mind", "unet+mind", "low_to_low",
                      "low_to_low+unet")


def run_condition(condition: str, seed: int, out: str, steps: int | None) -> dict:
    """Train and evaluate one condition (or read its finished run)."""
    from configs import high_to_low
    wd = os.path.join(out, f"{condition}_seed{seed}")
    done = os.path.join(wd, "eval", "metrics.json")
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    from qmri_jax import train
    cfg = high_to_low.get_config(condition)
    with cfg.unlocked():
        cfg.seed = seed
        cfg.train.progress_bar = False
        if steps:
            cfg.train.num_steps = steps
            lo, hi = cfg.translation.kernel_learn_steps
            if hi:
                cfg.translation.kernel_learn_steps = (max(0, steps - (hi - lo)), steps)
    return train.train_and_evaluate(cfg, wd)[1]


def _pairs(results, a, b, section, metric, section_b=None):
    """Per (seed, subject) values of conditions ``a`` and ``b`` (paired; ``b``'s section
    ``section_b``, default the same)."""
    xa, xb = [], []
    for seed in sorted(set(results[a]) & set(results[b])):
        xa += [r[metric] for r in results[a][seed][section]["per_subject"]]
        xb += [r[metric] for r in results[b][seed][section_b or section]["per_subject"]]
    return np.asarray(xa), np.asarray(xb)


def table(results: dict) -> str:
    """The markdown table of ``{condition: {seed: metrics}}``."""
    lines = ["| condition | section | MAE | MI | SSIM |", "|---|---|---|---|---|"]
    for cond, runs in results.items():
        for section in SECTIONS:
            if not all(section in run for run in runs.values()):
                continue  # e.g. high_res_consistent of a run with consistency = 0
            vals = {m: [r[m] for run in runs.values() for r in run[section]["per_subject"]]
                    for m in METRICS}
            cells = [f"{np.mean(v):.4f} +- {np.std(v):.4f}" for v in vals.values()]
            lines.append(f"| {cond} | {section} | " + " | ".join(cells) + " |")
    pairs = [(a, b, sec, None) for a, b in (
        ("hr_net", "low_to_low"), ("unet", "low_to_low+unet"), ("hr_net+mind", "hr_net"),
        ("unet+mind", "unet"), ("unet", "hr_net"))
        for sec in ("low_res", "high_res", "high_res_consistent")]
    pairs += [(a, a, sec, "high_res_interpolation") for a in results
              for sec in ("high_res", "high_res_consistent")]  # each condition against interpolation
    tests = []
    for a, b, section, section_b in pairs:
        if a not in results or b not in results or not all(
                section in run for run in results[a].values()) or not all(
                (section_b or section) in run for run in results[b].values()):
            continue
        for m in METRICS:
            xa, xb = _pairs(results, a, b, section, m, section_b)
            if len(xa) < 2:
                continue
            t, p = stats.ttest_rel(xa, xb)
            name = f"{a} vs {b}" if section_b is None else f"{a} vs interpolation"
            tests.append(f"| {name} | {section} | {m.upper()} | {np.mean(xa - xb):+.4f} "
                         f"| {t:.2f} | {p:.3g} | {len(xa)} |")
    if tests:
        lines += ["", "| paired t-test | section | metric | mean difference (a - b) | t | p | n |",
                  "|---|---|---|---|---|---|---|", *tests]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    ap.add_argument("--conditions", nargs="+", default=list(DEFAULT_CONDITIONS))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for cond in args.conditions:
        for seed in args.seeds:
            print(f"== {cond} seed {seed}", flush=True)
            results.setdefault(cond, {})[seed] = run_condition(cond, seed, args.out, args.steps)
    md = table(results)
    for name, text in (("results.json", json.dumps(results, indent=1)), ("table.md", md)):
        tmp = os.path.join(args.out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(args.out, name))
    print(md)


if __name__ == "__main__":
    main()
