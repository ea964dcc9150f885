"""Fit models: which parameters, their bounds, and the signal as a basis times linear amplitudes.

Every model writes its signal as ``S(theta) = B(theta_nl) @ c`` where ``c`` are the *linear*
(amplitude) parameters (PD, an offset) and ``theta_nl`` the nonlinear ones (T1, T2, inversion
efficiency, refocusing angle). That form gives the solver a robust initialisation for free: a
dictionary (grid) over ``theta_nl`` with the amplitudes solved in closed form per atom (variable
projection), then Levenberg-Marquardt on all parameters.

Amplitude parameters are fitted on the signal divided by its per-voxel maximum, so their bounds
here are in units of that maximum.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.physics import signals
from qmri_jax.physics.epg import cpmg_echo_train
from qmri_jax.physics.slice_profile import SliceProfile, cpmg_slice_echo_train
from qmri_jax.physics.protocol import Protocol, simulate

__all__ = ["FitModel", "epg_model", "get_model", "list_models"]


@dataclasses.dataclass(frozen=True, eq=False)
class FitModel:
    """A voxelwise signal model for fitting.

    Attributes:
      name: short name (``"ir"``, ``"t2"``, ...).
      params: all parameter names, in output order.
      linear: the amplitude parameters (subset of ``params``), coefficients of the basis columns.
      lower, upper: bounds per parameter (physical units; amplitudes in units of the voxel maximum).
      scale: typical magnitude per parameter, for the solver's internal units.
      grid: for each nonlinear parameter (in ``params`` order, linear ones skipped), the grid values
        of the initial dictionary search.
      basis_fn: ``basis_fn(nl: dict[str, [...]], protocol) -> [..., N, L]``.
      description: the equation, for sidecars and figures.
      check_fn: optional ``check_fn(protocol)`` raising ``ValueError`` for an unsuitable protocol.
      covariates: known per-voxel inputs of ``basis_fn`` that are not fitted (e.g. a transmit
        field ``B1`` from a map); :func:`~qmri_jax.fitting.fit_voxels` takes their values.
    """

    name: str
    params: tuple[str, ...]
    linear: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    scale: tuple[float, ...]
    grid: tuple[tuple[float, ...], ...]
    basis_fn: Callable
    description: str
    check_fn: Callable | None = None
    covariates: tuple[str, ...] = ()

    def __post_init__(self):
        if self.covariates and len(self.linear) != 1:
            raise ValueError(f"FitModel {self.name!r}: a model with covariates needs exactly one "
                             f"amplitude parameter (its dictionary is built per voxel), got "
                             f"{self.linear}")

    @property
    def nonlinear(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p not in self.linear)

    def signal(self, theta: dict, protocol: Protocol) -> jax.Array:
        """Model signal ``[..., N]`` for physical parameters ``theta`` (dict of ``[...]``; the
        covariates included)."""
        basis = self.basis_fn({p: jnp.asarray(theta[p]) for p in self.nonlinear + self.covariates},
                              protocol)
        coeffs = jnp.stack([jnp.asarray(theta[p]) for p in self.linear], axis=-1)
        return jnp.einsum("...nl,...l->...n", basis, coeffs)

    def check(self, protocol: Protocol) -> None:
        if self.check_fn is not None:
            self.check_fn(protocol)


def _logspace(lo, hi, n):
    return tuple(float(v) for v in np.geomspace(lo, hi, n))


def _need_kinds(model, allowed):
    def check(protocol):
        bad = [k for k in protocol.kinds if k not in allowed]
        if bad:
            raise ValueError(f"model {model!r} needs images of kind {allowed}; protocol "
                             f"{protocol.name!r} has {sorted(set(bad))}")
    return check


def _magnitude(protocol, raw):
    """``|raw|`` for magnitude images, ``raw`` for signed (phase-corrected) ones; ``raw [..., N]``."""
    signed = np.asarray([k == "ir_signed" for k in protocol.kinds])
    if signed.all():
        return raw
    if not signed.any():
        return jnp.abs(raw)
    return jnp.where(signed, raw, jnp.abs(raw))


def _ir_basis(nl, protocol):
    e_ti = signals.decay(protocol.ti_ms, nl["T1"][..., None])
    e_tr = signals.decay(protocol.tr_ms, nl["T1"][..., None])
    k = nl["k"][..., None]
    return _magnitude(protocol, 1.0 - (1.0 + k) * e_ti + k * e_tr)[..., None]


def _ir3_basis(nl, protocol):
    e_ti = signals.decay(protocol.ti_ms, nl["T1"][..., None])
    e_tr = signals.decay(protocol.tr_ms, nl["T1"][..., None])
    return _magnitude(protocol, 1.0 - nl["b"][..., None] * e_ti + e_tr)[..., None]


def _ir_fse_basis(nl, protocol):
    e_ti = signals.decay(protocol.ti_ms, nl["T1"][..., None])
    return _magnitude(protocol, 1.0 - nl["B"][..., None] * e_ti)[..., None]


def _t2_basis(nl, protocol):
    return signals.decay(protocol.te_ms, nl["T2"][..., None])[..., None]


def _t2_offset_basis(nl, protocol):
    e = signals.decay(protocol.te_ms, nl["T2"][..., None])
    return jnp.stack([e, jnp.ones_like(e)], axis=-1)


def _echo_spacing(protocol):
    te = np.asarray(protocol.te_ms, np.float64)
    return te[0], te


def _check_epg(protocol):
    _need_kinds("t2_epg", ("se",))(protocol)
    esp, te = _echo_spacing(protocol)
    if not np.allclose(te, esp * np.arange(1, len(te) + 1), rtol=1e-3):
        raise ValueError(f"model 't2_epg' needs a CPMG train with TE_j = j * ESP (all echoes, in "
                         f"order); protocol {protocol.name!r} has TE = {te.tolist()} ms")


#: T1 assumed by the EPG T2 model (the echo amplitudes depend only weakly on T1).
EPG_T1_MS = 1000.0


def _t2_epg_basis(nl, protocol):
    n = len(protocol.kinds)
    esp = protocol.te_ms[0]
    return cpmg_echo_train(1.0, nl["T2"], EPG_T1_MS, esp, n, nl["refocus"])[..., None]


@functools.cache
def epg_model(profile: SliceProfile | None = SliceProfile(), t1_ms: float | None = EPG_T1_MS,
              fit_b1: bool = True) -> FitModel:
    """The CPMG T2 model with a relative transmit field ``B1`` and a slice profile.

    ``S = PD * cpmg_slice_echo_train(T2, T1, ESP; B1, profile)``
    (:func:`~qmri_jax.physics.slice_profile.cpmg_slice_echo_train`).

    Args:
      profile: the nominal pulses (``None``: an ideal slice, one refocusing angle ``180 B1``).
      t1_ms: the T1 assumed (the echo amplitudes depend on it only through stimulated echoes), or
        ``None``: T1 is a known per-voxel input, the covariate ``"T1"`` (ms; e.g. a T1 map of the
        same session).
      fit_b1: fit ``B1`` per voxel (parameters PD, T2, B1), or take it as a known covariate
        (parameters PD, T2; ``covariates={"B1": ...}`` in ``fit_voxels``).

    Calls with equal arguments return the same object (one compilation per setting).
    """
    t1_known = ("T1",) if t1_ms is None else ()

    def basis(nl, protocol):
        n = len(protocol.kinds)
        esp = protocol.te_ms[0]
        t1 = nl["T1"] if t1_ms is None else t1_ms
        return cpmg_slice_echo_train(1.0, nl["T2"], t1, esp, n, nl["B1"], profile)[..., None]

    where = ("ideal slice" if profile is None else
             f"slice profile: Hann-sinc TBW {profile.time_bandwidth:g}, refocusing slice "
             f"{profile.refocus_width:g}x")
    t1_text = "T1 given per voxel" if t1_ms is None else f"T1 = {t1_ms:g} ms"
    desc = f"CPMG echoes by EPG summed over the slice ({where}), {t1_text}, B1 " + (
        "fitted" if fit_b1 else "given")
    suffix = "_t1map" if t1_ms is None else ""
    if fit_b1:
        # B1 within [0.5, 1.5]: beyond ~1.45 the central refocusing angle passes 260 degrees and
        # the echo pattern aliases that of a smaller B1 (a second minimum with a wrong T2). A fine
        # start grid: with 40 T2 values the best atom of a B1 ~1.0 voxel can lie in that alias
        # basin even for noiseless data.
        b1_grid = tuple(float(v) for v in np.round(np.arange(0.55, 1.46, 0.05), 2))
        return FitModel("t2_epg_b1" + suffix, ("PD", "T2", "B1"), ("PD",), (0.0, 0.5, 0.5),
                        (50.0, 5000.0, 1.5), (1.0, 100.0, 1.0),
                        (_logspace(1.0, 4000.0, 120), b1_grid), basis, desc, _check_epg,
                        covariates=t1_known)
    return FitModel("t2_epg_b1_fixed" + suffix, ("PD", "T2"), ("PD",), (0.0, 0.5), (50.0, 5000.0),
                    (1.0, 100.0), (_logspace(1.0, 4000.0, 40),), basis, desc, _check_epg,
                    covariates=("B1",) + t1_known)


def _vfa_basis(nl, protocol):
    return signals.spoiled_gradient_echo(1.0, nl["T1"][..., None], protocol.tr_ms,
                                         protocol.flip_deg)[..., None]


def _joint_basis(nl, protocol):
    return simulate({"PD": 1.0, "T1": nl["T1"], "T2": nl["T2"]}, protocol)[..., None]


def _models() -> dict[str, FitModel]:
    t1_grid = _logspace(5.0, 6000.0, 48)
    return {
        "ir": FitModel(
            "ir", ("PD", "T1", "k"), ("PD",), (0.0, 1.0, 0.0), (50.0, 10000.0, 1.5),
            (1.0, 1000.0, 1.0), (t1_grid, (0.6, 0.8, 0.95)), _ir_basis,
            "S = |PD (1 - (1+k) exp(-TI/T1) + k exp(-TR/T1))| (TE weighting absorbed in PD; no |.| for "
            "ir_signed images)",
            _need_kinds("ir", ("ir", "ir_signed", "flair", "ir_fse"))),
        "ir3": FitModel(
            "ir3", ("a", "T1", "b"), ("a",), (0.0, 1.0, 0.0), (50.0, 10000.0, 3.0),
            (1.0, 1000.0, 1.0), (t1_grid, (1.2, 1.6, 1.9)), _ir3_basis,
            "S = |a (1 - b exp(-TI/T1) + exp(-TR/T1))|",
            _need_kinds("ir3", ("ir", "ir_signed", "flair", "ir_fse"))),
        "ir_fse": FitModel(
            "ir_fse", ("PD", "T1", "B"), ("PD",), (0.0, 1.0, 0.0), (50.0, 10000.0, 3.0),
            (1.0, 1000.0, 1.0), (t1_grid, (1.2, 1.6, 1.9)), _ir_fse_basis,
            "S = |PD (1 - B exp(-TI/T1))|",
            _need_kinds("ir_fse", ("ir", "ir_signed", "flair", "ir_fse"))),
        "t2": FitModel(
            "t2", ("PD", "T2"), ("PD",), (0.0, 0.5), (50.0, 5000.0), (1.0, 100.0),
            (_logspace(1.0, 4000.0, 64),), _t2_basis, "S = PD exp(-TE/T2)",
            _need_kinds("t2", ("se",))),
        "t2_offset": FitModel(
            "t2_offset", ("PD", "T2", "offset"), ("PD", "offset"), (0.0, 0.5, -1.0),
            (50.0, 5000.0, 1.0), (1.0, 100.0, 0.1), (_logspace(1.0, 4000.0, 64),),
            _t2_offset_basis, "S = PD exp(-TE/T2) + offset", _need_kinds("t2_offset", ("se",))),
        "t2_epg": FitModel(
            "t2_epg", ("PD", "T2", "refocus"), ("PD",), (0.0, 0.5, 60.0), (50.0, 5000.0, 180.0),
            (1.0, 100.0, 100.0), (_logspace(1.0, 4000.0, 40), (100.0, 120.0, 140.0, 155.0, 170.0)),
            _t2_epg_basis,
            f"CPMG echo amplitudes by extended phase graphs, refocusing angle fitted, T1 = "
            f"{EPG_T1_MS:g} ms", _check_epg),
        "vfa": FitModel(
            "vfa", ("PD", "T1"), ("PD",), (0.0, 1.0), (1e4, 10000.0), (1.0, 1000.0),
            (_logspace(5.0, 6000.0, 64),), _vfa_basis,
            "S = PD sin(a) (1 - E1) / (1 - cos(a) E1), E1 = exp(-TR/T1)", _need_kinds("vfa", ("spgr",))),
        "joint": FitModel(
            "joint", ("PD", "T1", "T2"), ("PD",), (0.0, 1.0, 0.5), (50.0, 10000.0, 5000.0),
            (1.0, 1000.0, 100.0), (_logspace(50.0, 6000.0, 40), _logspace(5.0, 3000.0, 40)),
            _joint_basis, "S = simulate({PD, T1, T2}, protocol) (spin echo / IR / FLAIR images)",
            _need_kinds("joint", ("se", "ir", "ir_signed", "flair"))),
    }


_MODELS = _models()
_MODELS["t2_epg_b1"] = epg_model()


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`."""
    return sorted(_MODELS)


def get_model(name: str) -> FitModel:
    """A fit model by name (see :func:`list_models`)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown fit model {name!r}; known: {list_models()}") from None
