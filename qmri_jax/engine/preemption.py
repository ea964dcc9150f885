"""Graceful stop on preemption or time-out: a signal asks the training loop to checkpoint and exit.

A cluster that preempts a job, or reaches its time limit, sends ``SIGTERM`` (Slurm: to every
process of the job) or a user signal some time before it kills it. :func:`install_handlers` makes
those signals (SIGTERM, SIGUSR1, SIGUSR2) *request* a stop: the loop (:func:`qmri_jax.engine.train`) sees the request after the
step it is in, saves a checkpoint at that step and returns unfinished; the job then exits with
:data:`PREEMPTED_EXIT_CODE`, and running the same workdir again resumes exactly from there. Outside
the loop (building data, evaluating) there is nothing to save: the signal exits at once with the
same code, and the rerun repeats that part.
"""

from __future__ import annotations

import contextlib
import signal
import sys

__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "install_handlers", "request_stop",
           "stop_requested", "clear", "in_training_loop"]

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"

_state = {"requested": False, "in_loop": False}


class Preempted(SystemExit):
    """Exit after a stop request; the workdir holds what is needed to resume."""

    def __init__(self, message: str = "stopped on request (preemption or time-out)"):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message
        print(message, file=sys.stderr, flush=True)

    def __str__(self):
        return self.message


def request_stop(signum=None, frame=None) -> None:
    """Ask the training loop to checkpoint and stop (a signal handler; also callable directly)."""
    _state["requested"] = True
    if signum is not None and not _state["in_loop"]:
        raise Preempted(f"signal {signal.Signals(signum).name} outside the training loop: "
                        "exiting, nothing to save")


def stop_requested() -> bool:
    return _state["requested"]


def clear() -> None:
    _state["requested"] = False


@contextlib.contextmanager
def in_training_loop():
    """Marks the loop's span: a signal inside it only sets the request flag."""
    _state["in_loop"] = True
    try:
        yield
    finally:
        _state["in_loop"] = False


def install_handlers(signals=(signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)) -> None:
    """Make ``signals`` request a graceful stop (main thread only). SIGUSR2 is what submitit asks
    SLURM to send before a time limit (``--signal=USR2@90``); SLURM sends it to every process of
    the job step, this one included."""
    for s in signals:
        signal.signal(s, request_stop)
