"""Extended phase graph (EPG) simulation of a CPMG multi-echo spin-echo train.

With imperfect refocusing (B1 error, slice profile) a multi-echo train carries stimulated echoes:
the echo amplitudes do not decay as ``e^{-TE/T2}`` and a mono-exponential fit over-estimates T2.
The EPG formalism tracks the dephased transverse (F+, F-) and longitudinal (Z) configuration states
through relaxation, gradient dephasing and RF rotations, and gives the exact echo amplitudes.

Real-valued form for the CPMG condition (refocusing pulses 90 degrees out of phase with the
excitation), where all states stay real.

References:
  Hennig J. Echoes - how to generate, recognize, use or avoid them. Concepts Magn Reson 3:125 (1991).
  Weigel M. Extended phase graphs: dephasing, RF pulses, and echoes. JMRI 41:266 (2015).
  Lebel RM, Wilman AH. Transverse relaxometry with stimulated echo compensation. MRM 64:1005 (2010).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qmri_jax.physics.signals import decay

__all__ = ["cpmg_echo_train", "echo_train"]


def cpmg_echo_train(pd, t2_ms, t1_ms, esp_ms, n_echoes: int, refocus_deg=180.0):
    """Echo amplitudes of an ideal-excitation CPMG train.

    The sequence: 90 degree excitation, then ``n_echoes`` refocusing pulses of ``refocus_deg`` at
    ``ESP/2, 3 ESP/2, ...``, echo ``j`` at ``TE_j = j * ESP``. With ``refocus_deg = 180`` the result
    is exactly ``PD e^{-TE_j/T2}``.

    Args:
      pd: amplitude (a.u.), shape ``[...]``.
      t2_ms, t1_ms: relaxation times (ms), broadcastable to ``[...]``.
      esp_ms: echo spacing (ms).
      n_echoes: number of echoes (static Python int).
      refocus_deg: refocusing flip angle (degrees), broadcastable to ``[...]``.

    Returns:
      Echo magnitudes ``[..., n_echoes]``.
    """
    pd, t2_ms, t1_ms, esp_ms, refocus_deg = jnp.broadcast_arrays(
        *[jnp.asarray(x, dtype=jnp.result_type(float)) for x in (pd, t2_ms, t1_ms, esp_ms, refocus_deg)]
    )
    return _train(pd, t2_ms, t1_ms, esp_ms, n_echoes, jnp.deg2rad(refocus_deg)[..., None], False)


def echo_train(pd, t2_ms, t1_ms, esp_ms, refocus_deg):
    """Echo amplitudes of a CPMG train with one refocusing angle per echo (variable-angle FSE).

    Args:
      pd, t2_ms, t1_ms, esp_ms: as :func:`cpmg_echo_train`.
      refocus_deg: ``[n_echoes]`` refocusing angles (degrees), the same for every voxel.

    Returns:
      Echo magnitudes ``[..., n_echoes]``.
    """
    refocus_deg = jnp.asarray(refocus_deg, dtype=jnp.result_type(float))
    if refocus_deg.ndim != 1:
        raise ValueError(f"echo_train: refocus_deg must be [n_echoes], got shape {refocus_deg.shape}")
    pd, t2_ms, t1_ms, esp_ms = jnp.broadcast_arrays(
        *[jnp.asarray(x, dtype=jnp.result_type(float)) for x in (pd, t2_ms, t1_ms, esp_ms)]
    )
    return _train(pd, t2_ms, t1_ms, esp_ms, refocus_deg.shape[0], jnp.deg2rad(refocus_deg), True)


def _train(pd, t2_ms, t1_ms, esp_ms, n_echoes, alpha, per_echo: bool):
    """The EPG of both public functions for broadcast ``[...]`` inputs. ``alpha`` (radians):
    ``[..., 1]``, one angle per voxel for every echo, or (``per_echo``) ``[n_echoes]``, one per echo
    for every voxel; the rotation's coefficients are computed once, not in the loop."""
    batch = pd.shape
    n_states = 2 * n_echoes + 2
    rotation = (jnp.cos(alpha / 2) ** 2, jnp.sin(alpha / 2) ** 2, jnp.sin(alpha), jnp.cos(alpha))
    e2 = decay(esp_ms / 2, t2_ms)[..., None]
    e1 = decay(esp_ms / 2, t1_ms)[..., None]

    zeros = jnp.zeros(batch + (n_states,), pd.dtype)
    fp = zeros.at[..., 0].set(1.0)
    fm = zeros.at[..., 0].set(1.0)
    z = zeros

    def relax(fp, fm, z):
        z = (z * e1).at[..., 0].add(1.0 - e1[..., 0])
        return fp * e2, fm * e2, z

    def shift(fp, fm):
        fm = jnp.concatenate([fm[..., 1:], jnp.zeros_like(fm[..., :1])], axis=-1)
        fp = jnp.concatenate([fm[..., :1], fp[..., :-1]], axis=-1)
        return fp, fm

    def echo(carry, per_echo_rotation):
        fp, fm, z = carry
        c2, s2, sa, ca = per_echo_rotation if per_echo else rotation
        fp, fm, z = relax(fp, fm, z)
        fp, fm = shift(fp, fm)
        fp, fm, z = (
            c2 * fp + s2 * fm + sa * z,
            s2 * fp + c2 * fm - sa * z,
            -0.5 * sa * fp + 0.5 * sa * fm + ca * z,
        )
        fp, fm, z = relax(fp, fm, z)
        fp, fm = shift(fp, fm)
        return (fp, fm, z), fp[..., 0]

    _, echoes = jax.lax.scan(echo, (fp, fm, z), rotation if per_echo else None, length=n_echoes)
    echoes = jnp.moveaxis(echoes, 0, -1)
    return pd[..., None] * jnp.abs(echoes)
