"""Contrast-transfer GAN training speed: the project's step (configs/gan.py) against the same
pix2pix-style step written in PyTorch, in the same run.

Both steps: a 2D U-Net generator (levels 16/32/64, two conv3x3-BatchNorm-ReLU per level, 2x2 max
pooling, bilinear 2x up-sampling + conv3x3 with skip concatenation, 1x1 head to 3 channels) on one
image plus TE and TR channels -> PD, T1, T2 (softplus / log-sigmoid bounds) -> the spin-echo
layer at the input's and the target's (TE, TR); a PatchGAN (conv3x3 stride 2 + LeakyReLU(0.2) at
32/64/128, one conv3x3 at 128, 1x1 to 6 classes, Gaussian input noise); generator loss = MAE
reconstruction + paired MAE + map MAE + 0.05 x patch cross-entropy; discriminator loss = patch
cross-entropy of the real input (its class) and the synthesised target ("synthetic"); Nadam
(lr 5e-4) on both, both updated every step. Batch 8 of 48 x 56 (the CPU default's slices).
Built and warmed up (3 steps, compilation excluded), then timed in ``--rounds`` alternating
rounds of ``--steps`` steps (project, peer, ...); the ratio is the median over rounds of peer
time / project time (> 1: the project is faster).

  pip install -e ".[bench]"     # torch==2.13.0 (the CPU build on disk here)
  python bench/gan_speed.py [--steps 10] [--rounds 5]

The last line is one JSON object: project_step_s, peer_step_s, ratio, device, host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _timing import alternate, host, median_ratio  # bench/, next to this script

H, W, K = 48, 56, 5


def _data(batch):
    rng = np.random.default_rng(0)
    maps = np.stack([rng.uniform(0.5, 1.0, (batch, H, W)), rng.uniform(500, 2000, (batch, H, W)),
                     rng.uniform(40, 200, (batch, H, W))], -1).astype(np.float32)
    te = np.array([75, 120, 8, 8, 8], np.float32)
    tr = np.array([4500, 4500, 400, 750, 4500], np.float32)
    images = (maps[..., :1] * (1 - np.exp(-tr / maps[..., 1:2])) * np.exp(-te / maps[..., 2:3]))
    return images.astype(np.float32), maps, np.ones((batch, H, W), np.float32)


def build_project(batch):
    import jax

    from configs import gan
    from qmri_jax import engine
    from qmri_jax.tasks import create_task

    cfg = gan.get_config()
    with cfg.unlocked():
        cfg.gan.update(gen_pretrain_steps=0, disc_pretrain_steps=0, shift_px=0, maps_weight=1.0)
    task = create_task(cfg)
    images, maps, mask = _data(batch)
    b = {"images": images, "targets": maps, "mask": mask}
    state = engine.init_state(task, {k: v[:1] for k, v in b.items()}, 0)
    step = jax.jit(task.train_step, donate_argnums=0)
    b = jax.device_put(b)
    holder = {"state": state, "i": 0}
    nparams = sum(v.size for v in jax.tree.leaves((state["gen"].params, state["disc"].params)))

    def one():
        holder["i"] += 1
        holder["state"], met = step(holder["state"], b, jax.random.key(holder["i"]))
        jax.block_until_ready(met["loss"])

    for _ in range(3):
        one()
    return one, nparams, jax.devices()[0].platform


def build_peer(batch):
    import torch
    from torch import nn

    torch.set_num_threads(os.cpu_count() or 1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self, feats=(16, 32, 64)):
            super().__init__()
            self.down = nn.ModuleList([block(3, feats[0]), block(feats[0], feats[1])])
            self.mid = block(feats[1], feats[2])
            self.up = nn.ModuleList([
                nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                              nn.Conv2d(feats[2], feats[1], 3, padding=1)),
                nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                              nn.Conv2d(feats[1], feats[0], 3, padding=1))])
            self.dec = nn.ModuleList([block(2 * feats[1], feats[1]), block(2 * feats[0], feats[0])])
            self.head = nn.Conv2d(feats[0], 3, 1)

        def forward(self, x):
            skips = []
            for d in self.down:
                x = d(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.mid(x)
            for up, dec, s in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([s, up(x)], 1))
            return self.head(x)

    class PatchGAN(nn.Module):
        def __init__(self, feats=(32, 64, 128), classes=K + 1):
            super().__init__()
            layers, cin = [], 1
            for f in feats:
                layers += [nn.Conv2d(cin, f, 3, 2, padding=1), nn.LeakyReLU(0.2)]
                cin = f
            layers += [nn.Conv2d(cin, cin, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(cin, classes, 1)]
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            return self.net(x + 0.05 * torch.randn_like(x))

    gen, disc = UNet().to(dev), PatchGAN().to(dev)
    og = torch.optim.NAdam(gen.parameters(), lr=5e-4)
    od = torch.optim.NAdam(disc.parameters(), lr=5e-4)
    images, maps, mask = (torch.tensor(a, device=dev) for a in _data(batch))
    te = torch.tensor([75, 120, 8, 8, 8], dtype=torch.float32, device=dev)
    tr = torch.tensor([4500, 4500, 400, 750, 4500], dtype=torch.float32, device=dev)
    c_in = torch.arange(batch, device=dev) % K
    c_out = (c_in + 1) % K
    idx = torch.arange(batch, device=dev)
    x = images[idx, :, :, c_in]
    lo1, hi1, lo2, hi2 = np.log(10.0), np.log(1e4), np.log(2.0), np.log(5e3)

    def synth(m, te_, tr_):
        return m[:, 0] * (1 - torch.exp(-tr_[:, None, None] / m[:, 1])) * torch.exp(
            -te_[:, None, None] / m[:, 2])

    def one():
        s = torch.quantile(x.reshape(batch, -1), 0.99, dim=1)[:, None, None]
        inp = torch.stack([x / s, (te[c_in] / 100)[:, None, None].expand_as(x),
                           (tr[c_in] / 1000)[:, None, None].expand_as(x)], 1)
        z = gen(inp)
        m = torch.stack([s * nn.functional.softplus(z[:, 0]),
                         torch.exp(lo1 + (hi1 - lo1) * torch.sigmoid(z[:, 1])),
                         torch.exp(lo2 + (hi2 - lo2) * torch.sigmoid(z[:, 2]))], 1)
        recon, fake = synth(m, te[c_in], tr[c_in]), synth(m, te[c_out], tr[c_out])
        fs = torch.quantile(fake.detach().reshape(batch, -1), 0.99, dim=1)[:, None, None]
        fake_n = (fake / fs)[:, None]
        logits = disc(fake_n)
        target = images[idx, :, :, c_out]
        t = maps.permute(0, 3, 1, 2)
        loss = ((recon - x).abs() / s * mask).mean() + ((fake - target).abs() / s * mask).mean() \
            + ((m[:, 0] / t[:, 0] - 1).abs().mean() + torch.log(m[:, 1] / t[:, 1]).abs().mean()
               + torch.log(m[:, 2] / t[:, 2]).abs().mean()) / 3 \
            + 0.05 * nn.functional.cross_entropy(logits, c_out[:, None, None].expand(
                -1, *logits.shape[2:]))
        og.zero_grad(set_to_none=True)
        loss.backward()
        og.step()
        lr_ = disc((x / s)[:, None])
        lf = disc(fake_n.detach())
        dl = 0.5 * (nn.functional.cross_entropy(lr_, c_in[:, None, None].expand(-1, *lr_.shape[2:]))
                    + nn.functional.cross_entropy(lf, torch.full(lf[:, 0].shape, K, device=dev)))
        od.zero_grad(set_to_none=True)
        dl.backward()
        od.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        one()
    nparams = sum(p.numel() for p in gen.parameters()) + sum(p.numel() for p in disc.parameters())
    return one, nparams


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    p_step, p_n, device = build_project(args.batch)
    try:
        q_step, q_n = build_peer(args.batch)
    except ImportError as e:
        print(f"peer unavailable ({e}); install the bench extra: pip install -e '.[bench]'")
        q_step, q_n = None, 0
    p_t, q_t, ratios = alternate(p_step, q_step, args.rounds, args.steps, warmup=False)
    ratio = median_ratio(ratios)
    print(f"qmri_jax GAN step : {p_n:,} params, {p_t * 1000:.1f} ms/step")
    print(f"PyTorch GAN step  : {q_n:,} params, {q_t * 1000:.1f} ms/step")
    print("per-round ratios: " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"ratio (peer time / project time, median over rounds): {ratio:.2f}x")
    print(json.dumps({"project_step_s": p_t, "peer_step_s": q_t, "ratio": ratio,
                      "round_ratios": ratios, "device": device, "host": host(),
                      "batch": args.batch, "image": [H, W], "project_params": p_n,
                      "peer_params": q_n}))


if __name__ == "__main__":
    main()
