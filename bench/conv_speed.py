"""Per-layer 3x3 convolution speed: XLA (this jaxlib, with qmri_jax's XLA:CPU setting) against
PyTorch on the same shapes, forward + input gradient + filter gradient, in the same run.

The shapes are the 14 convolutions of the ``bench/train_speed.py`` U-Net (batch 8 of 96 x 112,
features 16..256). It shows where that benchmark's time goes: which layer shapes the compiler's
convolutions lose or win on. Each shape is timed in ``--rounds`` alternating rounds (project,
peer, ...) of ``--reps`` calls; each ratio is the median of the per-round ratios.

  pip install -e ".[bench]"
  python bench/conv_speed.py [--batch 8] [--rounds 3] [--reps 5]

The last line is one JSON object: per-shape ``layers`` (h, w, c_in, c_out, project_ms, peer_ms,
ratio = peer / project time), ``project_total_ms``, ``peer_total_ms``, ``ratio``, ``device``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _timing import alternate, host, median_ratio  # bench/, next to this script

SHAPES = [(96, 112, 4, 16), (96, 112, 16, 16), (96, 112, 32, 16), (48, 56, 16, 32),
          (48, 56, 32, 32), (48, 56, 64, 32), (24, 28, 32, 64), (24, 28, 64, 64),
          (24, 28, 128, 64), (12, 14, 64, 128), (12, 14, 128, 128), (12, 14, 256, 128),
          (6, 7, 128, 256), (6, 7, 256, 256)]


def project_fn(b, h, w, ci, co):
    """One call: forward, input and filter gradients of a SAME 3x3 conv, NHWC / HWIO."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(b, h, w, ci)), jnp.float32)
    k = jnp.asarray(rng.uniform(size=(3, 3, ci, co)), jnp.float32)
    g = jnp.asarray(rng.uniform(size=(b, h, w, co)), jnp.float32)

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def fwd_bwd(x, k, g):
        y, vjp = jax.vjp(conv, x, k)
        return y, vjp(g)

    compiled = jax.jit(fwd_bwd).lower(x, k, g).compile()
    return lambda: jax.block_until_ready(compiled(x, k, g))


def peer_fn(b, h, w, ci, co):
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.rand(b, ci, h, w, requires_grad=True)
    conv = torch.nn.Conv2d(ci, co, 3, padding=1, bias=False)
    g = torch.rand(b, co, h, w)

    def run():
        x.grad = None
        conv.weight.grad = None
        conv(x).backward(g)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import jax

    import qmri_jax  # applies the XLA:CPU convolution setting (before JAX starts its backend)
    layers = []
    for h, w, ci, co in SHAPES:
        p = project_fn(args.batch, h, w, ci, co)
        try:
            q = peer_fn(args.batch, h, w, ci, co)
        except ImportError as e:
            print(f"peer unavailable ({e}); install the bench extra: pip install -e '.[bench]'")
            q = None
        pt, qt, ratios = alternate(p, q, args.rounds, args.reps)
        row = {"h": h, "w": w, "c_in": ci, "c_out": co,
               "project_ms": pt * 1e3, "peer_ms": qt * 1e3, "ratio": median_ratio(ratios)}
        layers.append(row)
        print(f"{h:3d} x {w:3d}, {ci:3d} -> {co:3d}: qmri_jax/XLA {row['project_ms']:6.2f} ms, "
              f"torch {row['peer_ms']:6.2f} ms, ratio {row['ratio']:.2f}x")
    p_tot = sum(r["project_ms"] for r in layers)
    q_tot = sum(r["peer_ms"] for r in layers)
    print(f"sum over the {len(layers)} shapes: {p_tot:.1f} ms against {q_tot:.1f} ms, "
          f"ratio {q_tot / p_tot:.2f}x (peer / project time)")
    print(json.dumps({"layers": layers, "project_total_ms": p_tot, "peer_total_ms": q_tot,
                      "ratio": q_tot / p_tot, "device": jax.devices()[0].platform,
                      "host": host(), "xla_cpu_tuning": qmri_jax.XLA_CPU_TUNING,
                      "batch": args.batch}))


if __name__ == "__main__":
    main()
