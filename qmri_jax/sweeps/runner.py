"""Run one trial of a sweep: ``python -m qmri_jax.main`` in its workdir, its state on disk.

A trial is a child process (its own JAX runtime and device memory). Its workdir holds
``sweep_trial.json`` (config, overrides, command), ``trial.log`` (every attempt's stdout and
stderr, appended) and ``sweep_status.json``: ``{"state": "running" | "done" | "failed" |
"preempted", "attempts": n, "error": ...}``. ``done`` means the job exited 0 and wrote
``eval/metrics.json``: such a trial is never run again. ``failed`` keeps the log's last lines as
its error. ``preempted`` (exit code 75: the job checkpointed on SIGTERM / SIGUSR1, see
:mod:`qmri_jax.engine.preemption`) and a ``running`` trial whose process is gone (killed) are run
again by the next run of the sweep, resuming from their checkpoints.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time

from qmri_jax.engine.preemption import PREEMPTED_EXIT_CODE
from qmri_jax.io.nifti import write_json  # atomic; re-exported for the sweep tools
from qmri_jax.sweeps.spec import format_value

__all__ = ["write_json", "trial_spec", "command", "read_status", "run_trial", "TrialProcess",
           "STATUS_FILE",
           "TERMINAL"]

STATUS_FILE = "sweep_status.json"
TERMINAL = ("done", "failed")


def trial_spec(trial, config_path: str, sweep_dir: str, env: dict | None = None,
               cwd: str | None = None) -> dict:
    """The JSON-able description of one trial that a runner (local or SLURM) needs."""
    return {"name": trial.name, "workdir": os.path.join(sweep_dir, trial.name),
            "config": config_path, "overrides": [[k, v] for k, v in trial.overrides.items()],
            "env": dict(env or {}), "cwd": cwd or os.getcwd()}


def command(spec: dict) -> list[str]:
    """The trial's command line (``sys.executable -m qmri_jax.main ...``)."""
    return [sys.executable, "-m", "qmri_jax.main", f"--config={spec['config']}",
            f"--workdir={spec['workdir']}", "--config.train.progress_bar=False",
            *(f"--config.{k}={format_value(v)}" for k, v in spec["overrides"])]


def read_status(workdir: str) -> dict:
    """The trial's status (``{"state": "pending"}`` when it never started)."""
    path = os.path.join(workdir, STATUS_FILE)
    if not os.path.isfile(path):
        return {"state": "pending", "attempts": 0}
    with open(path) as f:
        return json.load(f)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _last_error(log_path: str, max_lines: int = 15) -> str:
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln.rstrip() for ln in f.readlines()[-400:] if ln.strip()]
    except OSError:
        return "(no log)"
    for i in range(len(lines) - 1, -1, -1):  # the last traceback's final line, if any
        if lines[i].startswith("Traceback"):
            return "\n".join(lines[i:][-max_lines:])
    return "\n".join(lines[-max_lines:])


def _rank() -> int:
    return int(os.environ.get("SLURM_PROCID", "0"))


class TrialProcess:
    """Runs one trial's child process; :meth:`stop` asks it to checkpoint and exit."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self._stop = False

    def run(self) -> str:
        """Run the trial to its end (or to a stop request); returns its new state."""
        spec, rank = self.spec, _rank()
        workdir = spec["workdir"]
        os.makedirs(workdir, exist_ok=True)
        status = read_status(workdir)
        if status["state"] == "done":
            return "done"
        attempts = int(status.get("attempts", 0)) + 1
        if rank == 0:
            write_json(os.path.join(workdir, "sweep_trial.json"),
                        {**spec, "command": command(spec)})
            write_json(os.path.join(workdir, STATUS_FILE),
                        {"state": "running", "attempts": attempts, "host": socket.gethostname(),
                         "slurm_job": os.environ.get("SLURM_JOB_ID"), "started": _now()})
        log_path = os.path.join(workdir, "trial.log" if rank == 0 else f"trial.rank{rank}.log")
        env = {**os.environ, **{k: str(v) for k, v in spec["env"].items()}}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (spec["cwd"], env.get("PYTHONPATH", "")) if p)
        t0 = time.time()
        with open(log_path, "a") as log:
            log.write(f"\n=== attempt {attempts} on {socket.gethostname()} at {_now()}: "
                      f"{' '.join(command(spec))}\n")
            log.flush()
            self.proc = subprocess.Popen(command(spec), cwd=spec["cwd"], env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
            if self._stop:  # stop() came before the child existed
                self.proc.send_signal(signal.SIGTERM)
            rc = self._wait()
        metrics = os.path.join(workdir, "eval", "metrics.json")
        if rc == 0 and os.path.isfile(metrics):
            state, error = "done", None
        elif rc == PREEMPTED_EXIT_CODE:
            state, error = "preempted", None
        else:
            state = "failed"
            error = (f"exit code {rc}" + ("" if rc else " but no eval/metrics.json") + ":\n"
                     + _last_error(log_path))
        if rank == 0:
            write_json(os.path.join(workdir, STATUS_FILE),
                        {"state": state, "attempts": attempts, "returncode": rc, "error": error,
                         "seconds": round(time.time() - t0, 1), "host": socket.gethostname(),
                         "slurm_job": os.environ.get("SLURM_JOB_ID"), "finished": _now()})
        return state

    def _wait(self) -> int:
        # Short timed waits rather than one blocking wait: a blocking Popen.wait holds the
        # Popen's lock, and stop() may run inside a signal handler of this same thread.
        while True:
            try:
                return self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:  # Ctrl-C: the child got SIGINT too; let it end
                self.proc.wait()
                raise

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM to the child (it checkpoints at its current step and exits 75); waits up to
        ``timeout_s`` for it, then kills it. Safe inside a signal handler (it only polls).

        Returns:
          The child's exit code, or None where no child runs, ``timeout_s`` is 0 (no wait) or it
          had to be killed.
        """
        self._stop = True
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        while timeout_s and time.time() - t0 < timeout_s:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            time.sleep(0.1)
        if timeout_s:
            self.proc.kill()
        return None


def run_trial(spec: dict) -> str:
    """Run one trial in this process's foreground; returns its final state."""
    return TrialProcess(spec).run()
