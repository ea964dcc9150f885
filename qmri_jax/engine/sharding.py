"""Device mesh and shardings for data parallelism (batch sharded, parameters replicated).

The same code runs on one CPU, N fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), GPUs and TPUs, and across hosts after
:func:`initialize_distributed`. Under ``jax.jit`` with a batch sharded over ``"data"`` the mean of
a loss is already the global mean: no ``pmean`` is needed.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["create_mesh", "batch_sharding", "replicated", "put_batch", "check_batch_size",
           "initialize_distributed"]

DATA_AXIS = "data"


def initialize_distributed() -> bool:
    """``jax.distributed.initialize()`` when a cluster is configured, else nothing.

    Recognised: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (explicit),
    and the environments JAX detects itself (SLURM, Open MPI, TPU pods) via ``QMRI_DISTRIBUTED=1``.

    Returns:
      True when a multi-process runtime was started.
    """
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    multi = addr or os.environ.get("QMRI_DISTRIBUTED") == "1" or int(
        os.environ.get("SLURM_NTASKS", "1")) > 1
    if multi:  # CPU devices of several processes need a collectives library (no effect on GPUs)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if addr:
        jax.distributed.initialize(coordinator_address=addr,
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
        return True
    if os.environ.get("QMRI_DISTRIBUTED") == "1" or "SLURM_NTASKS" in os.environ and int(
            os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
        return True
    return False


def create_mesh(num_devices: int | None = None) -> Mesh:
    """A 1D ``("data",)`` mesh over all devices (of all processes), or the first ``num_devices``."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"batch_size={global_batch} is not divisible by the {n} devices of the "
                         f"mesh; choose a multiple of {n}")


def put_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Host numpy arrays (this process's rows of the global batch) -> global sharded ``jax.Array``s.

    Args:
      local_batch: ``{key: [B_local, ...]}``; with P processes the global batch is ``P * B_local``.
      mesh: the data mesh.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
