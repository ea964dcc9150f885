"""Where trials run: ``local`` (child processes on this machine) or ``slurm`` (submitit job arrays).

Both run the same :class:`~qmri_jax.sweeps.runner.TrialProcess` per trial, so a trial's command,
workdir and results do not depend on the backend. On SLURM one array task runs one trial
(``tasks_per_node`` = GPUs per node: one process per GPU, ``jax.distributed`` initialised from
SLURM's environment by :func:`qmri_jax.engine.sharding.initialize_distributed`); at a time-out or
preemption signal (``USR2``, ``signal_delay_s`` before the limit) the trial checkpoints, the job
is requeued and the trial resumes from its checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time

from qmri_jax.engine.preemption import Preempted
from qmri_jax.sweeps import runner

__all__ = ["run_local", "SlurmOptions", "run_slurm", "slurm_available", "SlurmTrial",
           "wait_for_trials"]


def run_local(specs: list[dict], parallel: int = 1, gpus_per_trial: int = 0,
              progress: bool = True) -> dict[str, str]:
    """Run ``specs`` here, ``parallel`` at a time; with ``gpus_per_trial``, slot i of the pool sees
    GPUs ``[i * g, (i + 1) * g)`` (``CUDA_VISIBLE_DEVICES``).

    SIGTERM to this process (a batch system ending the job that runs the whole sweep) is passed
    on to the running trials, which checkpoint and stop; no further trial starts, and the next
    run of the sweep resumes them. Returns ``{name: state}`` of the trials that ran.
    """
    from tqdm import tqdm

    if parallel < 1:
        raise ValueError(f"--parallel={parallel}: expected >= 1")
    slots = list(range(parallel))
    lock = threading.Lock()
    states, active, stopping = {}, set(), threading.Event()
    bar = tqdm(total=len(specs), desc="trials", disable=not progress, dynamic_ncols=True)

    def on_term(signum, frame):
        stopping.set()
        with lock:
            for proc in list(active):
                proc.stop(timeout_s=0)

    def work(spec):
        if stopping.is_set():
            return None
        with lock:
            slot = slots.pop(0)
        if gpus_per_trial:
            gpus = range(slot * gpus_per_trial, (slot + 1) * gpus_per_trial)
            spec = {**spec, "env": {**spec["env"],
                                    "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}}
        proc = runner.TrialProcess(spec)
        with lock:
            if stopping.is_set():  # SIGTERM came while this slot was being set up
                slots.append(slot)
                return None
            active.add(proc)
        try:
            state = proc.run()
        finally:
            with lock:
                active.discard(proc)
                slots.append(slot)
        with lock:
            states[spec["name"]] = state
            bar.update(1)
            bar.set_postfix(last=f"{spec['name']}: {state}")
        return state

    main = threading.current_thread() is threading.main_thread()  # handlers: main thread only
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(work, specs))
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    if stopping.is_set():
        raise Preempted("sweep stopped by SIGTERM: the running trials checkpointed; run the "
                        "same command again to resume them")
    return states


@dataclasses.dataclass
class SlurmOptions:
    """Resources of one trial on SLURM (each becomes an ``#SBATCH`` line through submitit).

    Attributes:
      partition: ``--partition`` ("" = the cluster's default).
      gpus_per_node: GPUs per node of one trial; one task (process) per GPU.
      tasks_per_node: processes per node (0: one per GPU, or 1 without GPUs); e.g. several CPU
        processes per node on a CPU cluster.
      nodes: nodes per trial (multi-node data parallelism: ``nodes x gpus_per_node`` processes).
      cpus_per_task: CPU cores per process.
      mem_gb: memory per node (0 = the partition's default).
      time_min: the time limit of one attempt (minutes); a trial that reaches it checkpoints and
        is requeued, up to ``max_requeues`` times.
      array_parallelism: trials running at once.
      signal_delay_s: how long before the limit the trial is asked to checkpoint.
      max_requeues: requeues after a time-out (preemptions are not counted).
      extra: further sbatch options (``{"account": "abc", "qos": "high"}``).
      setup: shell lines run before the trial (``module load cuda``).
    """

    partition: str = ""
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int = 0
    mem_gb: float = 0.0
    time_min: int = 60
    array_parallelism: int = 64
    signal_delay_s: int = 90
    max_requeues: int = 5
    extra: dict = dataclasses.field(default_factory=dict)
    setup: tuple = ()

    def executor_parameters(self) -> dict:
        tasks = self.tasks_per_node or max(1, self.gpus_per_node)
        params = {"timeout_min": int(self.time_min), "nodes": int(self.nodes),
                  "tasks_per_node": tasks, "slurm_array_parallelism": int(self.array_parallelism),
                  "slurm_signal_delay_s": int(self.signal_delay_s),
                  "slurm_additional_parameters": {"requeue": True, **self.extra}}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus_per_node:
            params["gpus_per_node"] = int(self.gpus_per_node)
        if self.cpus_per_task:
            params["cpus_per_task"] = int(self.cpus_per_task)
        if self.mem_gb:
            params["mem_gb"] = float(self.mem_gb)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        return params


def slurm_available() -> str:
    """"" where a SLURM controller answers here, else the reason it does not."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "no sbatch/squeue on PATH (SLURM is not installed)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()[:200]}"
    if not out.stdout.split():
        return "sinfo lists no node"
    return ""


try:  # submitit is needed for the SLURM backend only
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - a user's install without submitit
    _Checkpointable = object


class SlurmTrial(_Checkpointable):
    """The callable one SLURM array task runs: a trial, checkpointed and requeued on a signal."""

    def __init__(self, stop_timeout_s: float = 60.0):
        self.stop_timeout_s = stop_timeout_s
        self._process = None

    def __call__(self, spec: dict) -> str:
        self._process = runner.TrialProcess(spec)
        state = self._process.run()
        if state == "preempted":  # SIGTERM from SLURM (preemption, scancel): it requeues or not
            raise RuntimeError(f"trial {spec['name']} checkpointed and stopped on a signal")
        if state == "failed":
            raise RuntimeError(f"trial {spec['name']} failed: "
                               f"{runner.read_status(spec['workdir']).get('error')}")
        return state

    def checkpoint(self, spec: dict):
        """Called by submitit on the time-out/preemption signal: the child checkpoints and
        exits, then submitit requeues this same call."""
        import submitit

        if self._process is not None:
            self._process.stop(self.stop_timeout_s)
        return submitit.helpers.DelayedSubmission(SlurmTrial(self.stop_timeout_s), spec)


def run_slurm(specs: list[dict], folder: str, options: SlurmOptions, name: str = "sweep") -> list:
    """Submit ``specs`` as one job array named ``name``; submitit's files and the jobs' logs go
    to ``folder`` (``<job>_<task>_log.out``). Returns the submitit jobs (one per spec)."""
    import submitit

    reason = slurm_available()
    if reason:
        raise RuntimeError(f"--backend=slurm: {reason}")
    # One flat folder: SLURM does not create the folders of its --output paths.
    os.makedirs(folder, exist_ok=True)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                     slurm_max_num_timeout=int(options.max_requeues))
    executor.update_parameters(name=name, **options.executor_parameters())
    with executor.batch():
        # The trial must have checkpointed before SLURM's limit: signal_delay_s minus a margin.
        trial = SlurmTrial(stop_timeout_s=max(5.0, options.signal_delay_s - 20.0))
        jobs = [executor.submit(trial, spec) for spec in specs]
    return jobs


def _queued(job_ids: list[str]) -> set[str]:
    """Those of ``job_ids`` still in SLURM's queue (pending, running, requeued ...)."""
    if not job_ids:
        return set()
    arrays = ",".join(sorted({j.split("_")[0] for j in job_ids}))
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", arrays], capture_output=True,
                         text=True, timeout=60, check=False)
    if out.returncode != 0:  # a finished job array: squeue says "Invalid job id"
        return set()
    listed = set(out.stdout.split())
    return {j for j in job_ids if j in listed}


def wait_for_trials(specs: list[dict], job_ids: list[str], poll_s: float = 5.0,
                    progress: bool = True, timeout_s: float | None = None) -> dict[str, str]:
    """Wait until every trial is done or failed, or its job left the queue; ``{name: state}``."""
    from tqdm import tqdm

    bar = tqdm(total=len(specs), desc="trials", disable=not progress, dynamic_ncols=True)
    t0, states = time.time(), {}
    while True:
        states = {s["name"]: runner.read_status(s["workdir"])["state"] for s in specs}
        finished = sum(v in runner.TERMINAL for v in states.values())
        bar.n = finished
        bar.refresh()
        if finished == len(specs):
            break
        queued = _queued([j for s, j in zip(specs, job_ids) if states[s["name"]]
                          not in runner.TERMINAL])
        if not queued:  # the rest left the queue without finishing (cancelled, node failure)
            time.sleep(1.0)  # a status written just before the job ended
            states = {s["name"]: runner.read_status(s["workdir"])["state"] for s in specs}
            break
        if timeout_s is not None and time.time() - t0 > timeout_s:
            break
        time.sleep(poll_s)
    bar.close()
    return states
