"""Conditional DDPM speed: qmri_jax's DiffusionUNet + samplers against MONAI's DiffusionModelUNet
with DDPMScheduler / DDIMScheduler, same channels, batch and image size, in the same run.

Both networks: the same architecture (Ho et al. 2020's layout, as MONAI's: strided-conv down,
nearest + conv up, one more residual block per level on the way up, time embedding 4 x
features[0]; the two parameter counts are printed and must agree), 2D, 10 input channels (3 noisy
maps + 7 condition images), 3 outputs, levels (128, 256, 256), one residual block per level,
GroupNorm 32, no attention on the levels and one self-attention block in the bottleneck;
T = 1000 linear schedule, eps-MSE loss, Adam. Measured:
one training step on a batch of 8, DDIM with 50 steps for one sample, and this project's K = 10
posterior draws vmapped (one batch of 10) against 10 sequential calls. Everything is built and
warmed up first (compilation excluded); project and peer are then timed in ``--rounds``
alternating rounds (project, peer, project, ...), so that a load change on a shared machine hits
both, and each ratio is the median over rounds of the per-round ratio of the two round medians
(which a load burst during one block moves less than one pair of timings does).

  pip install -e ".[bench]"
  python bench/ddpm_speed.py [--size 64] [--batch 8] [--steps 3] [--rounds 3]
                             [--sample-repeats 1] [--features 128,256,256]

The last line is one JSON object: project_train_step_s, peer_train_step_s, train_ratio,
project_ddim50_s, peer_ddim50_s, sample_ratio (and the per-round ratios), vmapped_k10_s,
sequential_k10_s, vmap_over_sequential, device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _timing import alternate, host, median_ratio  # bench/, next to this script


def _timer(fn, sync):
    """``fn`` made into a zero-argument callable that runs it once and waits for the result."""
    def run():
        fn()
        sync()
    return run


def project(args, feats):
    """Returns ({name: timed callable}, num_params, platform): ``train`` (one step on a batch of
    ``args.batch``), ``ddim50`` (one sample), ``vmapped_k10`` / ``sequential_k10`` (K = 10 draws),
    ``batch_k10`` (one sample of a batch of 10 copies of the condition). ``args``: ``size``,
    ``batch``, ``dtype``."""
    import jax
    import jax.numpy as jnp
    import optax

    from qmri_jax.diffusion import process, samplers, schedules
    from qmri_jax.models.diffusion_unet import DiffusionUNet

    net = DiffusionUNet(features=feats, out_channels=3, blocks_per_level=1, attention_levels=(),
                        dtype=jnp.dtype(args.dtype))
    sch = schedules.linear_schedule(1000)
    rng = np.random.default_rng(0)
    s, b = args.size, args.batch
    cond = jnp.asarray(rng.uniform(size=(b, s, s, 7)), jnp.float32)
    x0 = jnp.asarray(rng.uniform(-1, 1, size=(b, s, s, 3)), jnp.float32)
    params = net.init(jax.random.key(0), x0, jnp.zeros((b,), jnp.int32), cond)["params"]
    nparams = sum(v.size for v in jax.tree.leaves(params))
    tx = optax.adam(1e-4)
    opt = tx.init(params)

    @jax.jit
    def train_step(params, opt, key):
        def loss(p):
            return process.diffusion_loss(lambda x, t: net.apply({"params": p}, x, t, cond), sch,
                                          x0, key)
        val, g = jax.value_and_grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, val

    state = {"p": params, "o": opt}

    def run_train():
        state["p"], state["o"], state["l"] = train_step(state["p"], state["o"], jax.random.key(1))

    def sample_one(k, c):
        return samplers.ddim_sample(lambda x, t: net.apply({"params": params}, x, t, c), sch,
                                    (c.shape[0], s, s, 3), k, 50)

    one = jax.jit(sample_one)
    keys = jax.random.split(jax.random.key(3), 10)
    vm = jax.jit(jax.vmap(sample_one, in_axes=(0, None)))
    out = {}

    def sequential():
        out["s"] = [one(k, cond[:1]) for k in keys]

    fns = {
        "train": _timer(run_train, lambda: jax.block_until_ready(state["l"])),
        "ddim50": _timer(lambda: out.__setitem__("x", one(jax.random.key(2), cond[:1])),
                         lambda: jax.block_until_ready(out["x"])),
        "vmapped_k10": _timer(lambda: out.__setitem__("v", vm(keys, cond[:1])),
                              lambda: jax.block_until_ready(out["v"])),
        "sequential_k10": _timer(sequential, lambda: jax.block_until_ready(out["s"])),
        # the vmapped call's work as one plain batch of 10 (experiments/gpu/k10_probe.py)
        "batch_k10": _timer(lambda: out.__setitem__("b", one(keys[0], jnp.tile(cond[:1],
                                                                              (10, 1, 1, 1)))),
                            lambda: jax.block_until_ready(out["b"])),
    }
    return fns, nparams, jax.devices()[0].platform


def peer(args, feats):
    """Returns ({"train", "ddim50"}: timed callables, num_params) for MONAI's DiffusionModelUNet."""
    import torch
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    torch.set_num_threads(os.cpu_count() or 1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = DiffusionModelUNet(spatial_dims=2, in_channels=10, out_channels=3, channels=feats,
                             attention_levels=(False,) * len(feats), num_res_blocks=1,
                             norm_num_groups=32).to(dev)
    nparams = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    ddpm = DDPMScheduler(num_train_timesteps=1000)
    s, b = args.size, args.batch
    g = torch.Generator().manual_seed(0)
    cond = torch.rand((b, 7, s, s), generator=g).to(dev)
    x0 = (torch.rand((b, 3, s, s), generator=g) * 2 - 1).to(dev)

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def train_step():
        opt.zero_grad(set_to_none=True)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,), device=dev)
        xt = ddpm.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(net(torch.cat([xt, cond], 1), t), noise)
        loss.backward()
        opt.step()

    ddim = DDIMScheduler(num_train_timesteps=1000)
    ddim.set_timesteps(50)

    @torch.no_grad()
    def sample():
        x = torch.randn((1, 3, s, s), device=dev)
        for t in ddim.timesteps:
            eps = net(torch.cat([x, cond[:1]], 1), torch.full((1,), int(t), device=dev))
            x, _ = ddim.step(eps, t, x)
        return x

    return {"train": _timer(train_step, sync), "ddim50": _timer(sample, sync)}, nparams


