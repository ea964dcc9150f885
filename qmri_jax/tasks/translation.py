"""3D contrast translation GE -> TSE with thick-slice targets: High-to-low and low-to-low training.

The TSE was acquired with slices ``f`` times thicker than the GE's voxels
(:mod:`qmri_jax.data.translation`). Low-to-low (``mode="low_to_low"``) trains a network from the
GE resampled to the thick slices to the thick-slice TSE: the GE's resolution is thrown away.
High-to-low (``mode="high_to_low"``) runs the network at the GE's resolution and reduces its output
by a strided through-plane kernel (:func:`qmri_jax.physics.thick_slices.downsample_slices`, ``f``
taps, stride ``f``) before the L1 loss against the thick slices, so the network learns a TSE at a
resolution that was never acquired. Training patches start at any thin slice (random offsets
between the slices and the patch); the kernel is

* ``fixed``: ``kernel`` (e.g. ``[1/6, 1/3, 1/3, 1/6]`` or ``[1/2, 1/2, 0, 0]``);
* ``moving``: the same, shifted at random by up to ``kernel_shift`` thin slices per example;
* ``learned``: positive weights summing to 1 (a softmax), trained during
  ``kernel_learn_steps = (start, end)`` with the network frozen, and fixed outside them.

Loss: L1 on the thick slices (only those whose kernel taps lie inside the patch) over
``loss_region``: ``"all"`` voxels of the patch (default: the background too, so the network learns
it as the scanner shows it; a 21 x 21 x 3 SSIM window at the brain's edge sees it) or the
``"brain"`` only; plus ``mind_weight`` x the 3D MIND loss (:func:`qmri_jax.losses.mind`: six
neighbours on the three Sobel channels) between the synthetic TSE and the input GE, on the
network's grid.

Inference on whole volumes: overlapping patches fused with Gaussian weights (sigma patch / 6,
stride patch / 3, :func:`qmri_jax.data.patches.fuse_patches`); High-to-low fuses the
high-resolution output and its thick slices (the kernel on each patch) in one pass. Where the
acquired thick-slice TSE is at hand (evaluation; ``--mode=predict`` with
``config.predict.thick_tse``), a second output is made consistent with it by ``consistency``
back-projection steps (:func:`qmri_jax.data.slice_interp.consistent_thin_slices`): the network
gives the through-plane detail, the acquired slices what the GE cannot tell (the subject's T2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qmri_jax import losses as losses_lib
from qmri_jax.data import patches as patches_lib
from qmri_jax.data import slice_interp
from qmri_jax.data import translation as data_lib
from qmri_jax.engine import create_optimizer, create_state
from qmri_jax.engine.state import apply_gradients
from qmri_jax.physics.protocol import get_protocol
from qmri_jax.physics.thick_slices import downsample_slices, valid_slices
from qmri_jax.tasks.base import tree_where
from qmri_jax.tasks.data import data_dir
from qmri_jax.tasks.regression import apply_network, build_model

__all__ = ["TranslationTask", "TranslationSettings", "load_translation_data"]

MODES = ("high_to_low", "low_to_low")
KERNEL_MODES = ("fixed", "moving", "learned")
LOSS_REGIONS = ("all", "brain")


@dataclasses.dataclass(frozen=True)
class TranslationSettings:
    """``config.translation`` (see ``configs/high_to_low.py``)."""

    mode: str = "high_to_low"
    patch: tuple = (32, 32, 32)
    patches_per_epoch: int = 64
    validation_patches: int = 16
    kernel: tuple = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    kernel_offset: int = 0
    kernel_mode: str = "fixed"
    kernel_shift: int = 1
    kernel_learn_steps: tuple = (0, 0)
    mind_weight: float = 0.0
    loss_region: str = "all"
    flip: bool = True
    fusion_sigma: float = 1.0 / 6.0
    fusion_stride: float = 1.0 / 3.0
    eval_batch: int = 4
    consistency: int = 1

    @classmethod
    def from_config(cls, section) -> "TranslationSettings":
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(section).items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config.translation: unknown keys {unknown} (known: {sorted(names)})")
        s = cls(**d)
        for name, allowed in (("mode", MODES), ("kernel_mode", KERNEL_MODES),
                              ("loss_region", LOSS_REGIONS)):
            if getattr(s, name) not in allowed:
                raise ValueError(f"config.translation.{name}={getattr(s, name)!r}: expected one "
                                 f"of {allowed}")
        if len(s.patch) != 3 or min(s.patch) < 1:
            raise ValueError(f"config.translation.patch={s.patch}: expected 3 positive sizes")
        k = np.asarray(s.kernel, float)
        if k.ndim != 1 or np.any(k < 0) or not k.sum() > 0:
            raise ValueError(f"config.translation.kernel={s.kernel}: expected non-negative "
                             "weights, not all zero")
        if s.consistency < 0:
            raise ValueError(f"config.translation.consistency={s.consistency}: expected >= 0 "
                             "back-projection steps (0: the network alone)")
        if s.mind_weight < 0:
            raise ValueError(f"config.translation.mind_weight={s.mind_weight}: expected >= 0")
        return s


def data_settings(config) -> data_lib.TranslationConfig:
    d = config.data
    return data_lib.TranslationConfig(
        protocol=d.protocol, field=d.field, resolution_mm=d.resolution_mm,
        slice_factor=d.slice_factor, num_subjects=d.num_subjects,
        pathology_fraction=d.pathology_fraction, snr=float(d.snr),
        receive_bias=d.receive_bias, transmit_bias=d.transmit_bias, seed=d.seed)


def load_translation_data(config) -> dict:
    """Volumes of every split (TFDS, built once under ``config.data.data_dir``), the training
    patches of each epoch (``train_fn``) and fixed validation patches."""
    dcfg = data_settings(config)
    s = TranslationSettings.from_config(config.translation)
    builder = data_lib.build(dcfg, data_dir(config))
    vols = {sp: data_lib.load_split(builder, sp) for sp in ("train", "validation", "test")}
    kw = dict(patch=tuple(s.patch), factor=dcfg.slice_factor, mode=s.mode,
              num_taps=len(s.kernel), kernel_offset=s.kernel_offset)
    seed = int(config.seed)

    def train_fn(epoch):
        return patches_lib.sample_translation_patches(
            np.random.default_rng([seed, 41, epoch]), vols["train"], s.patches_per_epoch,
            flip=s.flip, **kw)

    val = patches_lib.sample_translation_patches(np.random.default_rng([seed, 43]),
                                                 vols["validation"], s.validation_patches,
                                                 flip=False, **kw)
    return {"train": train_fn(0), "train_fn": train_fn, "validation": val,
            "volumes": vols, "test": vols["test"],
            "protocol": get_protocol(dcfg.protocol).to_dict()}


class TranslationTask:
    """One network (``config.model``: ``highresnet`` or ``unet``, 3D, linear head), one
    optimiser (``config.train``), a thick-slice kernel (learned with its own Adam at
    ``config.train.learning_rate``)."""

    batch_keys = ("input", "target", "mask", "mask_in", "offset")
    targets = ("TSE",)
    load_data = staticmethod(load_translation_data)  # its own data: volumes and 3D patches

    def __init__(self, config):
        self.config = config
        self.s = TranslationSettings.from_config(config.translation)
        self.factor = int(config.data.slice_factor)
        self.h2l = self.s.mode == "high_to_low"
        self.net = build_model(config, head="linear")  # an intensity: signed, unbounded
        feats = self.net.features
        self.size_multiple = 2 ** (len(feats) - 1) if hasattr(self.net, "up") else 1
        steps = int(config.train.num_steps)
        self.tx = create_optimizer(config.train, steps)
        # the kernel trains only in its phase: Adam at the constant base rate (a schedule would
        # count from its first step there, e.g. a warm-up at rate 0)
        self.tx_kernel = optax.adam(float(config.train.learning_rate))
        self.kernel0 = jnp.asarray(self.s.kernel, jnp.float32) / float(sum(self.s.kernel))
        self._predict_jit = jax.jit(self.predict)

    # ---- state -----------------------------------------------------------------------------
    def create_state(self, key, batch):
        variables = self.net.init(key, batch["input"], train=False)
        logits = jnp.log(jnp.maximum(self.kernel0, 1e-6))
        return {"net": create_state(variables["params"], self.tx,
                                    variables.get("batch_stats", {})),
                "kernel": create_state({"logits": logits}, self.tx_kernel)}

    def kernel(self, state):
        """The thick-slice kernel ``[K]`` (sums to 1)."""
        if self.s.kernel_mode == "learned":
            return jax.nn.softmax(state["kernel"].params["logits"])
        return self.kernel0

    def _apply(self, net_state, params, x, train, key=None):
        return apply_network(self.net, params, net_state.batch_stats, x, train, key)

    def thick(self, pred, kernel, offset, num_slices):
        """``pred [B, X, Y, Z, 1]`` -> thick slices ``[B, X, Y, num_slices, 1]``, kernel taps of
        example ``b``'s slice 0 starting at ``offset[b]``."""
        return jax.vmap(lambda p, o: downsample_slices(p, kernel, self.factor, o, num_slices))(
            pred, offset)

    def _loss(self, net_params, logits, state, batch, train, key=None):
        st = {**state, "kernel": state["kernel"].replace(params={"logits": logits})}
        dropout_key = None if key is None else jax.random.fold_in(key, 1)
        pred, stats = self._apply(state["net"], net_params, batch["input"], train, dropout_key)
        mask = batch["mask"]
        if self.s.loss_region == "all":
            mask = jnp.ones_like(mask)
        if self.h2l:
            n = batch["target"].shape[3]
            offset = batch["offset"]
            if train and self.s.kernel_mode == "moving" and self.s.kernel_shift:
                offset = offset + jax.random.randint(key, offset.shape, -self.s.kernel_shift,
                                                     self.s.kernel_shift + 1)
            kern = self.kernel(st)
            lr = self.thick(pred, kern, offset, n)
            ok = jax.vmap(lambda o: valid_slices(n, pred.shape[3], kern.shape[0], self.factor,
                                                 o))(offset)
            mask = mask * ok[:, None, None, :].astype(mask.dtype)
        else:
            lr = pred
        l1 = losses_lib.masked_mean(jnp.abs(lr - batch["target"]), mask)
        total = l1
        mind = jnp.zeros(())
        if self.s.mind_weight > 0:
            mind = losses_lib.mind(pred, batch["input"], batch["mask_in"])
            total = l1 + self.s.mind_weight * mind
        return total, (stats, l1, mind)

    def train_step(self, state, batch, key):
        net, kst = state["net"], state["kernel"]
        grad_fn = jax.value_and_grad(self._loss, argnums=(0, 1), has_aux=True)
        (loss, (stats, l1, mind)), (g_net, g_k) = grad_fn(net.params, kst.params["logits"], state,
                                                          batch, True, key)
        step = net.step + kst.step
        lo, hi = self.s.kernel_learn_steps
        learn_k = jnp.asarray(self.s.kernel_mode == "learned") & (step >= lo) & (step < hi)
        new_net, m_net = apply_gradients(net, g_net, loss, self.tx, 0.0, stats)
        new_k, m_k = apply_gradients(kst, {"logits": g_k}, loss, self.tx_kernel)
        out = {"net": tree_where(learn_k, net, new_net),
               "kernel": tree_where(learn_k, new_k, kst)}
        metrics = {"loss": loss, "loss_l1": l1, "loss_mind": mind,
                   "grad_norm": m_net["grad_norm"], "kernel_phase": learn_k.astype(jnp.float32),
                   "finite": m_net["finite"] & m_k["finite"]}
        return out, metrics

    def eval_step(self, state, batch, key):
        loss, (_, l1, _) = self._loss(state["net"].params, state["kernel"].params["logits"],
                                      state, batch, False)
        return {"loss": l1, "loss_total": loss}

    # ---- inference -------------------------------------------------------------------------
    def predict(self, state, images, key=None):
        """``{"mean": [B, *S, 1]}`` (the network's TSE on the input's grid) and, High-to-low,
        ``"thick"``: its thick slices (the kernel, slice 0 at the patch's first slice)."""
        pred = self._apply(state["net"], state["net"].params, images, False)[0]
        out = {"mean": pred}
        if self.h2l and images.shape[3] % self.factor == 0:
            off = jnp.full((images.shape[0],), self.s.kernel_offset, jnp.int32)
            out["thick"] = self.thick(pred, self.kernel(state), off, images.shape[3] // self.factor)
        return out

    def translate_volume(self, state, volume, thin=None, thick=None):
        """Whole-volume TSE of one input ``volume [X, Y, Z]`` by Gaussian patch fusion:
        ``{"mean": [X, Y, Z]}`` and, High-to-low, ``"thick": [X, Y, Z / f]`` (the network's own
        thick slices). ``thin``: the volume has thin slices (GE; default: High-to-low) and takes
        the training patch, else thick slices and patches ``f`` times thinner in ``z`` (a
        low-to-low network applied to thin slices is ``thin=True``). ``thick``: the acquired
        thick-slice TSE ``[X, Y, Z / f]`` (units of its in-brain 99th percentile, as in
        training): ``"consistent"`` is then ``"mean"`` made consistent with it
        (:meth:`consistent`)."""
        s, f = self.s, self.factor
        thin = self.h2l if thin is None else thin
        patch = tuple(s.patch) if thin else (s.patch[0], s.patch[1], max(1, s.patch[2] // f))
        stride = [max(1, int(p * s.fusion_stride)) for p in patch]
        scales = None
        if self.h2l and thin:
            stride[2] = max(f, stride[2] // f * f)  # thick-slice output: whole thick slices
            scales = {"thick": (1, 1, 1.0 / f)}
        out = patches_lib.fuse_patches(
            lambda x: jax.device_get(self._predict_jit(state, jnp.asarray(x))), volume[..., None],
            patch, tuple(stride), s.fusion_sigma, s.eval_batch, scales)
        out = {k: v[..., 0] for k, v in out.items()}
        if thick is not None:
            if not thin:
                raise ValueError("translate_volume: thick slices given for a thick-slice input; "
                                 "consistency needs the thin-slice output (thin=True)")
            out["consistent"] = self.consistent(state, out["mean"], thick)
        return out

    def consistent(self, state, thin_tse, thick_tse):
        """``thin_tse [X, Y, Z]`` made consistent with the acquired ``thick_tse [X, Y, Z / f]``:
        ``config.translation.consistency`` back-projection steps through the task's kernel
        (:func:`qmri_jax.data.slice_interp.consistent_thin_slices`; 0: unchanged)."""
        return slice_interp.consistent_thin_slices(
            thin_tse, thick_tse, np.asarray(self.kernel(state)), self.factor,
            self.s.kernel_offset, self.s.consistency)

    def evaluate(self, state, data, out_dir):
        """Test-split report (``metrics.json``, figure) of :mod:`qmri_jax.evaluation.translation`."""
        from qmri_jax.evaluation import translation as report
        return report.evaluate_translation(self, state, data["test"], out_dir)
