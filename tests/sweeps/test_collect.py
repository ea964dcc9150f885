"""Collecting a sweep: one row per grid point with mean +- SD over repeats, the best point per
group, paired t-tests against scipy, failed and unfinished trials listed (trials written by hand)."""

import csv
import json
import os

import numpy as np
import pytest
from scipy import stats

from qmri_jax.sweeps import Sweep, grid, repeats
from qmri_jax.sweeps.collect import collect, flatten
from qmri_jax.sweeps.runner import STATUS_FILE, write_json

RNG = np.random.default_rng(0)


def _fake_sweep(tmp_path):
    sweep = Sweep(name="fake", config="configs/unet.py",
                  axes=[grid({"model.name": ["unet", "resnet"], "train.loss": ["mae", "mse"]}),
                        repeats(3)],
                  metrics=("T1.median_abs_pct", "PD.psnr"), higher_is_better=("PD.psnr",),
                  compare="model.name")
    sweep_dir = tmp_path / "fake"
    sweep_dir.mkdir()
    write_json(str(sweep_dir / "sweep.json"), sweep.meta("/x/configs/unet.py", "s.py"))
    values = {}
    for t in sweep.trials():
        wd = sweep_dir / t.name
        (wd / "eval").mkdir(parents=True)
        if t.point == {"model.name": "resnet", "train.loss": "mse"} and t.repeat["seed"] == 2:
            write_json(str(wd / STATUS_FILE), {"state": "failed", "attempts": 1,
                                               "error": "Traceback\nValueError: boom"})
            continue
        t1 = 3.0 + (1.0 if t.point["model.name"] == "resnet" else 0.0) + RNG.normal(0, 0.3)
        psnr = 30.0 + RNG.normal(0, 1)
        values[t.name] = (t1, psnr)
        write_json(str(wd / "eval" / "metrics.json"),
                   {"T1": {"median_abs_pct": t1, "by_tissue": {"WM": {"rmse": 1.0}},
                           "roi": {"label": ["a"]}}, "PD": {"psnr": psnr}})
        write_json(str(wd / STATUS_FILE), {"state": "done", "attempts": 1})
    return sweep, sweep_dir, values


def test_flatten_keeps_scalars_only():
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": {"e": 2.5}}, "f": True, "g": "x"}) == {
        "a.b": 1.0, "a.d.e": 2.5}


def test_tables_tests_and_failures(tmp_path):
    sweep, sweep_dir, values = _fake_sweep(tmp_path)
    summary = collect(str(sweep_dir))
    rows = list(csv.DictReader(open(sweep_dir / "results.csv")))
    assert len(rows) == 4  # one per grid point
    for t_point, row in zip([{"model.name": n, "train.loss": lo} for n in ("unet", "resnet")
                             for lo in ("mae", "mse")], rows):
        names = [t.name for t in sweep.trials() if t.point == t_point and t.name in values]
        t1 = [values[n][0] for n in names]
        assert row["model.name"] == t_point["model.name"] and int(row["done"]) == len(names)
        assert float(row["T1.median_abs_pct_mean"]) == pytest.approx(np.mean(t1))
        assert float(row["T1.median_abs_pct_sd"]) == pytest.approx(np.std(t1, ddof=1))
    assert rows[3]["done"] == "2" and rows[3]["trials"] == "3"
    assert summary["states"] == {"done": 11, "failed": 1}
    # Paired test: unet vs resnet over (loss, seed) pairs present on both sides (5 pairs).
    pairs = [(values[a.name][0], values[b.name][0]) for a in sweep.trials()
             for b in sweep.trials() if a.point["model.name"] == "unet"
             and b.point["model.name"] == "resnet" and a.point["train.loss"] == b.point[
                 "train.loss"] and a.repeat == b.repeat and b.name in values]
    ref = stats.ttest_rel([p[0] for p in pairs], [p[1] for p in pairs])
    t = summary["tests"]["T1.median_abs_pct"][0]
    assert (t["a"], t["b"], t["n"]) == ("unet", "resnet", 5)
    assert t["t"] == pytest.approx(ref.statistic) and t["p"] == pytest.approx(ref.pvalue)
    md = open(sweep_dir / "results.md").read()
    assert "| unet | mae | 3/3 |" in md
    assert "`name=resnet_loss=mse_seed=2`: ValueError: boom" in md and "--retry-failed" in md
    # Best point per network on the first metric (lower is better).
    best_unet = min((p for p in summary["points"] if p["point"]["model.name"] == "unet"),
                    key=lambda p: p["stats"]["T1.median_abs_pct"][0])
    assert f"- model.name=unet: train.loss={best_unet['point']['train.loss']}:" in md
    trials = list(csv.DictReader(open(sweep_dir / "trials.csv")))
    assert len(trials) == 12 and "T1.by_tissue.WM.rmse" in trials[0]
    assert os.path.isfile(sweep_dir / "T1.median_abs_pct.png")