def _tuning():
    import qmri_jax
    return qmri_jax.XLA_CPU_TUNING


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds (project, peer, ...) for the train and DDIM timings")
    ap.add_argument("--sample-repeats", type=int, default=1,
                    help="timed samples per round (1 on CPU, more on GPU)")
    ap.add_argument("--k10-rounds", type=int, default=1,
                    help="alternating rounds of vmapped / sequential K = 10 draws")
    ap.add_argument("--features", default="128,256,256")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="this project's computation dtype (parameters stay float32); the peer "
                         "always runs in float32, so only the K = 10 comparison is like for like "
                         "under bfloat16")
    args = ap.parse_args()
    feats = tuple(int(f) for f in args.features.split(","))
    pf, pn, device = project(args, feats)
    try:
        qf, qn = peer(args, feats)
    except ImportError as e:
        print(f"peer unavailable ({e}); pip install -e '.[bench]'")
        qf, qn = {"train": None, "ddim50": None}, 0
    pt, qt, train_r = alternate(pf["train"], qf["train"], args.rounds, args.steps)
    pd, qd, ddim_r = alternate(pf["ddim50"], qf["ddim50"], args.rounds, args.sample_repeats)
    vm, seq, k10_r = alternate(pf["vmapped_k10"], pf["sequential_k10"], args.k10_rounds,
                               args.sample_repeats)
    vm_over_seq = 1 / median_ratio(k10_r)
    print(f"qmri_jax DiffusionUNet ({args.dtype}): {pn:,} params; train step {pt:.4g} s; "
          f"DDIM-50 (1 sample) {pd:.4g} s; K=10 vmapped {vm:.4g} s vs 10 sequential {seq:.4g} s "
          f"(vmapped / sequential time {vm_over_seq:.3f}: {1 / vm_over_seq:.2f}x faster; "
          "per-round " + " ".join(f"{1 / r:.3f}" for r in k10_r) + ")")
    print(f"MONAI DiffusionModelUNet: {qn:,} params; train step {qt:.4g} s; DDIM-50 {qd:.4g} s")
    print("per-round ratios (peer / project time): train "
          + " ".join(f"{r:.2f}" for r in train_r) + "; DDIM-50 " + " ".join(f"{r:.2f}" for r in ddim_r))
    train_ratio, sample_ratio = median_ratio(train_r), median_ratio(ddim_r)
    print(f"ratios (peer time / project time, median over rounds): train {train_ratio:.2f}x, "
          f"DDIM-50 {sample_ratio:.2f}x")
    print(json.dumps({"project_train_step_s": pt, "peer_train_step_s": qt, "train_ratio": train_ratio,
                      "project_ddim50_s": pd, "peer_ddim50_s": qd, "sample_ratio": sample_ratio,
                      "train_round_ratios": train_r, "sample_round_ratios": ddim_r,
                      "vmapped_k10_s": vm, "sequential_k10_s": seq,
                      "vmap_over_sequential": vm_over_seq, "device": device,
                      "host": host(), "xla_cpu_tuning": _tuning(),
                      "project_params": pn, "peer_params": qn, "size": args.size,
                      "batch": args.batch, "rounds": args.rounds, "dtype": args.dtype}))


if __name__ == "__main__":
    main()
