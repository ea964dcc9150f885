"""K = 10 posterior draws on one device: one DDIM-50 sample, the vmapped K = 10 call, the same as
one batch of 10, and 10 sequential calls, for bench/ddpm_speed.py's network (levels 128/256/256,
64 x 64, 7 condition images), each the median of ``reps`` timings in 3 rounds; optionally the
device's busy time per kernel from a JAX profile (``--profile``).

  python experiments/gpu/k10_probe.py [--dtype float32|bfloat16] [--reps 10] [--profile]

Environment PROBE_S / PROBE_F shrink it for a CPU smoke run (e.g. PROBE_S=16 PROBE_F=32,32,32).
Last line of the timings: one JSON object (milliseconds).
"""

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from qmri_jax.diffusion import samplers, schedules
from qmri_jax.models.diffusion_unet import DiffusionUNet


def kernel_profile(fn, top=14):
    """Runs ``fn`` once under the JAX profiler; prints the GPU streams' busy time per kernel."""
    d = tempfile.mkdtemp()
    with jax.profiler.trace(d):
        jax.block_until_ready(fn())
    data = jax.profiler.ProfileData.from_file(glob.glob(d + "/**/*.xplane.pb", recursive=True)[0])
    agg = collections.defaultdict(lambda: [0, 0.0])
    for plane in data.planes:
        if "GPU" not in plane.name:
            continue
        for line in plane.lines:
            if "Stream" in line.name:
                for ev in line.events:
                    a = agg[ev.name[:60]]
                    a[0] += 1
                    a[1] += ev.duration_ns / 1e6
    n, busy = sum(v[0] for v in agg.values()), sum(v[1] for v in agg.values())
    print(f"  {n} kernels, {busy:.1f} ms busy")
    for k, v in sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"   {v[1]:7.2f} ms {v[0]:5d}x  {k}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    s = int(os.environ.get("PROBE_S", "64"))
    feats = tuple(int(f) for f in os.environ.get("PROBE_F", "128,256,256").split(","))
    net = DiffusionUNet(features=feats, out_channels=3, blocks_per_level=1, attention_levels=(),
                        dtype=jnp.dtype(args.dtype))
    sch = schedules.linear_schedule(1000)
    cond = jnp.asarray(np.random.default_rng(0).uniform(size=(1, s, s, 7)), jnp.float32)
    params = net.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), jnp.zeros((1,), jnp.int32),
                      cond)["params"]
    params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(5), p.shape), params)

    def sample_one(k, c):
        return samplers.ddim_sample(lambda x, t: net.apply({"params": params}, x, t, c), sch,
                                    (c.shape[0], s, s, 3), k, 50)

    one, batch = jax.jit(sample_one), jax.jit(sample_one)
    vm = jax.jit(jax.vmap(sample_one, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(3), 10)
    bcond = jnp.tile(cond, (10, 1, 1, 1))
    fns = {"one": lambda: one(keys[0], cond), "vmapped": lambda: vm(keys, cond),
           "batch10": lambda: batch(keys[0], bcond),
           "seq10": lambda: [one(k, cond) for k in keys]}
    for f in fns.values():
        jax.block_until_ready(f())
    res = collections.defaultdict(list)
    for _ in range(3):
        for name, f in fns.items():
            ts = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                jax.block_until_ready(f())
                ts.append(time.perf_counter() - t0)
            res[name].append(float(np.median(ts)))
    med = {k: float(np.median(v)) * 1e3 for k, v in res.items()}
    print(json.dumps({"dtype": args.dtype, "device": jax.devices()[0].platform,
                      **{k: round(v, 2) for k, v in med.items()},
                      "seq_over_vmapped": round(med["seq10"] / med["vmapped"], 2)}))
    if args.profile:
        for name in ("one", "vmapped"):
            print(f"PROFILE {name}:")
            kernel_profile(fns[name])


if __name__ == "__main__":
    main()
