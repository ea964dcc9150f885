"""Worker for tests/engine/test_distributed.py: a few sharded train steps in one of several processes.

Run by the test as ``python tests/engine/dist_worker.py`` with ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` set (or none of them: single process). Prints one JSON
line with the losses and a parameter checksum.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import jax  # noqa: E402

from qmri_jax.engine import sharding  # noqa: E402


def main():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    sharding.initialize_distributed()
    import jax.numpy as jnp
    import numpy as np

    from qmri_jax import engine
    from qmri_jax.engine.loader import Loader
    from qmri_jax.tasks import RegressionTask
    from tests.tiny import unet_config_tiny

    rng = np.random.default_rng(0)
    n = 16
    arrays = {"images": rng.uniform(0, 1, (n, 16, 16, 4)).astype(np.float32),
              "targets": rng.uniform(0.5, 2, (n, 16, 16, 3)).astype(np.float32)
              * np.array([1000, 100, 1], np.float32),
              "mask": (rng.uniform(size=(n, 16, 16)) > 0.2).astype(np.float32)}
    cfg = unet_config_tiny(batch_size=8, loss="mae")
    mesh = sharding.create_mesh()
    task = RegressionTask(cfg)
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    state = engine.init_state(task, {"images": jnp.zeros((1, 16, 16, 4))}, 0, mesh)
    step = jax.jit(task.train_step, in_shardings=(repl, bsh, repl), out_shardings=(repl, repl))
    ld = Loader(arrays, 8, seed=0, mesh=mesh, keys=["images", "targets", "mask"])
    out = []
    for s in range(3):
        state, m = step(state, ld.batch_at(s), jax.random.fold_in(jax.random.key(1), s))
        out.append(float(m["loss"]))
    checksum = float(sum(float(jnp.sum(jnp.abs(p))) for p in jax.tree.leaves(state.params)))
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                      "losses": out, "checksum": checksum}), flush=True)


if __name__ == "__main__":
    main()
