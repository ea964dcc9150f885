"""``python -m qmri_jax.sweep`` end to end on a tiny 4-trial sweep: local runs, SIGTERM makes the
running trial checkpoint and the rerun resume it, a finished sweep submits nothing, failed trials
are listed and ``--retry-failed`` re-runs only them; on the machine's SLURM cluster (``.ci/slurm.sh``
starts one in CI) the same sweep with one trial signalled mid-run (USR2, as before a time limit)
is requeued, resumes, and gives the same tables as the local run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from qmri_jax.sweeps import backends, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "tests", "sweeps", "tiny_sweep.py")
NAMES = ["loss=mae_seed=0", "loss=mae_seed=1", "loss=mse_seed=0", "loss=mse_seed=1"]


def _env(data_dir):
    return {**os.environ, "QMRI_SWEEP_TEST_DATA": str(data_dir),
            "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
            "XLA_FLAGS": ""}  # one CPU device per trial, as a user's run has


def _sweep(out, data_dir, *args, preset="", wait=True):
    cmd = [sys.executable, "-m", "qmri_jax.sweep", f"--sweep={SWEEP}" + (
        f":{preset}" if preset else ""), f"--out={out}", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    text, _ = proc.communicate(timeout=900)
    return proc.returncode, text


def _training(workdir, proc, timeout_s=600):
    """Wait until the trial has logged a training step; returns that step."""
    path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit code {proc.returncode}) before "
                                 f"{workdir} trained:\n{proc.communicate()[0]}")
        if os.path.isfile(path):
            steps = [json.loads(x)["step"] for x in open(path) if '"loss"' in x]
            if steps:
                return steps[-1]
        time.sleep(0.05)
    raise TimeoutError(f"{workdir} did not start training")


def _status(out, name):
    return runner.read_status(os.path.join(out, "tiny", name))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The sweep run locally, SIGTERM sent while its second trial trains, then run again."""
    base = tmp_path_factory.mktemp("sweep")
    out, data = str(base / "local"), base / "data"
    proc = _sweep(out, data, wait=False)
    step = _training(os.path.join(out, "tiny", NAMES[1]), proc)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, text
    first = {n: _status(out, n) for n in NAMES}
    rc, text2 = _sweep(out, data)
    assert rc == 0, text2
    return {"out": out, "data": data, "signal_step": step, "after_signal": first,
            "first_output": text, "output": text2}


def _results(out):
    return open(os.path.join(out, "tiny", "results.csv")).read()


def _trial_metrics(out):
    return {n: json.load(open(os.path.join(out, "tiny", n, "eval", "metrics.json")))
            for n in NAMES}


def test_local_sweep_resumes_after_sigterm_and_collects(local_run):
    first = local_run["after_signal"]
    assert first[NAMES[0]]["state"] == "done"
    assert first[NAMES[1]]["state"] == "preempted" and first[NAMES[1]]["returncode"] == 75
    assert first[NAMES[2]]["state"] == first[NAMES[3]]["state"] == "pending"
    log = open(os.path.join(local_run["out"], "tiny", NAMES[1], "trial.log")).read()
    stopped = int(log.split("checkpoint at step ")[1].split(";")[0])
    assert local_run["signal_step"] <= stopped < 100
    assert f"resumed from {local_run['out']}/tiny/{NAMES[1]}/checkpoints step {stopped}" in log
    assert [_status(local_run["out"], n)["attempts"] for n in NAMES] == [1, 2, 1, 1]
    rows = _results(local_run["out"]).strip().splitlines()
    assert rows[0].startswith("train.loss,done,trials,T1.median_abs_pct_mean")
    assert [r.split(",")[:3] for r in rows[1:]] == [["mae", "2", "2"], ["mse", "2", "2"]]
    md = open(os.path.join(local_run["out"], "tiny", "results.md")).read()
    assert "| mae | 2/2 |" in md and "Paired t-tests" in md


def test_rerunning_a_finished_sweep_runs_nothing(local_run):
    rc, text = _sweep(local_run["out"], local_run["data"])
    assert rc == 0 and "running 0 (local)" in text
    assert [_status(local_run["out"], n)["attempts"] for n in NAMES] == [1, 2, 1, 1]
    rc, text = _sweep(local_run["out"], local_run["data"], "--dry-run")
    assert rc == 0 and "would run" not in text


def test_failed_trials_are_listed_and_only_they_are_retried(local_run, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(local_run["out"], out)
    rc, text = _sweep(out, local_run["data"], preset="failing")
    assert rc == 1 and "running 2 (local)" in text  # the 4 done trials are not run again
    failed = ["loss=no_such_loss_seed=0", "loss=no_such_loss_seed=1"]
    for n in failed:
        st = _status(out, n)
        assert st["state"] == "failed" and "no_such_loss" in st["error"]
    md = open(os.path.join(out, "tiny", "results.md")).read()
    assert "Failed trials" in md and f"`{failed[0]}`" in md
    rc, text = _sweep(out, local_run["data"], "--retry-failed", preset="failing")
    assert rc == 1 and "running 2 (local)" in text
    assert [_status(out, n)["attempts"] for n in failed] == [2, 2]
    assert [_status(out, n)["attempts"] for n in NAMES] == [1, 2, 1, 1]


SLURM_REASON = backends.slurm_available()


@pytest.mark.skipif(bool(SLURM_REASON), reason=f"no SLURM cluster here: {SLURM_REASON}; "
                    "`.ci/slurm.sh start` starts a one-node cluster (root, Debian)")
def test_slurm_backend_requeues_a_signalled_trial_and_matches_local(local_run, tmp_path):
    out = str(tmp_path / "slurm")
    proc = _sweep(out, local_run["data"], "--backend=slurm", "--time-min=20",
                  "--signal-delay-s=30", wait=False)
    target = NAMES[2]
    _training(os.path.join(out, "tiny", target), proc, timeout_s=600)
    jobs = json.load(open(os.path.join(out, "tiny", "slurm_jobs.json")))
    # USR2 is what SLURM sends before a time limit (submitit's --signal=USR2@delay).
    subprocess.run(["scancel", "--signal=USR2", jobs[target]], check=True)
    # SLURM makes a requeued job eligible only ~2 minutes later; release it once it is back in
    # the queue (a real cluster's scheduler does what it does).
    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r"], capture_output=True,
                                text=True, check=False).stdout
        line = [x for x in queued.splitlines() if x.startswith(jobs[target] + " ")]
        if line and "PENDING" in line[0] and "BeginTime" in line[0]:
            subprocess.run(["scontrol", "update", f"JobId={jobs[target]}", "StartTime=now"],
                           check=True)
            break
        time.sleep(0.5)
    text, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, text
    st = _status(out, target)
    assert st["state"] == "done" and st["attempts"] == 2 and st["slurm_job"]
    log = open(os.path.join(out, "tiny", target, "trial.log")).read()
    assert "stop requested" in log and "resumed from" in log
    assert [_status(out, n)["attempts"] for n in NAMES if n != target] == [1, 1, 1]
    # Same seeds, same numbers: the tables and every trial's metrics equal the local run's.
    assert _results(out) == _results(local_run["out"])
    assert _trial_metrics(out) == _trial_metrics(local_run["out"])
