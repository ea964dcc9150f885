"""Collect a sweep's results: one table row per grid point (mean +- SD over repeats/folds).

Reads ``<sweep dir>/sweep.json`` (written when the sweep is launched) and each trial's
``eval/metrics.json`` and ``sweep_status.json``; writes (each atomically)

- ``trials.csv``: one row per trial: state, axis values, every scalar of its metrics (dotted);
- ``results.csv``: one row per grid point: axis values, trials done / in total, mean and SD of
  each main metric;
- ``results.md``: the same table (mean +- SD), the best point per group, paired t-tests between
  the values of the ``compare`` axis, the ROI agreement pooled over each point's trials (the
  sweep's ``roi``), and the failed trials with their errors;
- ``roi.csv``: that ROI agreement, one row per grid point, ROI path and region;
- ``<metric>.png``: each main metric per grid point (mean, SD bars, every repeat as a dot).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile

import numpy as np

from qmri_jax.io.nifti import write_text
from qmri_jax.sweeps import runner

__all__ = ["collect", "flatten", "load_trials", "pooled_roi"]


def flatten(d: dict, prefix: str = "") -> dict:
    """Scalar leaves of a nested dict as ``{"a.b.c": value}`` (lists left out)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def load_trials(sweep_dir: str) -> tuple[dict, list[dict]]:
    """``(sweep.json, [trial dicts with "state", "status" and "metrics"])``."""
    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--collect: {path} not found (is --out the sweep's folder, "
                                "OUT/<sweep name>?)")
    with open(path) as f:
        meta = json.load(f)
    rows = []
    for t in meta["trials"]:
        workdir = os.path.join(sweep_dir, t["name"])
        status = runner.read_status(workdir)
        metrics, rois = {}, {}
        mpath = os.path.join(workdir, "eval", "metrics.json")
        if status["state"] == "done" and os.path.isfile(mpath):
            with open(mpath) as f:
                raw = json.load(f)
            metrics = flatten(raw)
            rois = {path: _lookup(raw, path) for path in meta.get("roi", [])}
        rows.append({**t, "state": status["state"], "status": status, "metrics": metrics,
                     "rois": rois})
    return meta, rows


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def pooled_roi(trials: list, path: str) -> dict:
    """The ROI rows at ``path`` of ``trials`` pooled per region (the label's part after the last
    ``-``): ``{region: {"n", "bias", "loa_low", "loa_high", "bias_pct", "loa_pct_low",
    "loa_pct_high", "t", "p"}}`` (Bland-Altman of measured - reference; paired t-test)."""
    from scipy import stats

    from qmri_jax.evaluation.metrics import bland_altman

    by: dict = {}
    for t in trials:
        roi = (t.get("rois") or {}).get(path)
        if not roi:
            continue
        for m, r, label in zip(roi["measured"], roi["reference"], roi["label"]):
            a, b = by.setdefault(str(label).rsplit("-", 1)[-1], ([], []))
            a.append(float(m))
            b.append(float(r))
    out = {}
    for region, (a, b) in by.items():
        entry = {**bland_altman(a, b), "t": float("nan"), "p": float("nan")}
        d = np.subtract(a, b)
        if len(a) >= 2 and np.ptp(d) > 1e-9 * np.max(np.abs(d)):
            res = stats.ttest_rel(a, b)
            entry["t"], entry["p"] = float(res.statistic), float(res.pvalue)
        out[region] = entry
    return out


