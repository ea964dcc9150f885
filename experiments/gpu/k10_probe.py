"""K = 10 posterior draws on one device: one DDIM-50 sample, the vmapped K = 10 call, the same
work as one batch of 10, and 10 sequential calls, for bench/ddpm_speed.py's network and callables
(``project``: levels 128/256/256, 64 x 64, 7 condition images), each the median of ``--reps``
timings in 3 rounds; optionally the device's busy time per kernel from a JAX profile
(``--profile``).

  python experiments/gpu/k10_probe.py [--dtype float32|bfloat16] [--reps 10] [--profile]
                                      [--size 64] [--features 128,256,256]

Last line of the timings: one JSON object (milliseconds).
"""

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile

import jax

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)

from _timing import once  # bench/
from ddpm_speed import project  # bench/

NAMES = {"one": "ddim50", "vmapped": "vmapped_k10", "batch10": "batch_k10", "seq10": "sequential_k10"}


def kernel_profile(fn, top=14):
    """Runs ``fn`` once under the JAX profiler; prints the GPU streams' busy time per kernel."""
    d = tempfile.mkdtemp()
    with jax.profiler.trace(d):
        fn()
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
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--features", default="128,256,256")
    args = ap.parse_args()
    args.batch = 1  # project() also builds a training step; not timed here
    fns, _, platform = project(args, tuple(int(f) for f in args.features.split(",")))
    fns = {name: fns[key] for name, key in NAMES.items()}
    for f in fns.values():  # compile
        f()
    res = collections.defaultdict(list)
    for _ in range(3):
        for name, f in fns.items():
            res[name].append(statistics.median(once(f) for _ in range(args.reps)))
    med = {k: statistics.median(v) * 1e3 for k, v in res.items()}
    print(json.dumps({"dtype": args.dtype, "device": platform,
                      **{k: round(v, 2) for k, v in med.items()},
                      "seq_over_vmapped": round(med["seq10"] / med["vmapped"], 2)}))
    if args.profile:
        for name in ("one", "vmapped"):
            print(f"PROFILE {name}:")
            kernel_profile(fns[name])


if __name__ == "__main__":
    main()
