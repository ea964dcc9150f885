"""Closed-form MRI signal equations: pure, differentiable, broadcasting JAX functions.

Every function here is elementwise and broadcasts its arguments (shapes ``[...]``), so the same
code evaluates one voxel, a ``[H, W]`` map or a ``[B, H, W, N]`` stack of images, and works under
``jax.jit``, ``jax.vmap`` and ``jax.grad``. Times are in milliseconds, angles in degrees, proton
density (PD) in arbitrary units.

Singular points are guarded with the double-``jnp.where`` trick: a relaxation time of exactly 0 (or
negative) gives the limit value (full decay) with finite, zero gradients instead of NaN.

References:
  Haacke EM et al. *Magnetic Resonance Imaging: Physical Principles and Sequence Design*. Wiley 1999.
  Bernstein MA, King KF, Zhou XJ. *Handbook of MRI Pulse Sequences*. Elsevier 2004.
  Barral JK et al. A robust methodology for in vivo T1 mapping. MRM 64:1057 (2010) (IR with k).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "decay",
    "spin_echo",
    "inversion_recovery",
    "flair",
    "ir_fse_magnitude",
    "ir_three_parameter",
    "spoiled_gradient_echo",
    "mprage",
    "MPRAGE_ECHO_SPACING_MS",
    "MPRAGE_READOUT_PULSES",
    "multi_echo_spin_echo",
]


def decay(t_ms, tau_ms):
    """``exp(-t / tau)`` with the limits made explicit and gradients finite.

    Args:
      t_ms: elapsed time (ms), ``>= 0``.
      tau_ms: relaxation time (ms). ``tau <= 0`` is treated as instantaneous relaxation
        (result 0 for ``t > 0``, 1 for ``t == 0``); ``tau = inf`` gives 1; a NaN ``tau`` (a missing
        value) gives NaN, with a NaN gradient.

    Returns:
      ``exp(-t/tau)`` broadcast over the inputs. Where ``t / tau > 80`` the result is exactly 0 with
      a zero gradient (the true one is below 1e-33), so tiny ``tau`` never overflows ``t / tau^2``.
    """
    t_ms = jnp.asarray(t_ms)
    tau_ms = jnp.asarray(tau_ms)
    ok = ~(tau_ms <= 0)  # NaN stays on the differentiable branch, so it propagates
    safe_tau = jnp.where(ok, tau_ms, 1.0)
    fast = ok & ~(t_ms > 80.0 * safe_tau)
    value = jnp.exp(-t_ms / jnp.where(fast, safe_tau, 1.0))
    limit = jnp.where(t_ms > 0, 0.0, 1.0)
    return jnp.where(fast, value, jnp.where(ok, 0.0, limit))


def spin_echo(pd, t1_ms, t2_ms, tr_ms, te_ms):
    """Spin-echo signal ``S = PD (1 - e^{-TR/T1}) e^{-TE/T2}``.

    The saturation-recovery form, valid for TE << TR (the refocusing pulse's effect on Mz ignored).

    Args:
      pd: proton density (a.u.), shape ``[...]``.
      t1_ms, t2_ms: relaxation times (ms).
      tr_ms, te_ms: repetition and echo time (ms).

    Returns:
      Signal (a.u.), broadcast shape of the inputs.
    """
    return pd * (1.0 - decay(tr_ms, t1_ms)) * decay(te_ms, t2_ms)


def inversion_recovery(pd, t1_ms, t2_ms, tr_ms, te_ms, ti_ms, k=1.0, magnitude=True):
    """Inversion recovery with finite TR and inversion efficiency ``k``.

    ``S = PD (1 - (1 + k) e^{-TI/T1} + k e^{-TR/T1}) e^{-TE/T2}``

    ``k`` is the inverted fraction (the inversion pulse maps Mz to ``-k Mz``): ``k = 1`` is a perfect
    inversion and gives the textbook ``1 - 2 e^{-TI/T1} + e^{-TR/T1}``; ``k = 0`` is no inversion.
    TR is the time between successive inversion pulses (steady state, readout recovery ignored).

    Args:
      pd, t1_ms, t2_ms: tissue parameters (a.u., ms, ms).
      tr_ms, te_ms, ti_ms: sequence timing (ms).
      k: inversion efficiency in [0, 1] (dimensionless).
      magnitude: return ``|S|`` (magnitude images) when True, the signed (phase-corrected) signal
        otherwise.

    Returns:
      Signal (a.u.).
    """
    e_ti = decay(ti_ms, t1_ms)
    e_tr = decay(tr_ms, t1_ms)
    s = pd * (1.0 - (1.0 + k) * e_ti + k * e_tr) * decay(te_ms, t2_ms)
    return jnp.abs(s) if magnitude else s


def flair(pd, t1_ms, t2_ms, tr_ms, te_ms, ti_ms, k=1.0):
    """Fluid-attenuated inversion recovery: magnitude IR with a long TI (e.g. TR 15000, TI 3000 ms).

    Same equation as :func:`inversion_recovery` (``magnitude=True``); a separate name so protocols
    read like the scanner's. With TI ~ ln 2 T1(CSF) the CSF signal is nulled.
    """
    return inversion_recovery(pd, t1_ms, t2_ms, tr_ms, te_ms, ti_ms, k=k, magnitude=True)


def ir_fse_magnitude(pd, t1_ms, ti_ms, b=2.0):
    """IR fast-spin-echo magnitude model ``S = |PD (1 - B e^{-TI/T1})|``.

    The long-TR approximation used for IR-FSE T1 mapping (e.g. Barral 2010, the qMRI Diffusor
    paper); ``B`` absorbs the inversion efficiency and T2 weighting (``B = 2`` is a perfect inversion
    with full recovery). ``PD`` here is the apparent (T2-weighted) proton density.
    """
    return jnp.abs(pd * (1.0 - b * decay(ti_ms, t1_ms)))


def ir_three_parameter(a, t1_ms, b, ti_ms, tr_ms):
    """The common 3-parameter magnitude IR form ``S = |a (1 - b e^{-TI/T1} + e^{-TR/T1})|``.

    Used by phantom-analysis tools (MR-BIAS) and by the ``ir_voxels`` benchmark: ``b = 2`` is a
    perfect inversion. It differs from the exact steady state (:func:`inversion_recovery`) in the
    TR term's coefficient, which is fixed at 1 here.
    """
    return jnp.abs(a * (1.0 - b * decay(ti_ms, t1_ms) + decay(tr_ms, t1_ms)))


def spoiled_gradient_echo(pd, t1_ms, tr_ms, flip_deg, te_ms=0.0, t2s_ms=jnp.inf, b1=1.0):
    """Spoiled gradient echo (FLASH/SPGR) steady state, the basis of variable-flip-angle T1 mapping.

    ``S = PD sin(a) (1 - E1) / (1 - cos(a) E1) e^{-TE/T2*}``, ``E1 = e^{-TR/T1}``, ``a = B1 * flip``.

    Args:
      pd, t1_ms: tissue parameters (a.u., ms).
      tr_ms: repetition time (ms).
      flip_deg: nominal flip angle (degrees).
      te_ms, t2s_ms: echo time and T2* (ms); defaults give no T2* weighting.
      b1: relative transmit field (actual / nominal flip angle).

    Reference: Fram EK et al. MRI 5:201 (1987); Deoni SCL et al. MRM 49:515 (2003) (DESPOT1).
    """
    alpha = jnp.deg2rad(flip_deg) * b1
    e1 = decay(tr_ms, t1_ms)
    return pd * jnp.sin(alpha) * (1.0 - e1) / (1.0 - jnp.cos(alpha) * e1) * decay(te_ms, t2s_ms)


#: Readout of the ``mprage`` sequence kind when a protocol does not give one: a Siemens 3D MPRAGE
#: with 176 partitions (one readout pulse per partition and inversion, linear ordering) and a
#: 7.1 ms gradient-echo spacing (ADNI-like; Qiu et al. give TR 1900 / TI 900 / TE 2.93 ms, 9 deg).
MPRAGE_ECHO_SPACING_MS = 7.1
MPRAGE_READOUT_PULSES = 176


def mprage(pd, t1_ms, tr_ms, ti_ms, flip_deg, te_ms=0.0, t2s_ms=jnp.inf,
           esp_ms=MPRAGE_ECHO_SPACING_MS, n_pulses=MPRAGE_READOUT_PULSES, centre=None, k=1.0,
           b1=1.0, magnitude=True):
    """MPRAGE: the steady-state signal of the k-space-centre readout pulse.

    Each shot (period ``TR``, inversion to inversion): an inversion (``Mz -> -k Mz``), a delay
    ``TA = TI - centre * esp``, ``n_pulses`` spoiled gradient-echo pulses of flip ``a = B1 * flip``
    ``esp`` apart (``Mz -> Mz cos a``, then relaxation over ``esp``), and a delay
    ``TD = TR - TA - n_pulses * esp``. With ``A = cos(a) E``, ``E = e^{-esp/T1}`` and
    ``B = 1 - E``, the longitudinal magnetisation before readout pulse ``n`` is
    ``m_n = A^n m_0 + B (1 - A^n) / (1 - A)``; the periodic steady state of
    ``m_0 = 1 - e^{-TA/T1} - k e^{-TA/T1} M_inv`` and
    ``M_inv = 1 - e^{-TD/T1} + e^{-TD/T1} m_N`` is solved in closed form, and
    ``S = PD sin(a) m_centre e^{-TE/T2*}``.

    Args:
      pd, t1_ms: tissue parameters (a.u., ms).
      tr_ms: time between inversions (ms).
      ti_ms: inversion to the centre readout pulse (ms), the protocol's TI.
      flip_deg: readout flip angle (degrees).
      te_ms, t2s_ms: echo time and T2* (ms).
      esp_ms: readout pulse spacing (ms).
      n_pulses: readout pulses per shot (static int).
      centre: index of the k-space-centre pulse (default ``n_pulses // 2``: linear ordering).
      k: inversion efficiency (1 = perfect).
      b1: relative transmit field of the readout pulses.
      magnitude: ``|S|`` (magnitude images) or the signed signal (negative before the null).

    The timing must satisfy ``TA >= 0`` and ``TD >= 0`` (checked by the protocol).

    Reference: Deichmann R et al. NeuroImage 12:112 (2000); Marques JP et al. NeuroImage 49:1271
    (2010), appendix (MP2RAGE, the same recursion).
    """
    n = int(n_pulses)
    c = n // 2 if centre is None else int(centre)
    alpha = jnp.deg2rad(flip_deg) * b1
    t_a = ti_ms - c * esp_ms
    t_d = tr_ms - t_a - n * esp_ms
    e = decay(esp_ms, t1_ms)
    a = jnp.cos(alpha) * e
    e_a, e_d = decay(t_a, t1_ms), decay(t_d, t1_ms)

    def train(m0, count):  # m after `count` pulses of the readout starting from m0
        an = a ** count
        return an * m0 + (1.0 - e) * (1.0 - an) / (1.0 - a)

    # m_N = a^N m_0 + c_N with m_0 = (1 - e_a) - k e_a M_inv, M_inv = (1 - e_d) + e_d m_N
    a_n, c_n = a ** n, train(0.0, n)
    m_inv = ((1.0 - e_d) + e_d * (a_n * (1.0 - e_a) + c_n)) / (1.0 + k * e_d * a_n * e_a)
    m0 = (1.0 - e_a) - k * e_a * m_inv
    signal = pd * jnp.sin(alpha) * train(m0, c) * decay(te_ms, t2s_ms)
    return jnp.abs(signal) if magnitude else signal


def multi_echo_spin_echo(pd, t2_ms, te_ms, offset=0.0):
    """Mono-exponential multi-echo spin-echo decay ``S(TE) = PD e^{-TE/T2} + offset``.

    ``offset`` models a constant floor (noise floor of magnitude data, a long-T2 component).
    For a CPMG train with imperfect refocusing use :func:`qmri_jax.physics.epg.cpmg_echo_train`.
    """
    return pd * decay(te_ms, t2_ms) + offset