def _csv(header: list, rows: list) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _fmt(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "nan"
    return f"{x:.4g}"


def _key(d: dict, keys: list) -> tuple:
    return tuple(json.dumps(d.get(k), sort_keys=True) for k in keys)


def _points(meta: dict, rows: list) -> list[dict]:
    """Grid points in sweep order, each with its trials."""
    keys = meta["point_keys"]
    order, groups = [], {}
    for r in rows:
        k = _key(r["point"], keys)
        if k not in groups:
            order.append(k)
            groups[k] = {"point": r["point"], "trials": []}
        groups[k]["trials"].append(r)
    return [groups[k] for k in order]


def _stats(trials: list, metric: str) -> tuple[float, float, list]:
    vals = [t["metrics"][metric] for t in trials if metric in t["metrics"]]
    if not vals:
        return float("nan"), float("nan"), []
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    return float(np.mean(vals)), sd, vals


def _paired_tests(meta: dict, rows: list, metric: str) -> list[dict]:
    """Paired t-tests between each two values of ``compare``, pairing trials that agree on every
    other axis (point and repeat). Keys that change together with ``compare`` (one value per
    value of it, as the other keys of a :func:`~qmri_jax.sweeps.zip_axes` axis) are part of what
    is compared, not of the pairing."""
    from scipy import stats

    cmp_key = meta["compare"]
    tied = set()
    for k in meta["point_keys"]:
        seen: dict = {}
        for r in rows:
            seen.setdefault(json.dumps(r["point"].get(cmp_key)), set()).add(
                json.dumps(r["point"].get(k)))
        if all(len(v) == 1 for v in seen.values()):
            tied.add(k)
    others = [k for k in meta["point_keys"] if k != cmp_key and k not in tied] + \
        meta["repeat_keys"]
    by_value: dict = {}
    for r in rows:
        if metric in r["metrics"]:
            v = json.dumps(r["point"].get(cmp_key))
            by_value.setdefault(v, {})[_key({**r["point"], **r["repeat"]}, others)] = \
                r["metrics"][metric]
    values = list(dict.fromkeys(json.dumps(r["point"].get(cmp_key)) for r in rows))
    out = []
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            common = sorted(set(by_value.get(a, {})) & set(by_value.get(b, {})))
            xa = np.array([by_value[a][c] for c in common])
            xb = np.array([by_value[b][c] for c in common])
            entry = {"a": json.loads(a), "b": json.loads(b), "n": len(common),
                     "mean_diff": float(np.mean(xa - xb)) if common else float("nan"),
                     "t": float("nan"), "p": float("nan")}
            if len(common) >= 2 and np.any(xa != xb):
                res = stats.ttest_rel(xa, xb)
                entry["t"], entry["p"] = float(res.statistic), float(res.pvalue)
            out.append(entry)
    return out


def _figure(path: str, points: list, metric: str, keys: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [", ".join(f"{k.rsplit('.', 1)[-1]}={p['point'].get(k)}" for k in keys)
              for p in points]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(points) + 1.2))
    for i, p in enumerate(points):
        mean, sd, vals = _stats(p["trials"], metric)
        if vals:
            ax.errorbar([mean], [i], xerr=[0 if math.isnan(sd) else sd], fmt="o", color="C0",
                        capsize=3)
            ax.plot(vals, [i] * len(vals), ".", color="0.5", ms=4)
    ax.set_yticks(range(len(points)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def collect(sweep_dir: str, figures: bool = True) -> dict:
    """Write the tables (and figures) of the sweep in ``sweep_dir``; returns a summary dict
    ``{"points": [...], "states": {state: count}, "tests": {metric: [...]}}``."""
    meta, rows = load_trials(sweep_dir)
    keys, metrics = meta["point_keys"], list(meta["metrics"])
    if not metrics:  # no main metric declared: every scalar the trials share
        common = [set(r["metrics"]) for r in rows if r["metrics"]]
        metrics = sorted(set.intersection(*common)) if common else []
    points = _points(meta, rows)

    all_metrics = sorted({m for r in rows for m in r["metrics"]})
    trial_rows = [[r["name"], r["state"], *(json.dumps(r["point"].get(k)) for k in keys),
                   *(json.dumps(r["repeat"].get(k)) for k in meta["repeat_keys"]),
                   *(r["metrics"].get(m, "") for m in all_metrics)] for r in rows]
    write_text(os.path.join(sweep_dir, "trials.csv"),
                _csv(["trial", "state", *keys, *meta["repeat_keys"], *all_metrics], trial_rows))

    summary_points, csv_rows = [], []
    for p in points:
        done = sum(t["state"] == "done" for t in p["trials"])
        stats_ = {m: _stats(p["trials"], m)[:2] for m in metrics}
        summary_points.append({"point": p["point"], "done": done, "trials": len(p["trials"]),
                               "stats": stats_})
        csv_rows.append([*(p["point"].get(k) for k in keys), done, len(p["trials"]),
                         *(x for m in metrics for x in stats_[m])])
    header = [*keys, "done", "trials", *(f"{m}_{s}" for m in metrics for s in ("mean", "sd"))]
    write_text(os.path.join(sweep_dir, "results.csv"), _csv(header, csv_rows))

    states: dict = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    md = [f"# Sweep `{meta['name']}`", ""]
    if meta.get("description"):
        md += [meta["description"], ""]
    md += [f"Config `{meta['config']}`; {len(rows)} trials: "
           + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
           + f". Mean +- SD over {', '.join(meta['repeat_keys']) or 'one trial'} per grid point.",
           ""]
    md += ["| " + " | ".join([*keys, "done", *metrics]) + " |",
           "|" + "---|" * (len(keys) + 1 + len(metrics))]
    for sp in summary_points:
        cells = [str(sp["point"].get(k)) for k in keys] + [f"{sp['done']}/{sp['trials']}"]
        cells += [f"{_fmt(sp['stats'][m][0])} +- {_fmt(sp['stats'][m][1])}" for m in metrics]
        md.append("| " + " | ".join(cells) + " |")
    higher = set(meta.get("higher_is_better", []))
    group = meta.get("group") or meta.get("compare")
    if metrics and group and [k for k in keys if k != group]:  # else each group is one point
        m0 = metrics[0]
        sign = -1 if m0 in higher else 1
        better = "higher" if sign < 0 else "lower"
        md += ["", f"Best point per `{group}` ({m0}, {better} is better):", ""]
        best: dict = {}
        for sp in summary_points:
            v, g = sp["stats"][m0][0], json.dumps(sp["point"].get(group))
            if math.isfinite(v) and (g not in best or sign * v < sign * best[g]["stats"][m0][0]):
                best[g] = sp
        for g, sp in best.items():
            others = ", ".join(f"{k}={sp['point'].get(k)}" for k in keys if k != group)
            md.append(f"- {group}={json.loads(g)}: {others or '(only point)'}: "
                      f"{_fmt(sp['stats'][m0][0])} +- {_fmt(sp['stats'][m0][1])}")
    tests = {}
    if meta.get("compare") and metrics:
        md += ["", (f"Paired t-tests between values of `{meta['compare']}` (pairs agree on "
                    "every other axis and repeat; mean difference a - b):"), "",
               "| metric | a | b | pairs | mean diff | t | p |", "|---|---|---|---|---|---|---|"]
        for m in metrics:
            tests[m] = _paired_tests(meta, rows, m)
            for t in tests[m]:
                md.append(f"| {m} | {t['a']} | {t['b']} | {t['n']} | {_fmt(t['mean_diff'])} | "
                          f"{_fmt(t['t'])} | {_fmt(t['p'])} |")
    roi_rows = []
    if meta.get("roi"):
        md += ["", "ROI agreement pooled over each grid point's trials (every test subject of "
               "every trial; Bland-Altman of prediction - truth, in % of the truth, and a paired "
               "t-test of the ROI means):", "",
               "| " + " | ".join([*keys, "ROI", "region", "subjects", "bias %",
                                  "limits of agreement %", "t", "p"]) + " |",
               "|" + "---|" * (len(keys) + 7)]
        for p in points:
            for path in meta["roi"]:
                for region, e in pooled_roi(p["trials"], path).items():
                    cells = [str(p["point"].get(k)) for k in keys]
                    md.append("| " + " | ".join(cells + [
                        path, region, str(e["n"]), _fmt(e["bias_pct"]),
                        f"{_fmt(e['loa_pct_low'])} to {_fmt(e['loa_pct_high'])}", _fmt(e["t"]),
                        _fmt(e["p"])]) + " |")
                    roi_rows.append([*(p["point"].get(k) for k in keys), path, region, e["n"],
                                     e["bias"], e["loa_low"], e["loa_high"], e["bias_pct"],
                                     e["loa_pct_low"], e["loa_pct_high"], e["t"], e["p"]])
        write_text(os.path.join(sweep_dir, "roi.csv"), _csv(
            [*keys, "roi", "region", "n", "bias", "loa_low", "loa_high", "bias_pct",
             "loa_pct_low", "loa_pct_high", "t", "p"], roi_rows))
    failed = [r for r in rows if r["state"] == "failed"]
    if failed:
        md += ["", "Failed trials (re-run them with `--retry-failed`):", ""]
        for r in failed:
            err = (r["status"].get("error") or "").strip().splitlines()
            md.append(f"- `{r['name']}`: {err[-1] if err else 'no error recorded'} "
                      f"(log: `{r['name']}/trial.log`)")
    unfinished = [r["name"] for r in rows if r["state"] not in runner.TERMINAL]
    if unfinished:
        md += ["", f"Not finished ({len(unfinished)}): " + ", ".join(f"`{n}`" for n in
                                                                     unfinished)]
    write_text(os.path.join(sweep_dir, "results.md"), "\n".join(md) + "\n")
    if figures and any(r["metrics"] for r in rows):
        for m in metrics:
            _figure(os.path.join(sweep_dir, f"{m.replace('/', '_')}.png"), points, m, keys)
    return {"points": summary_points, "states": states, "tests": tests, "roi": roi_rows}
