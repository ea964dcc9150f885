"""Two local processes with jax.distributed train a few steps and agree with one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=REPO, **extra)
    return env


def _result(stdout):
    return json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])


@pytest.mark.slow
def test_two_processes_agree_with_one():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(_result(out))
    single = subprocess.run([sys.executable, WORKER], capture_output=True, text=True, cwd=REPO,
                            env=_env(4), timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    one = _result(single.stdout)
    assert outs[0]["devices"] == outs[1]["devices"] == one["devices"] == 4
    assert {o["process"] for o in outs} == {0, 1}
    for o in outs:
        assert o["losses"] == pytest.approx(one["losses"], rel=1e-5)
        assert o["checksum"] == pytest.approx(one["checksum"], rel=1e-5)
    assert one["losses"][-1] < one["losses"][0]
