"""Variable-angle FSE trains (EPG) and the 3D FLAIR (SPACE) signal model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax import physics
from qmri_jax.physics import space


def _isochromat_train(t1, t2, esp, angles_deg, n_iso=512):
    """CPMG train by brute force: ``n_iso`` isochromats dephased by 2 pi k / n_iso per half echo
    spacing (crushers), rotations about y (the axis of the excited magnetisation), relaxation;
    echo = |mean transverse magnetisation| at each echo time."""
    phi = 2 * np.pi * np.arange(n_iso) / n_iso
    e1, e2 = np.exp(-esp / 2 / t1), np.exp(-esp / 2 / t2)
    mx, my, mz = np.zeros(n_iso), np.ones(n_iso), np.zeros(n_iso)

    def free(mx, my, mz):
        c, s = np.cos(phi), np.sin(phi)
        return (e2 * (mx * c - my * s), e2 * (mx * s + my * c), e1 * mz + 1 - e1)

    echoes = []
    for a in np.deg2rad(angles_deg):
        mx, my, mz = free(mx, my, mz)
        mx, mz = mx * np.cos(a) + mz * np.sin(a), -mx * np.sin(a) + mz * np.cos(a)
        mx, my, mz = free(mx, my, mz)
        echoes.append(abs(np.mean(mx + 1j * my)))
    return np.array(echoes)


def test_variable_angle_train_matches_isochromat_simulation():
    angles = space.space_schedule(40)
    assert angles[0] == 180.0 and abs(angles[-1] - space.SPACE_PLATEAU_DEG) < 0.1
    for t1, t2 in ((830.0, 80.0), (4000.0, 2000.0), (1200.0, 200.0)):
        ref = _isochromat_train(t1, t2, 3.5, angles)
        with jax.enable_x64(True):
            got = np.asarray(physics.echo_train(1.0, t2, t1, 3.5, angles))
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
        # On the plateau the stimulated echoes slow the decay well below e^{-t/T2}.
        if t2 < 1000:
            assert got[39] / got[9] > 1.05 * np.exp(-30 * 3.5 / t2)


def test_constant_angle_train_is_the_cpmg_train_and_180_is_the_spin_echo():
    t2 = jnp.asarray([50.0, 80.0, 300.0])
    a = physics.echo_train(2.0, t2, 1000.0, 10.0, np.full(8, 150.0))
    b = physics.cpmg_echo_train(2.0, t2, 1000.0, 10.0, 8, 150.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    se = physics.echo_train(1.0, t2, 1000.0, 10.0, np.full(8, 180.0))
    np.testing.assert_allclose(se, np.exp(-10.0 * np.arange(1, 9) / np.asarray(t2)[:, None]),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"refocus_deg must be \[n_echoes\]"):
        physics.echo_train(1.0, t2, 1000.0, 10.0, np.full((2, 8), 150.0))


def test_tabulated_echo_amplitude_is_within_one_percent_of_the_epg():
    rng = np.random.default_rng(0)
    t1 = np.exp(rng.uniform(np.log(200), np.log(5000), 400))
    t2 = np.minimum(np.exp(rng.uniform(np.log(20), np.log(3000), 400)), t1)
    n = rng.integers(1, space.SPACE_MAX_ECHOES + 1, 400)
    te = n * space.SPACE_ECHO_SPACING_MS
    direct = np.asarray(physics.echo_train(np.ones_like(t1), t2, t1, space.SPACE_ECHO_SPACING_MS,
                                           space.space_schedule()))[np.arange(400), n - 1]
    table = np.asarray(space.space_echo_amplitude(t1, t2, te))
    keep = direct > 1e-3
    assert keep.mean() > 0.5
    assert np.max(np.abs(table[keep] / direct[keep] - 1)) < 0.01


def test_qiu_flair_looks_like_a_flair_and_is_differentiable():
    """3 T tissue values: CSF nulled below white matter, grey matter above white matter, a lesion
    (long T2) brightest; as a plain spin echo at TE 352 ms the CSF was above white matter."""
    prot = physics.get_protocol("qiu_mprage_gre_flair")
    assert prot.kinds[2] == "space_flair"
    tissue = {"WM": (0.7, 830.0, 80.0), "GM": (0.8, 1330.0, 110.0), "CSF": (1.0, 4000.0, 2000.0),
              "lesion": (0.8, 1200.0, 200.0)}
    maps = {k: jnp.asarray([v[i] for v in tissue.values()]) for i, k in enumerate(("PD", "T1", "T2"))}
    flair = dict(zip(tissue, np.asarray(physics.simulate(maps, prot))[:, 2]))
    assert flair["CSF"] < 0.5 * flair["WM"] < flair["GM"] < flair["lesion"]
    se = dict(zip(tissue, np.asarray(physics.flair(maps["PD"], maps["T1"], maps["T2"], 4800.0,
                                                   352.0, 1800.0))))
    assert se["CSF"] > se["WM"]

    def f(t2):
        return physics.space_flair(0.8, 1200.0, t2, 4800.0, 352.0, 1800.0)

    g = float(jax.grad(f)(150.0))
    fd = float(f(150.5) - f(149.5))
    assert np.isfinite(g) and abs(g - fd) < 0.02 * abs(fd)


def test_effective_te_outside_the_train_is_refused():
    with pytest.raises(ValueError, match="space_flair.*effective TE 600 ms"):
        physics.Protocol.create("space_flair", tr_ms=4800, te_ms=600, ti_ms=1800, name="p")