def test_unfinished_trials_are_listed_and_missing_sweep_json_is_explained(tmp_path):
    sweep, sweep_dir, _ = _fake_sweep(tmp_path)
    t = sweep.trials()[0]
    write_json(str(sweep_dir / t.name / STATUS_FILE), {"state": "preempted", "attempts": 1})
    collect(str(sweep_dir), figures=False)
    assert f"Not finished (1): `{t.name}`" in open(sweep_dir / "results.md").read()
    with pytest.raises(FileNotFoundError, match="OUT/<sweep name>"):
        collect(str(tmp_path))
    json.dumps(sweep.meta("c", "s"))  # JSON-able


def test_roi_rows_are_pooled_over_folds_per_region(tmp_path):
    from qmri_jax.sweeps import folds
    sweep = Sweep(name="cv", config="configs/unet.py", axes=[folds(3)],
                  metrics=("T1.median_abs_pct",), roi=("T1.roi_eroded",))
    sweep_dir = tmp_path / "cv"
    sweep_dir.mkdir()
    write_json(str(sweep_dir / "sweep.json"), sweep.meta("/x/configs/unet.py", "s.py"))
    pooled = {"GM": ([], []), "putamen": ([], [])}
    for i, t in enumerate(sweep.trials()):
        wd = sweep_dir / t.name
        (wd / "eval").mkdir(parents=True)
        measured, reference, label = [], [], []
        for s in (2 * i, 2 * i + 1):  # two test subjects per fold
            for region, ref in (("GM", 1400.0), ("putamen", 1150.0)):
                m = ref * (1 + RNG.normal(0.02, 0.03))
                measured.append(m)
                reference.append(ref)
                label.append(f"sub{s}-{region}")
                pooled[region][0].append(m)
                pooled[region][1].append(ref)
        write_json(str(wd / "eval" / "metrics.json"), {"T1": {
            "median_abs_pct": 3.0, "roi_eroded": {"measured": measured, "reference": reference,
                                                  "label": label}}})
        write_json(str(wd / STATUS_FILE), {"state": "done", "attempts": 1})
    collect(str(sweep_dir), figures=False)
    rows = {r["region"]: r for r in csv.DictReader(open(sweep_dir / "roi.csv"))}
    assert set(rows) == {"GM", "putamen"}
    for region, (m, r) in pooled.items():
        pct = 100 * (np.array(m) - r) / np.array(r)
        ref = stats.ttest_rel(m, r)
        row = rows[region]
        assert int(row["n"]) == 6 and row["roi"] == "T1.roi_eroded"
        assert float(row["bias_pct"]) == pytest.approx(pct.mean())
        assert float(row["loa_pct_high"]) == pytest.approx(pct.mean() + 1.96 * pct.std(ddof=1))
        assert float(row["t"]) == pytest.approx(ref.statistic)
        assert float(row["p"]) == pytest.approx(ref.pvalue)
    assert "| T1.roi_eroded | putamen | 6 |" in open(sweep_dir / "results.md").read()


def test_keys_zipped_with_the_compared_one_do_not_split_the_pairs(tmp_path):
    from qmri_jax.sweeps import zip_axes
    sweep = Sweep(name="dims", config="configs/unet.py",
                  axes=[zip_axes({"data.dims": [2, 3], "train.crop": [(), (8, 8, 8)]}),
                        repeats(3)], metrics=("T1.median_abs_pct",), compare="data.dims")
    sweep_dir = tmp_path / "dims"
    sweep_dir.mkdir()
    write_json(str(sweep_dir / "sweep.json"), sweep.meta("/x/configs/unet.py", "s.py"))
    vals = {}
    for t in sweep.trials():
        wd = sweep_dir / t.name
        (wd / "eval").mkdir(parents=True)
        vals[(t.point["data.dims"], t.repeat["seed"])] = v = float(RNG.normal(5, 1))
        write_json(str(wd / "eval" / "metrics.json"), {"T1": {"median_abs_pct": v}})
        write_json(str(wd / STATUS_FILE), {"state": "done", "attempts": 1})
    t = collect(str(sweep_dir), figures=False)["tests"]["T1.median_abs_pct"][0]
    ref = stats.ttest_rel([vals[(2, s)] for s in range(3)], [vals[(3, s)] for s in range(3)])
    assert t["n"] == 3 and t["t"] == pytest.approx(ref.statistic)
