"""Slice-profile EPG: the Bloch profile against an independent rotation-matrix simulation, the
ideal-slice limit, the sum over positions, and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax.physics import SliceProfile, cpmg_echo_train, cpmg_slice_echo_train, pulse_profile


def _rotation_matrix_profile(tbw, flip_deg, z, n_steps=400):
    """Flip angle from 3x3 rotations (Rodrigues) of m = (0, 0, 1): arccos(m_z) for a pulse
    ending in a state whose net rotation tips z by that angle."""
    t = (np.arange(n_steps) + 0.5) / n_steps - 0.5
    b = np.sinc(tbw * t) * (0.5 + 0.5 * np.cos(2 * np.pi * t))
    b = b / b.sum() * np.deg2rad(flip_deg)
    out = []
    for zz in z:
        m = np.array([0.0, 0.0, 1.0])
        bz = 2 * np.pi * tbw * zz / n_steps
        for bx in b:
            n = np.array([bx, 0.0, bz])
            phi = np.linalg.norm(n)
            n = n / phi
            m = (m * np.cos(phi) + np.cross(n, m) * np.sin(phi)
                 + n * np.dot(n, m) * (1 - np.cos(phi)))
        out.append(np.degrees(np.arccos(np.clip(m[2], -1, 1))))
    return np.array(out)


@pytest.mark.parametrize("flip", [30.0, 90.0, 180.0])
def test_pulse_profile_matches_rotation_matrices(flip):
    z = np.array([0.0, 0.1, 0.3, 0.5, 0.7])
    np.testing.assert_allclose(pulse_profile(3.0, flip, z), _rotation_matrix_profile(3.0, flip, z),
                               atol=1e-6)
    assert pulse_profile(3.0, flip, [0.0])[0] == pytest.approx(flip, abs=1e-9)


def test_small_tip_profile_has_its_half_maximum_at_the_slice_edge():
    z = np.linspace(0.0, 1.0, 201)
    for tbw in (3.0, 6.0):
        prof = pulse_profile(tbw, 5.0, z)
        edge = z[np.argmin(np.abs(prof - 2.5))]
        assert abs(edge - 0.5) < 0.03, (tbw, edge)


def test_ideal_slice_is_the_single_angle_train():
    b1 = jnp.asarray([0.8, 1.0, 1.1])
    a = cpmg_slice_echo_train(2.0, 70.0, 900.0, 10.0, 12, b1, None)
    b = cpmg_echo_train(2.0, 70.0, 900.0, 10.0, 12, 180.0 * b1)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_profile_train_is_the_weighted_sum_over_positions():
    prof = SliceProfile(time_bandwidth=2.5, refocus_width=1.3, n_positions=9, extent=1.1)
    z, a_e, a_r = prof.angles
    w = prof.weights
    b1 = np.array([[0.9, 1.0, 1.2], [1.05, 0.7, 1.0]])
    t2 = np.array([[40.0, 80.0, 150.0], [300.0, 25.0, 60.0]])
    got = np.asarray(cpmg_slice_echo_train(3.0, t2, 800.0, 9.0, 10, b1, prof))
    assert got.shape == (2, 3, 10)
    norm = np.sum(w * np.sin(np.deg2rad(a_e)))
    train = jax.jit(cpmg_echo_train, static_argnums=4)  # one compilation, called per position
    for i in range(2):
        for j in range(3):
            want = sum(w[p] * np.sin(np.deg2rad(b1[i, j] * a_e[p]))
                       * np.asarray(train(1.0, t2[i, j], 800.0, 9.0, 10, b1[i, j] * a_r[p]))
                       for p in range(len(z))) * 3.0 / norm
            np.testing.assert_allclose(got[i, j], want, rtol=2e-5)
    # A profile always loses signal against the ideal slice (stimulated echoes never make up the
    # full refocusing), and the odd/even pattern differs from a single angle.
    ideal = np.asarray(cpmg_echo_train(3.0, t2, 800.0, 9.0, 10, 180.0))
    assert np.all(got[0, 1] < ideal[0, 1])


def test_gradients_match_finite_differences():
    prof = SliceProfile(n_positions=8)

    def first_echoes(t2, b1):
        return jnp.sum(cpmg_slice_echo_train(1.0, t2, 1000.0, 10.0, 8, b1, prof)[..., :4])

    g_t2, g_b1 = jax.grad(first_echoes, argnums=(0, 1))(60.0, 1.1)
    eps_t2, eps_b1 = 0.5, 1e-3
    fd_t2 = (first_echoes(60.0 + eps_t2, 1.1) - first_echoes(60.0 - eps_t2, 1.1)) / (2 * eps_t2)
    fd_b1 = (first_echoes(60.0, 1.1 + eps_b1) - first_echoes(60.0, 1.1 - eps_b1)) / (2 * eps_b1)
    assert np.isfinite(g_t2) and np.isfinite(g_b1)
    np.testing.assert_allclose(g_t2, fd_t2, rtol=2e-2)
    np.testing.assert_allclose(g_b1, fd_b1, rtol=2e-2)


def test_bad_profile_is_refused():
    with pytest.raises(ValueError, match="refocus_width"):
        SliceProfile(refocus_width=0.0)
    with pytest.raises(ValueError, match="n_positions"):
        SliceProfile(n_positions=1)
