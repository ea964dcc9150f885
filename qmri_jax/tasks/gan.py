"""Physics-informed conditional GAN for contrast transfer: maps in the middle.

A U-Net generator takes one weighted image plus its echo and repetition times and predicts PD, T1
and T2 maps (PD >= 0, T1 in [10, 10000] ms, T2 in [2, 5000] ms); the spin-echo layer
``S = PD (1 - e^{-TR/T1}) e^{-TE/T2}`` (:func:`qmri_jax.physics.signals.spin_echo`) then
synthesises the image at any target (TE, TR). The maps do not depend on the target: one set of
maps serves every target contrast. A multi-class PatchGAN (:class:`qmri_jax.models.PatchGAN`,
softmax over the K acquired contrasts plus "synthetic") tells which contrast an image has.

Each training example is one contrast of one slice (the input, drawn per example) and a target
contrast (another one, drawn per example). The generator's loss (``config.gan``, each part
switchable by its weight):

- ``recon_weight``: MAE of the input re-synthesised through the maps (the cycle through the maps),
  over the whole image (the background too: the maps of empty space must synthesise nothing);
- ``adv_weight``: cross-entropy of the discriminator's patches of the synthesised target for the
  target's class (unpaired: the target image of that slice is never seen);
- ``paired_weight``: MAE of the synthesised target against the acquired target of the same slice,
  over the whole image (paired data only; 0 in the paper's setting);
- ``maps_weight``: MAE of log T1, log T2 and PD / PD_true against the true maps (synthetic data
  only; 0 in the paper's setting).

The discriminator learns the real input's class and "synthetic" for the generated target, on
patches whose cell is at least half foreground. Both networks are updated every step; the first
``gen_pretrain_steps`` train the generator alone without the adversarial term (towards the identity
``input -> maps -> input``), the next ``disc_pretrain_steps`` the discriminator alone. Slices are
shifted by up to ``shift_px`` pixels. Images are divided by their 99th percentile before the
networks (PD is multiplied back), so the maps do not depend on the scanner's scale. With
``data_consistency`` (default off) PD is solved at inference from the input given the
generator's T1 and T2, so that the input is re-synthesised exactly (:meth:`GanTask.maps_from`);
on the synthetic test split it passes the input's noise on (PSNR -1.2 dB, PD error 4.8 -> 5.2%),
on the in-vivo scan it changed little.

With ``config.train.ema_decay`` > 0 the generator's weights are averaged (EMA) during training and
the average is what :meth:`GanTask.maps_from` (evaluation, transfer, prediction) uses, with the
batch-norm statistics gathered by the live weights. Off in ``configs/gan.py``: at 0.998 the
validation transfer MSE was 0.0173 against 0.0128 without it (``docs/results.md``).

The validation loss (checkpoint selection) is the MSE of contrast transfer from every contrast to
every other, each image in units of the target's 99th percentile.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qmri_jax.engine import create_optimizer, create_state
from qmri_jax.engine.state import apply_gradients, eval_params
from qmri_jax.models import create_model
from qmri_jax.physics.signals import spin_echo
from qmri_jax.tasks.base import tree_where
from qmri_jax.tasks.data import input_protocol

__all__ = ["GanTask", "GanConfig", "synthesize", "image_scale", "MAP_BOUNDS"]

#: Bounds of the generator's maps (ms): log-sigmoid outputs between them.
MAP_BOUNDS = {"T1": (10.0, 10000.0), "T2": (2.0, 5000.0)}
TARGETS = ("PD", "T1", "T2")


@dataclasses.dataclass(frozen=True)
class GanConfig:
    """``config.gan`` (see ``configs/gan.py``)."""

    disc_features: tuple = (32, 64, 128)
    disc_extra_convs: int = 1
    disc_noise: float = 0.05
    disc_learning_rate: float = 5e-4
    recon_weight: float = 1.0
    adv_weight: float = 0.05
    paired_weight: float = 0.0
    maps_weight: float = 0.0
    gen_pretrain_steps: int = 0
    disc_pretrain_steps: int = 0
    shift_px: int = 0
    data_consistency: bool = False

    @classmethod
    def from_config(cls, section) -> "GanConfig":
        d = dict(section)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.gan: unknown keys {unknown} (known: {sorted(names)})")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        cfg = cls(**d)
        for k in ("recon_weight", "adv_weight", "paired_weight", "maps_weight", "disc_noise"):
            if getattr(cfg, k) < 0:
                raise ValueError(f"config.gan.{k}={getattr(cfg, k)}: expected >= 0")
        return cfg


def synthesize(maps, te_ms, tr_ms):
    """Spin-echo images ``[B, H, W]`` from ``maps [B, H, W, 3]`` (PD, T1, T2) at per-example
    ``te_ms``, ``tr_ms`` ``[B]``."""
    return spin_echo(maps[..., 0], maps[..., 1], maps[..., 2], tr_ms[:, None, None],
                     te_ms[:, None, None])


def image_scale(x):
    """Per-example 99th percentile of ``x [B, H, W]`` (``[B]``, at least 1e-6; no gradient)."""
    s = jnp.percentile(x.reshape(x.shape[0], -1), 99.0, axis=1)
    return jax.lax.stop_gradient(jnp.maximum(s, 1e-6))


def _bounded(z, name):
    lo, hi = (np.log(v) for v in MAP_BOUNDS[name])
    return jnp.exp(lo + (hi - lo) * jax.nn.sigmoid(z))


def _select(images, idx):
    """``images [B, H, W, K]``, ``idx [B]`` -> ``[B, H, W]``."""
    return jnp.take_along_axis(images, idx[:, None, None, None], axis=-1)[..., 0]


def _shift(arrays, key, max_px):
    """Rolls every ``[B, H, W, ...]`` array of ``arrays`` by the same random (dy, dx) per example,
    each in ``[-max_px, max_px]``."""
    b = next(iter(arrays.values())).shape[0]
    d = jax.random.randint(key, (b, 2), -max_px, max_px + 1)
    roll = jax.vmap(lambda x, s: jnp.roll(x, (s[0], s[1]), axis=(0, 1)))
    return {k: roll(v, d) for k, v in arrays.items()}


class GanTask:
    """Generator (``config.model``, a U-Net with a linear head) and PatchGAN discriminator
    (``config.gan``), two optimisers (``config.train`` and its learning rate
    ``gan.disc_learning_rate`` for the discriminator)."""

    batch_keys = ("images", "targets", "mask")
    targets = TARGETS
    evaluate_best = True  # the report uses the checkpoint with the best validation transfer MSE

    def __init__(self, config):
        self.config = config
        self.cfg = GanConfig.from_config(config.get("gan", {}))
        if tuple(config.targets) != TARGETS:
            raise ValueError(f"config.targets={tuple(config.targets)}: the GAN predicts {TARGETS}")
        self.protocol = input_protocol(config)
        bad = [k for k in self.protocol.kinds if k != "se"]
        if bad:
            raise ValueError(f"config.data.protocol={config.data.protocol!r}: the GAN's signal "
                             f"layer is spin echo; the protocol has kinds {bad}")
        self.num_contrasts = len(self.protocol)
        self.te = jnp.asarray(self.protocol.te_ms, jnp.float32)
        self.tr = jnp.asarray(self.protocol.tr_ms, jnp.float32)
        m = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.model).items()}
        name = m.pop("name")
        m.pop("head", None)
        self.gen = create_model(name, out_scale=(1.0, 1.0, 1.0), head="linear", **m)
        self.size_multiple = 2 ** (len(self.gen.features) - 1)
        c = self.cfg
        self.disc = create_model("patchgan", num_classes=self.num_contrasts + 1,
                                 features=tuple(c.disc_features),
                                 extra_convs=c.disc_extra_convs, noise_std=c.disc_noise)
        steps = int(config.train.num_steps)
        self.ema_decay = float(config.train.ema_decay)
        self.tx_gen = create_optimizer(config.train, steps)
        dtrain = config.train.copy_and_resolve_references()
        with dtrain.unlocked():
            dtrain.learning_rate = c.disc_learning_rate
        self.tx_disc = create_optimizer(dtrain, steps)

    # ---- networks ------------------------------------------------------------------------------
    def _gen_apply(self, gstate, params, x, te, tr, train):
        s = image_scale(x)
        b, h, w = x.shape
        inp = jnp.stack([x / s[:, None, None],
                         jnp.broadcast_to((te / 100.0)[:, None, None], (b, h, w)),
                         jnp.broadcast_to((tr / 1000.0)[:, None, None], (b, h, w))], -1)
        variables = {"params": params}
        stats = gstate.batch_stats
        if stats:
            variables["batch_stats"] = stats
        if train and stats:
            z, upd = self.gen.apply(variables, inp, train=True, mutable=["batch_stats"])
            stats = upd["batch_stats"]
        else:
            z = self.gen.apply(variables, inp, train=False)
        maps = jnp.stack([s[:, None, None] * jax.nn.softplus(z[..., 0]),
                          _bounded(z[..., 1], "T1"), _bounded(z[..., 2], "T2")], -1)
        return maps, stats

    def maps_from(self, state, x, te_ms, tr_ms, data_consistency=None):
        """Maps ``[B, H, W, 3]`` (PD in the units of ``x``, T1 and T2 in ms) from one image per
        example ``x [B, H, W]`` acquired at ``te_ms``, ``tr_ms`` ``[B]``.

        With ``data_consistency`` (default ``config.gan.data_consistency``) PD is not the
        generator's but the one that re-synthesises the input exactly given its T1 and T2
        (``PD = x / ((1 - e^{-TR/T1}) e^{-TE/T2})``, the linear parameter in closed form, as a
        variable-projection fit solves it): every transfer is then the input times the
        generator's relative weighting, so structure the generator gets wrong on unfamiliar
        images (real scans) is taken from the input."""
        g = state["gen"]
        te, tr = jnp.asarray(te_ms, jnp.float32), jnp.asarray(tr_ms, jnp.float32)
        maps = self._gen_apply(g, eval_params(g, self.ema_decay), x, te, tr, False)[0]
        dc = self.cfg.data_consistency if data_consistency is None else data_consistency
        if dc:
            w = synthesize(maps.at[..., 0].set(1.0), te, tr)
            maps = maps.at[..., 0].set(jnp.maximum(x, 0.0) / jnp.maximum(w, 1e-3))
        return maps

    def transfer(self, state, x, te_in, tr_in, te_out, tr_out):
        """The image ``x [B, H, W]`` acquired at (``te_in``, ``tr_in``) synthesised at
        (``te_out``, ``tr_out``) (each ``[B]``, ms)."""
        return synthesize(self.maps_from(state, x, te_in, tr_in), jnp.asarray(te_out, jnp.float32),
                          jnp.asarray(tr_out, jnp.float32))

    def class_probs(self, state, x):
        """Discriminator class probabilities per patch ``[B, h, w, K + 1]`` of images
        ``x [B, H, W]`` (each divided by its 99th percentile first)."""
        d = state["disc"]
        x = x / image_scale(x)[:, None, None]
        logits = self.disc.apply({"params": d.params}, x[..., None])
        return jax.nn.softmax(logits, -1)

    def patch_mask(self, mask):
        """1 for the discriminator's output cells (its grid: ``ceil(size / 2)`` per strided block)
        that are at least half inside ``mask [B, H, W]``."""
        m = mask
        for _ in range(len(self.cfg.disc_features)):
            h, w = m.shape[1:]
            m = jnp.pad(m, ((0, 0), (0, h % 2), (0, w % 2)))
            m = m.reshape(m.shape[0], m.shape[1] // 2, 2, m.shape[2] // 2, 2).mean((2, 4))
        return (m >= 0.5).astype(jnp.float32)

    # ---- protocol --------------------------------------------------------------------------
    def create_state(self, key, batch):
        kg, kd, kn = jax.random.split(key, 3)
        x = batch["images"][..., 0]
        inp = jnp.zeros((*x.shape, 3), jnp.float32)
        gv = self.gen.init({"params": kg}, inp, train=False)
        dv = self.disc.init({"params": kd, "noise": kn}, x[..., None], train=False)
        return {"gen": create_state(gv["params"], self.tx_gen, gv.get("batch_stats", {})),
                "disc": create_state(dv["params"], self.tx_disc),
                "step": jnp.zeros((), jnp.int32)}

    def _draw(self, key, b):
        k1, k2 = jax.random.split(key)
        c_in = jax.random.randint(k1, (b,), 0, self.num_contrasts)
        c_out = (c_in + jax.random.randint(k2, (b,), 1, self.num_contrasts)) % self.num_contrasts
        return c_in, c_out

    def _ce(self, logits, label, pmask):
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.broadcast_to(label[:, None, None], logits.shape[:-1]))
        acc = (jnp.argmax(logits, -1) == label[:, None, None]).astype(jnp.float32)
        n = jnp.maximum(jnp.sum(pmask), 1.0)
        return jnp.sum(ce * pmask) / n, jnp.sum(acc * pmask) / n

    def train_step(self, state, batch, key):
        c = self.cfg
        k_draw, k_shift, k_d1, k_d2, k_d3 = jax.random.split(key, 5)
        arrays = {"images": batch["images"], "targets": batch["targets"], "mask": batch["mask"]}
        if c.shift_px > 0:
            arrays = _shift(arrays, k_shift, c.shift_px)
        images, true_maps, mask = arrays["images"], arrays["targets"], arrays["mask"]
        b = images.shape[0]
        c_in, c_out = self._draw(k_draw, b)
        x_in, x_out = _select(images, c_in), _select(images, c_out)
        te_in, tr_in, te_out, tr_out = self.te[c_in], self.tr[c_in], self.te[c_out], self.tr[c_out]
        s_in = image_scale(x_in)[:, None, None]
        pmask = self.patch_mask(mask)
        step = state["step"]
        gp, dp = c.gen_pretrain_steps, c.disc_pretrain_steps
        adv_on = step >= gp + dp
        gen, disc = state["gen"], state["disc"]

        def g_loss(params):
            maps, stats = self._gen_apply(gen, params, x_in, te_in, tr_in, True)
            recon = synthesize(maps, te_in, tr_in)
            fake = synthesize(maps, te_out, tr_out)
            parts = {"recon": jnp.mean(jnp.abs(recon - x_in) / s_in)}
            fake_n = fake / image_scale(fake)[:, None, None]
            logits = self.disc.apply({"params": disc.params}, fake_n[..., None], train=True,
                                     rngs={"noise": k_d1})
            parts["adv"], _ = self._ce(logits, c_out, pmask)
            parts["paired"] = jnp.mean(jnp.abs(fake - x_out) / s_in)
            brain = mask * jnp.all(true_maps > 0, -1)
            safe = jnp.where(true_maps > 0, true_maps, 1.0)
            err = jnp.stack([maps[..., 0] / safe[..., 0] - 1,
                             jnp.log(maps[..., 1] / safe[..., 1]),
                             jnp.log(maps[..., 2] / safe[..., 2])], -1)
            parts["maps"] = jnp.sum(jnp.abs(err) * brain[..., None]) / jnp.maximum(
                3 * jnp.sum(brain), 1.0)
            total = (c.recon_weight * parts["recon"] + c.adv_weight * adv_on * parts["adv"]
                     + c.paired_weight * parts["paired"] + c.maps_weight * parts["maps"])
            return total, (parts, stats, jax.lax.stop_gradient(fake_n))

        (gl, (parts, stats, fake_n)), gg = jax.value_and_grad(g_loss, has_aux=True)(gen.params)
        new_gen, gm = apply_gradients(gen, gg, gl, self.tx_gen, self.ema_decay, stats)

        def d_loss(params):
            real_n = (x_in / s_in)[..., None]
            lr = self.disc.apply({"params": params}, real_n, train=True, rngs={"noise": k_d2})
            lf = self.disc.apply({"params": params}, fake_n[..., None], train=True,
                                 rngs={"noise": k_d3})
            ce_r, acc_r = self._ce(lr, c_in, pmask)
            ce_f, acc_f = self._ce(lf, jnp.full((b,), self.num_contrasts), pmask)
            return 0.5 * (ce_r + ce_f), 0.5 * (acc_r + acc_f)

        (dl, acc), dg = jax.value_and_grad(d_loss, has_aux=True)(disc.params)
        new_disc, dm = apply_gradients(disc, dg, dl, self.tx_disc)
        g_on = (step < gp) | adv_on
        d_on = step >= gp
        new_state = {"gen": tree_where(g_on, new_gen, gen),
                     "disc": tree_where(d_on, new_disc, disc), "step": step + 1}
        metrics = {"loss": gl, "disc_loss": dl, "disc_acc": acc, "grad_norm": gm["grad_norm"],
                   "disc_grad_norm": dm["grad_norm"], "finite": gm["finite"] & dm["finite"]}
        metrics.update({f"loss_{k}": v for k, v in parts.items()})
        return new_state, metrics

    def transfer_all(self, state, images):
        """Every contrast to every other: ``images [B, H, W, K]`` -> ``[K_in, B, H, W, K_out]``
        synthesised images, and the maps ``[K_in, B, H, W, 3]``."""
        b = images.shape[0]
        maps = jnp.stack([self.maps_from(state, images[..., i], jnp.full((b,), self.te[i]),
                                         jnp.full((b,), self.tr[i]))
                          for i in range(self.num_contrasts)])
        out = jnp.stack([synthesize(maps.reshape(-1, *maps.shape[2:]),
                                    jnp.full((maps.shape[0] * b,), self.te[j]),
                                    jnp.full((maps.shape[0] * b,), self.tr[j]))
                         for j in range(self.num_contrasts)], -1)
        return out.reshape(self.num_contrasts, b, *out.shape[1:]), maps

    def eval_step(self, state, batch, key):
        """``loss``: MSE of transfer between every pair of different contrasts (each image over the
        target's 99th percentile, inside the mask); ``recon``: the same for input = target."""
        images, mask = batch["images"], batch["mask"]
        pred, _ = self.transfer_all(state, images)
        ref = jnp.stack([image_scale(images[..., j]) for j in range(self.num_contrasts)], -1)
        err = ((pred - images[None]) / ref[None, :, None, None, :]) ** 2
        err = jnp.sum(err * mask[None, ..., None], (1, 2, 3)) / jnp.maximum(jnp.sum(mask), 1.0)
        off = 1.0 - jnp.eye(self.num_contrasts)
        return {"loss": jnp.sum(err * off) / jnp.sum(off), "recon": jnp.mean(jnp.diag(err))}

    def predict(self, state, images, key=None):
        """Maps from each acquired contrast of ``images [B, H, W, K]`` (the training protocol's
        order): ``mean`` and ``std`` over the K single-contrast estimates ``[B, H, W, 3]``
        (PD, T1, T2), ``samples`` the estimates ``[K, B, H, W, 3]``."""
        _, maps = self.transfer_all(state, images)
        return {"mean": jnp.mean(maps, 0), "std": jnp.std(maps, 0), "samples": maps}

    def evaluate(self, state, data, out_dir):
        """The contrast-transfer report on ``data["test"]`` (see
        :mod:`qmri_jax.evaluation.transfer`)."""
        from qmri_jax.evaluation import transfer
        os.makedirs(out_dir, exist_ok=True)
        return transfer.write_transfer_report(self, state, data["test"], out_dir)
