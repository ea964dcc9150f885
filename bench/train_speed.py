"""U-Net training speed: qmri_jax against MONAI's BasicUNet (PyTorch) in the same run.

Both networks: 2D, 4 input contrasts -> 3 maps, five levels of two conv3x3-BatchNorm-ReLU blocks
with features (16, 32, 64, 128, 256), 2x2 max pooling, 2x2 transposed-conv up-sampling with skip
concatenation; Adam (lr 1e-3), masked MAE loss; batch 8 of 96 x 112 (the default 2 mm dataset's
slice size). Both are built and warmed up (3 steps, compilation excluded), then timed in
``--rounds`` alternating rounds of ``--steps`` steps each (project, peer, project, ...), so that a
load change on a shared machine hits both. Each steps/s figure is the median over all its timed
steps; the ratio is the median over rounds of the per-round ratio (peer block median over project
block median), which a load burst during one block moves less than the pooled medians.
The project runs on one device (the default), torch on all CPU threads.

  pip install -e ".[bench]"     # torch==2.13.0 (CPU build on disk here) and monai
  python bench/train_speed.py [--steps 10] [--rounds 3] [--batch 8]

The last line is one JSON object: project_steps_per_s, peer_steps_per_s, ratio, device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _timing import alternate, host, median_ratio  # bench/, next to this script

FEATURES = (16, 32, 64, 128, 256)


def build_project(batch, h, w):
    """Returns (one_step, num_params, platform): ``one_step()`` runs and waits for one step."""
    import jax
    import jax.numpy as jnp

    from configs import unet
    from qmri_jax import engine
    from qmri_jax.tasks import RegressionTask

    cfg = unet.get_config()
    with cfg.unlocked():  # the peer's setting: plain Adam at 1e-3, MAE, unit target scales
        cfg.model.features = FEATURES
        cfg.model.norm = "batch"
        cfg.target_scale = (1.0, 1.0, 1.0)
        cfg.train.update(optimizer="adam", schedule="constant", learning_rate=1e-3,
                         warmup_steps=0, grad_clip=0.0, loss="mae", ema_decay=0.0)
    task = RegressionTask(cfg)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(batch, h, w, 4)), jnp.float32)
    y = jnp.asarray(rng.uniform(size=(batch, h, w, 3)), jnp.float32)
    m = jnp.ones((batch, h, w), jnp.float32)
    state = engine.init_state(task, {"images": x[:1]}, 0)
    nparams = sum(v.size for v in jax.tree.leaves(state.params))
    step = jax.jit(task.train_step, donate_argnums=0)
    batch_d = {"images": x, "targets": y, "mask": m}
    key = jax.random.key(1)
    holder = {"state": state}

    def one():
        holder["state"], met = step(holder["state"], batch_d, key)
        jax.block_until_ready(met["loss"])

    for _ in range(3):
        one()
    return one, nparams, jax.devices()[0].platform


def build_peer(batch, h, w):
    """Returns (one_step, num_params) for MONAI's BasicUNet."""
    import torch
    from monai.networks.nets import BasicUNet

    torch.set_num_threads(os.cpu_count() or 1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = BasicUNet(spatial_dims=2, in_channels=4, out_channels=3,
                    features=(*FEATURES, FEATURES[0]), act="relu", norm="batch",
                    upsample="deconv").to(dev)
    nparams = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(size=(batch, 4, h, w)), dtype=torch.float32, device=dev)
    y = torch.tensor(rng.uniform(size=(batch, 3, h, w)), dtype=torch.float32, device=dev)
    m = torch.ones((batch, 1, h, w), device=dev)

    def one():
        opt.zero_grad(set_to_none=True)
        out = torch.nn.functional.softplus(net(x))
        loss = (torch.abs(out - y) * m).sum() / (m.sum() * 3)
        loss.backward()
        opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        one()
    return one, nparams


def _tuning():
    import qmri_jax
    return qmri_jax.XLA_CPU_TUNING


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=112)
    args = ap.parse_args()
    p_step, p_n, device = build_project(args.batch, args.height, args.width)
    try:
        q_step, q_n = build_peer(args.batch, args.height, args.width)
    except ImportError as e:
        print(f"peer unavailable ({e}); install the bench extra: pip install -e '.[bench]'")
        q_step, q_n = None, 0
    # both were warmed up (3 steps each) when built
    p_t, q_t, round_ratios = alternate(p_step, q_step, args.rounds, args.steps, warmup=False)
    print(f"qmri_jax UNet   : {p_n:,} params, {p_t * 1000:.0f} ms/step, {1 / p_t:.2f} steps/s")
    print(f"MONAI BasicUNet : {q_n:,} params, {q_t * 1000:.0f} ms/step, {1 / q_t:.2f} steps/s")
    ratio = median_ratio(round_ratios)
    print("per-round ratios: " + " ".join(f"{r:.2f}" for r in round_ratios))
    print(f"ratio (project steps/s / peer steps/s, median over rounds): {ratio:.2f}x")
    print(json.dumps({"project_steps_per_s": 1 / p_t, "peer_steps_per_s": 1 / q_t,
                      "ratio": ratio, "round_ratios": round_ratios, "device": device,
                      "host": host(), "xla_cpu_tuning": _tuning(),
                      "batch": args.batch,
                      "image": [args.height, args.width], "timed_steps_each": args.rounds * args.steps, "project_params": p_n,
                      "peer_params": q_n}))


if __name__ == "__main__":
    main()
