"""Acquisition protocols as pytrees, the named protocols from the literature, and ``simulate``.

A :class:`Protocol` is an ordered set of weighted images. Each image has a sequence *kind* (static,
part of the tree structure) and its timing (array leaves, so a protocol can be traced, batched or
differentiated): ``tr_ms``, ``te_ms``, ``ti_ms``, ``flip_deg``, each ``[N]``.

Sequence kinds and the signal equation each uses (see :mod:`qmri_jax.physics.signals`):

========== ===================================================================== ==================
kind       equation                                                              maps used
========== ===================================================================== ==================
``se``     ``PD (1 - e^{-TR/T1}) e^{-TE/T2}``                                    PD, T1, T2
``ir``     ``|PD (1 - (1+k) e^{-TI/T1} + k e^{-TR/T1}) e^{-TE/T2}|``            PD, T1, T2, k
``ir_signed`` the same without the magnitude (phase-sensitive reconstruction)     PD, T1, T2, k
``flair``  as ``ir`` (long TI)                                                   PD, T1, T2, k
``ir_fse`` ``|PD (1 - B e^{-TI/T1})|``                                           PD, T1, B
``spgr``   ``PD sin a (1-E1)/(1 - cos a E1) e^{-TE/T2*}``                        PD, T1, (T2s, B1)
``mprage`` steady-state MPRAGE k-space centre (:func:`signals.mprage`; TR between PD, T1, (k, T2s,
           inversions, TI to the centre pulse, 176 pulses 7.1 ms apart)           B1)
``space_flair`` 3D FLAIR, variable-angle FSE readout (:mod:`physics.space`): the  PD, T1, T2, k
           ``ir`` longitudinal factor times the train's echo at the effective TE
========== ===================================================================== ==================

Missing optional maps default to ``k = 1`` (perfect inversion), ``B = 2``, no T2*, ``B1 = 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.physics import signals, space
from qmri_jax.physics.units import MAP_UNITS  # re-exported

__all__ = ["Protocol", "SEQUENCE_KINDS", "simulate", "get_protocol", "list_protocols", "MAP_UNITS"]

SEQUENCE_KINDS = ("se", "ir", "ir_signed", "flair", "ir_fse", "spgr", "mprage", "space_flair")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Protocol:
    """An ordered set of weighted images with their sequence parameters.

    Attributes:
      tr_ms, te_ms, ti_ms, flip_deg: ``[N]`` float arrays (pytree leaves). Unused entries are 0
        (``ti_ms`` of a spin echo) or 90 (``flip_deg`` of SE/IR).
      kinds: ``N`` sequence kinds from :data:`SEQUENCE_KINDS` (static).
      names: ``N`` image names, e.g. ``("T1w", "T2w", ...)`` (static).
      name: protocol name (static).
    """

    tr_ms: jax.Array
    te_ms: jax.Array
    ti_ms: jax.Array
    flip_deg: jax.Array
    kinds: tuple[str, ...] = dataclasses.field(metadata=dict(static=True), default=())
    names: tuple[str, ...] = dataclasses.field(metadata=dict(static=True), default=())
    name: str = dataclasses.field(metadata=dict(static=True), default="custom")

    def __post_init__(self):
        n = len(self.kinds)
        for kind in self.kinds:
            if kind not in SEQUENCE_KINDS:
                raise ValueError(f"Protocol {self.name!r}: unknown sequence kind {kind!r}; "
                                 f"expected one of {SEQUENCE_KINDS}")
        if len(self.names) != n:
            raise ValueError(f"Protocol {self.name!r}: {len(self.names)} names for {n} kinds")
        for field in ("tr_ms", "te_ms", "ti_ms", "flip_deg"):
            value = getattr(self, field)
            shape = getattr(value, "shape", None)
            # Inside jax transformations the leaves may be tracers or placeholders: only check arrays.
            if shape is not None and len(shape) == 1 and shape[0] != n:
                raise ValueError(f"Protocol {self.name!r}: field {field} has {shape[0]} entries, "
                                 f"expected {n} (one per image)")
        if "mprage" in self.kinds or "space_flair" in self.kinds:
            try:  # concrete timing only (not under a transformation)
                tr = np.asarray(self.tr_ms, dtype=np.float64)
                ti = np.asarray(self.ti_ms, dtype=np.float64)
                te = np.asarray(self.te_ms, dtype=np.float64)
            except (TypeError, ValueError, jax.errors.TracerArrayConversionError,
                    jax.errors.ConcretizationTypeError):
                return
            for i, kind in enumerate(self.kinds):
                if kind == "mprage" and tr.shape == (n,):
                    _check_mprage(self.name, self.names[i], float(tr[i]), float(ti[i]))
                if kind == "space_flair" and te.shape == (n,):
                    _check_space(self.name, self.names[i], float(te[i]))

    @classmethod
    def create(cls, kinds, *, tr_ms, te_ms=0.0, ti_ms=0.0, flip_deg=90.0, names=None,
               name="custom") -> "Protocol":
        """Builds a protocol; scalar timing values are broadcast to every image.

        Args:
          kinds: a kind or a sequence of kinds (one per image).
          tr_ms, te_ms, ti_ms, flip_deg: scalars or length-N sequences.
          names: image names (default ``kind-i``).
          name: the protocol's name.
        """
        if isinstance(kinds, str):
            lengths = [np.size(v) for v in (tr_ms, te_ms, ti_ms, flip_deg)]
            kinds = (kinds,) * max(lengths)
        kinds = tuple(kinds)
        n = len(kinds)

        def vec(field, v):
            a = np.asarray(v, dtype=np.float32)
            if a.ndim == 0:
                a = np.full((n,), a, np.float32)
            if a.shape != (n,):
                raise ValueError(f"Protocol {name!r}: {field} has shape {a.shape}, expected ({n},)")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"Protocol {name!r}: {field} has non-finite values {a}")
            return jnp.asarray(a)

        if names is None:
            names = tuple(f"{k}-{i}" for i, k in enumerate(kinds))
        return cls(vec("tr_ms", tr_ms), vec("te_ms", te_ms), vec("ti_ms", ti_ms),
                   vec("flip_deg", flip_deg), kinds=kinds, names=tuple(names), name=name)

    def __len__(self) -> int:
        return len(self.kinds)

    def subset(self, index) -> "Protocol":
        """The protocol restricted to the images ``index`` (a list of ints), in that order."""
        index = [int(i) for i in index]
        return Protocol(self.tr_ms[jnp.asarray(index)], self.te_ms[jnp.asarray(index)],
                        self.ti_ms[jnp.asarray(index)], self.flip_deg[jnp.asarray(index)],
                        kinds=tuple(self.kinds[i] for i in index),
                        names=tuple(self.names[i] for i in index), name=self.name)

    def to_dict(self) -> dict:
        """A JSON-serialisable description (for sidecars and checkpoints)."""
        return {
            "name": self.name,
            "images": [
                {"name": n, "kind": k, "tr_ms": float(tr), "te_ms": float(te), "ti_ms": float(ti),
                 "flip_deg": float(fa)}
                for n, k, tr, te, ti, fa in zip(self.names, self.kinds, np.asarray(self.tr_ms),
                                                 np.asarray(self.te_ms), np.asarray(self.ti_ms),
                                                 np.asarray(self.flip_deg))
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Protocol":
        images = d["images"]
        return cls.create(
            [im["kind"] for im in images], tr_ms=[im["tr_ms"] for im in images],
            te_ms=[im["te_ms"] for im in images], ti_ms=[im["ti_ms"] for im in images],
            flip_deg=[im["flip_deg"] for im in images], names=[im["name"] for im in images],
            name=d.get("name", "custom"))


def _check_mprage(protocol_name, image_name, tr, ti):
    esp, n = signals.MPRAGE_ECHO_SPACING_MS, signals.MPRAGE_READOUT_PULSES
    t_a = ti - (n // 2) * esp
    t_d = tr - t_a - n * esp
    if t_a < 0 or t_d < 0:
        raise ValueError(
            f"Protocol {protocol_name!r}: image {image_name!r} (mprage) TR {tr:g} / TI "
            f"{ti:g} ms does not fit its readout of {n} pulses {esp:g} ms apart: expected TI >= "
            f"{(n // 2) * esp:g} ms and TR >= TI + {(n - n // 2) * esp:g} ms")


def _check_space(protocol_name, image_name, te):
    esp, n = space.SPACE_ECHO_SPACING_MS, space.SPACE_MAX_ECHOES
    if not esp <= te <= n * esp:
        raise ValueError(f"Protocol {protocol_name!r}: image {image_name!r} (space_flair) effective "
                         f"TE {te:g} ms: expected {esp:g} to {n * esp:g} ms (echoes 1-{n} of the "
                         f"modelled train, {esp:g} ms apart)")


def _required(maps, key, kind):
    if key not in maps:
        raise KeyError(f"simulate: sequence kind {kind!r} needs map {key!r}; got maps {sorted(maps)}")
    return jnp.asarray(maps[key])


def _efficiency(maps):
    """The inversion efficiency ``k`` of ``maps``: ``"k"``, else ``"B" - 1`` (the IR-FSE
    inversion factor ``B = 1 + k``), else 1 (a perfect inversion)."""
    if "k" in maps:
        return maps["k"]
    return maps["B"] - 1.0 if "B" in maps else 1.0


def _one_image(maps, kind, tr, te, ti, flip):
    if kind == "se":
        return signals.spin_echo(_required(maps, "PD", kind), _required(maps, "T1", kind),
                                 _required(maps, "T2", kind), tr, te)
    if kind in ("ir", "ir_signed", "flair"):
        return signals.inversion_recovery(
            _required(maps, "PD", kind), _required(maps, "T1", kind), _required(maps, "T2", kind),
            tr, te, ti, k=_efficiency(maps), magnitude=(kind != "ir_signed"))
    if kind == "ir_fse":
        b = maps["B"] if "B" in maps else 1.0 + _efficiency(maps)
        return signals.ir_fse_magnitude(_required(maps, "PD", kind), _required(maps, "T1", kind),
                                        ti, b=b)
    if kind == "spgr":
        return signals.spoiled_gradient_echo(
            _required(maps, "PD", kind), _required(maps, "T1", kind), tr, flip, te_ms=te,
            t2s_ms=maps.get("T2s", jnp.inf), b1=maps.get("B1", 1.0))
    if kind == "mprage":
        return signals.mprage(_required(maps, "PD", kind), _required(maps, "T1", kind), tr, ti,
                              flip, te_ms=te, t2s_ms=maps.get("T2s", jnp.inf),
                              k=_efficiency(maps), b1=maps.get("B1", 1.0))
    if kind == "space_flair":
        return space.space_flair(_required(maps, "PD", kind), _required(maps, "T1", kind),
                                 _required(maps, "T2", kind), tr, te, ti, k=_efficiency(maps))
    raise ValueError(f"unknown sequence kind {kind!r}")


def simulate(maps: Mapping[str, jax.Array], protocol: Protocol) -> jax.Array:
    """Weighted images of a protocol from parameter maps.

    Args:
      maps: dict of maps (``"PD"``, ``"T1"`` in ms, ``"T2"`` in ms, optional ``"k"``, ``"B"``,
        ``"T2s"``, ``"B1"``), each ``[...]`` (e.g. ``[H, W]`` or ``[B, H, W]``), broadcastable.
        The inversion is one quantity in two forms, ``B = 1 + k``: every IR kind takes its own
        (``k``; ``B`` for ``ir_fse``) or else the other (default ``k = 1``, ``B = 2``).
      protocol: the :class:`Protocol` with ``N`` images.

    Returns:
      Noise-free images ``[..., N]`` (image axis last, in protocol order).
    """
    images = [
        _one_image(maps, kind, protocol.tr_ms[i], protocol.te_ms[i], protocol.ti_ms[i],
                   protocol.flip_deg[i])
        for i, kind in enumerate(protocol.kinds)
    ]
    shape = jnp.broadcast_shapes(*[im.shape for im in images])
    return jnp.stack([jnp.broadcast_to(im, shape) for im in images], axis=-1)


# --------------------------------------------------------------------------------------------------
# Named protocols. Each builder documents its source; `get_protocol` looks them up by name.


def _four_contrast_brain() -> Protocol:
    """T1w/T2w/PDw spin echo + FLAIR, the four-contrast brain protocol of the synthetic-MRI
    literature (e.g. the qMRI U-Net thesis data): T1w SE TR 500/TE 10, T2w SE 4500/100,
    PDw SE 8000/10, FLAIR IR 15000/100/TI 3000 (ms)."""
    return Protocol.create(
        ("se", "se", "se", "flair"), tr_ms=[500, 4500, 8000, 15000], te_ms=[10, 100, 10, 100],
        ti_ms=[0, 0, 0, 3000], names=("T1w", "T2w", "PDw", "FLAIR"), name="four_contrast_brain")


def _ir_fse_7ti() -> Protocol:
    """IR-FSE T1 mapping with 7 inversion times (TR 10000, TE 7.14 ms;
    TI 50, 100, 250, 500, 850, 1500, 2500 ms), as in the qMRI Diffusor paper."""
    ti = [50, 100, 250, 500, 850, 1500, 2500]
    return Protocol.create("ir_fse", tr_ms=10000, te_ms=7.14, ti_ms=ti,
                           names=tuple(f"TI{t}" for t in ti), name="ir_fse_7ti")


def _nist_vir() -> Protocol:
    """The NIST/ISMRM system phantom variable-inversion-recovery protocol (Siemens Skyra 3 T,
    MR-BIAS test set A): IR-TSE, TR 4500 ms, TE 6.9 ms,
    TI 35, 75, 100, 125, 150, 250, 1000, 1500, 2000, 3000 ms."""
    ti = [35, 75, 100, 125, 150, 250, 1000, 1500, 2000, 3000]
    return Protocol.create("ir", tr_ms=4500, te_ms=6.9, ti_ms=ti,
                           names=tuple(f"TI{t}" for t in ti), name="nist_vir")


def _nist_mse() -> Protocol:
    """The NIST/ISMRM phantom multi-echo spin echo: 32 echoes TE 10..320 ms, TR 5000 ms."""
    te = list(range(10, 330, 10))
    return Protocol.create("se", tr_ms=5000, te_ms=te, names=tuple(f"TE{t}" for t in te),
                           name="nist_mse")


def _nist_vfa() -> Protocol:
    """The NIST/ISMRM phantom variable-flip-angle 3D SPGR: flip 2..30 deg, TR 7.3, TE 3.21 ms."""
    fa = [2, 5, 10, 15, 20, 25, 30]
    return Protocol.create("spgr", tr_ms=7.3, te_ms=3.21, flip_deg=fa,
                           names=tuple(f"FA{f}" for f in fa), name="nist_vfa")


def _qmrlab_ir() -> Protocol:
    """The in-vivo inversion recovery of the qMRLab demo data (``../shared/invivo/ir``, its JSON
    sidecar): magnitude, TR 2500 ms, TI 350-1700 ms (9); TE not stated (0: absorbed in PD)."""
    ti = [350, 500, 650, 800, 950, 1100, 1250, 1400, 1700]
    return Protocol.create("ir", tr_ms=2500, te_ms=0.0, ti_ms=ti,
                           names=tuple(f"TI{t}" for t in ti), name="qmrlab_ir")


def _qmrlab_mtsat() -> Protocol:
    """The 3D spoiled gradient echo PDw / T1w pair of the qMRLab MTsat demo
    (``../shared/invivo/mtsat``, its JSON sidecars): PDw 6 deg / TR 28 ms, T1w 20 deg / TR 18 ms;
    TE not stated (0). The MT-weighted volume is not part of it (no MT model here)."""
    return Protocol.create("spgr", tr_ms=[28, 18], te_ms=0.0, flip_deg=[6, 20],
                           names=("PDw", "T1w"), name="qmrlab_mtsat")


def _pelvis_se5() -> Protocol:
    """The five spin-echo contrasts of the physics-informed contrast-transfer GAN (100 pelvic
    patients; TE/TR in ms): T2w 75/4500, T2w 120/4500, T1w 8/400, T1w 8/750, PDw 8/4500."""
    return Protocol.create("se", tr_ms=[4500, 4500, 400, 750, 4500], te_ms=[75, 120, 8, 8, 8],
                           names=("T2w_TE75", "T2w_TE120", "T1w_TR400", "T1w_TR750", "PDw"),
                           name="pelvis_se5")


def _qiu_mprage_gre_flair() -> Protocol:
    """The inputs of Qiu et al. (3 T): MPRAGE TR 1900 / TI 900 / TE 2.93 ms, 9 deg (176 readout
    pulses 7.1 ms apart, assumed: the paper gives no readout); spoiled GRE TR 3 / TE 1.5 ms,
    18 deg (TE assumed); 3D FLAIR (SPACE) TR 4800 / TI 1800 / effective TE 352 ms, modelled with a
    variable-angle echo train (:mod:`qmri_jax.physics.space`; its schedule is assumed). As a plain
    spin-echo TE, 352 ms would leave white matter darker than the nulled CSF."""
    return Protocol.create(("mprage", "spgr", "space_flair"), tr_ms=[1900, 3, 4800],
                           te_ms=[2.93, 1.5, 352], ti_ms=[900, 0, 1800], flip_deg=[9, 18, 90],
                           names=("MPRAGE", "GRE", "FLAIR"), name="qiu_mprage_gre_flair")


def _ge_tse_3d() -> Protocol:
    """The GE -> TSE translation pair (3 T, assumed values: the High-to-low paper's exact
    parameters are not used): a T1-weighted 3D spoiled gradient echo (TR 20 / TE 4.9 ms, 20 deg,
    isotropic) and a T2-weighted turbo spin echo (TR 5000 / TE 100 ms, modelled as a single spin
    echo) acquired with thick slices (:mod:`qmri_jax.data.translation`)."""
    return Protocol.create(("spgr", "se"), tr_ms=[20, 5000], te_ms=[4.9, 100], flip_deg=[20, 90],
                           names=("GE", "TSE"), name="ge_tse_3d")


_PROTOCOLS = {
    "ge_tse_3d": _ge_tse_3d,
    "four_contrast_brain": _four_contrast_brain,
    "qiu_mprage_gre_flair": _qiu_mprage_gre_flair,
    "pelvis_se5": _pelvis_se5,
    "ir_fse_7ti": _ir_fse_7ti,
    "nist_vir": _nist_vir,
    "nist_mse": _nist_mse,
    "nist_vfa": _nist_vfa,
    "qmrlab_ir": _qmrlab_ir,
    "qmrlab_mtsat": _qmrlab_mtsat,
}


def list_protocols() -> list[str]:
    """Names accepted by :func:`get_protocol`."""
    return sorted(_PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    """A named protocol from the literature (see :func:`list_protocols`)."""
    try:
        return _PROTOCOLS[name]()
    except KeyError:
        raise KeyError(f"unknown protocol {name!r}; known: {list_protocols()}") from None
