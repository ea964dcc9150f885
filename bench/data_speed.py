"""Data pipeline speed: build time of the default 2D dataset, loader rate vs the training step.

Builds the default dataset of ``configs/unet.py`` with ``--subjects`` (default 40) subjects at
2 mm with the four-contrast brain protocol into a fresh temporary TFDS folder (timed from scratch),
then measures the numpy loader (shuffled batches of 8 put on the device mesh) and the default
U-Net training step on the same batches.

  python bench/data_speed.py [--subjects 40] [--batches 200] [--steps 10]

The last line is one JSON object: build_s, loader_batches_per_s, train_steps_per_s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    import jax

    from configs import unet
    from qmri_jax import engine
    from qmri_jax.data import anatomy, datasets
    from qmri_jax.engine import sharding
    from qmri_jax.engine.loader import Loader
    from qmri_jax.tasks import RegressionTask
    from qmri_jax.tasks.data import as_batch_arrays, data_config

    cfg = unet.get_config()
    with cfg.unlocked():
        cfg.data.num_subjects = args.subjects
    anatomy.load_mni152.cache_clear()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        builder = datasets.build(data_config(cfg), tmp)
        build_s = time.perf_counter() - t
        arrays = as_batch_arrays(datasets.load_split_arrays(builder, "train"), cfg.targets)
    n = len(arrays["images"])
    print(f"built {args.subjects} subjects ({n} training slices of "
          f"{arrays['images'].shape[1:]}) in {build_s:.1f} s")

    mesh = sharding.create_mesh()
    ld = Loader(arrays, cfg.train.batch_size, seed=0, mesh=mesh, keys=["images", "targets", "mask"])
    jax.block_until_ready(ld.batch_at(0))
    t = time.perf_counter()
    for s in range(args.batches):
        b = ld.batch_at(s)
    jax.block_until_ready(b)
    loader_rate = args.batches / (time.perf_counter() - t)
    print(f"loader: {loader_rate:.1f} batches/s (batch {cfg.train.batch_size}, {mesh.size} device)")

    task = RegressionTask(cfg)
    repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    state = engine.init_state(task, {"images": ld.batch_at(0)["images"][:1]}, 0, mesh)
    step = jax.jit(task.train_step, in_shardings=(repl, bsh, repl), out_shardings=(repl, repl),
                   donate_argnums=0)
    key = jax.random.key(1)
    for s in range(2):
        state, m = step(state, ld.batch_at(s), key)
    jax.block_until_ready(m)
    times = []
    for s in range(args.steps):
        t = time.perf_counter()
        state, m = step(state, ld.batch_at(s), key)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    train_rate = 1.0 / statistics.median(times)
    print(f"default U-Net train step: {train_rate:.2f} steps/s; the loader is "
          f"{loader_rate / train_rate:.0f}x faster than the step consumes batches")
    print(json.dumps({"build_s": build_s, "loader_batches_per_s": loader_rate,
                      "train_steps_per_s": train_rate, "subjects": args.subjects,
                      "train_slices": n}))


if __name__ == "__main__":
    main()
