"""Signal models: closed forms, limits, gradients, jit/vmap consistency, finiteness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from qmri_jax import physics
from qmri_jax.physics import signals

RTOL = 1e-5


def test_spin_echo_closed_form_and_limits():
    v = signals.spin_echo(0.8, 1000.0, 100.0, 500.0, 10.0)
    np.testing.assert_allclose(v, 0.8 * (1 - np.exp(-0.5)) * np.exp(-0.1), rtol=RTOL)
    # TR -> inf: pure T2 weighting; TE -> 0: pure saturation recovery.
    np.testing.assert_allclose(signals.spin_echo(1.0, 1000.0, 80.0, 1e9, 40.0), np.exp(-0.5), rtol=RTOL)
    np.testing.assert_allclose(signals.spin_echo(1.0, 1000.0, 80.0, 700.0, 0.0), 1 - np.exp(-0.7), rtol=RTOL)


def test_inversion_recovery_closed_form():
    pd, t1, t2, tr, te, ti = 0.9, 800.0, 70.0, 3000.0, 10.0, 400.0
    e = lambda t: np.exp(-t / t1)  # noqa: E731
    ref = pd * (1 - 2 * e(ti) + e(tr)) * np.exp(-te / t2)  # textbook k = 1
    np.testing.assert_allclose(signals.inversion_recovery(pd, t1, t2, tr, te, ti, magnitude=False),
                               ref, rtol=RTOL)
    k = 0.9
    ref_k = pd * (1 - (1 + k) * e(ti) + k * e(tr)) * np.exp(-te / t2)
    np.testing.assert_allclose(signals.inversion_recovery(pd, t1, t2, tr, te, ti, k=k, magnitude=False),
                               ref_k, rtol=RTOL)
    # Magnitude of a negative (early-TI) signal.
    neg = signals.inversion_recovery(1.0, t1, t2, tr, te, 50.0, magnitude=False)
    assert neg < 0
    np.testing.assert_allclose(signals.inversion_recovery(1.0, t1, t2, tr, te, 50.0), -neg, rtol=RTOL)


def test_ir_null_and_flair_suppresses_csf():
    t1 = 1000.0
    null = signals.inversion_recovery(1.0, t1, 100.0, 1e9, 0.0, t1 * np.log(2), magnitude=False)
    assert abs(float(null)) < 1e-6
    # FLAIR 15000/100/TI 3000: CSF (T1 ~ 4300 ms at 3 T) is within 5% of its null, far darker than
    # WM despite WM's shorter T2 and PD.
    csf = signals.flair(1.0, 4300.0, 1800.0, 15000.0, 100.0, 3000.0)
    wm = signals.flair(0.7, 850.0, 75.0, 15000.0, 100.0, 3000.0)
    assert csf < 0.05 and csf < 0.25 * wm


def test_ir_fse_equals_ir_long_tr():
    t1, ti = 700.0, np.array([50.0, 300.0, 2000.0])
    a = signals.ir_fse_magnitude(1.0, t1, ti, b=2.0)
    b = signals.inversion_recovery(1.0, t1, 1.0, 1e12, 0.0, ti, k=1.0)
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)
    c = signals.ir_three_parameter(1.0, t1, 2.0, ti, 1e12)
    np.testing.assert_allclose(c, b, rtol=RTOL, atol=1e-7)


def test_spgr_ernst_angle_is_the_maximum():
    t1, tr = 1000.0, 10.0
    ernst = np.rad2deg(np.arccos(np.exp(-tr / t1)))
    d = jax.grad(lambda fa: signals.spoiled_gradient_echo(1.0, t1, tr, fa))(float(ernst))
    assert abs(float(d)) < 1e-6
    fa = np.array([ernst - 2, ernst, ernst + 2])
    s = signals.spoiled_gradient_echo(1.0, t1, tr, fa)
    assert s[1] > s[0] and s[1] > s[2]
    np.testing.assert_allclose(signals.spoiled_gradient_echo(1.0, t1, tr, 90.0), 1 - np.exp(-tr / t1),
                               rtol=1e-5)


def test_multi_echo_decay():
    te = np.arange(10.0, 101.0, 10.0)
    np.testing.assert_allclose(signals.multi_echo_spin_echo(2.0, 50.0, te, offset=0.1),
                               2 * np.exp(-te / 50) + 0.1, rtol=RTOL)


def test_epg_cpmg_known_values():
    # Perfect refocusing: exactly mono-exponential.
    e = physics.cpmg_echo_train(1.0, 80.0, 1000.0, 10.0, 12, 180.0)
    np.testing.assert_allclose(e, np.exp(-np.arange(1, 13) * 10 / 80), rtol=1e-5)
    # First echo: only the F- -> F+ path, sin^2(a/2) e^{-ESP/T2}.
    e = physics.cpmg_echo_train(1.0, 80.0, 1000.0, 10.0, 4, 140.0)
    np.testing.assert_allclose(e[0], np.sin(np.deg2rad(70)) ** 2 * np.exp(-10 / 80), rtol=1e-5)
    # Hennig's classic no-relaxation 90-degree train: 1/2, 3/4, 3/4, 11/16, 11/16.
    e = physics.cpmg_echo_train(1.0, 1e9, 1e9, 10.0, 5, 90.0)
    np.testing.assert_allclose(e, [0.5, 0.75, 0.75, 0.6875, 0.6875], atol=1e-4)
    # Stimulated echoes make a mono-exponential fit read high: the late echoes decay slower.
    e = physics.cpmg_echo_train(1.0, 80.0, 1000.0, 10.0, 16, 150.0)
    assert e[-1] / e[0] > np.exp(-150 / 80)


MODELS = {
    "spin_echo": (lambda p: signals.spin_echo(p[0], p[1], p[2], 2000.0, 30.0), [0.8, 900.0, 80.0]),
    "ir": (lambda p: signals.inversion_recovery(p[0], p[1], p[2], 4500.0, 7.0, 400.0, k=p[3],
                                                magnitude=False), [1.0, 700.0, 60.0, 0.95]),
    "ir_magnitude": (lambda p: signals.inversion_recovery(p[0], p[1], p[2], 4500.0, 7.0, 100.0, k=p[3]),
                     [1.0, 700.0, 60.0, 0.95]),
    "flair": (lambda p: signals.flair(p[0], p[1], p[2], 15000.0, 100.0, 3000.0), [0.9, 1200.0, 90.0]),
    "ir_fse": (lambda p: signals.ir_fse_magnitude(p[0], p[1], 850.0, b=p[2]), [1.0, 900.0, 1.9]),
    "ir3": (lambda p: signals.ir_three_parameter(p[0], p[1], p[2], 850.0, 4500.0), [1.0, 900.0, 1.9]),
    "spgr": (lambda p: signals.spoiled_gradient_echo(p[0], p[1], 7.3, p[2]), [1.0, 1100.0, 12.0]),
    "mese": (lambda p: signals.multi_echo_spin_echo(p[0], p[1], 40.0, offset=p[2]), [1.0, 90.0, 0.05]),
    "epg": (lambda p: physics.cpmg_echo_train(p[0], p[1], 1000.0, 10.0, 6, p[2]), [1.0, 90.0, 150.0]),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_finite_differences(name):
    fn, p = MODELS[name]
    with jax.enable_x64(True):
        check_grads(fn, (jnp.asarray(p, jnp.float64),), order=1, modes=("fwd", "rev"),
                    atol=1e-6, rtol=1e-5, eps=1e-4)


def test_jit_and_vmap_consistency():
    prot = physics.get_protocol("four_contrast_brain")
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    maps = {"PD": jax.random.uniform(k1, (7,), minval=0.5, maxval=1.0),
            "T1": jax.random.uniform(k2, (7,), minval=300.0, maxval=4500.0),
            "T2": jax.random.uniform(k3, (7,), minval=40.0, maxval=2000.0)}
    direct = physics.simulate(maps, prot)
    jitted = jax.jit(physics.simulate)(maps, prot)
    vmapped = jax.vmap(physics.simulate, in_axes=(0, None))(maps, prot)
    np.testing.assert_allclose(jitted, direct, rtol=1e-6)
    np.testing.assert_allclose(vmapped, direct, rtol=1e-6)
    assert direct.shape == (7, 4)


def _all_model_values(t1, t2):
    return jnp.stack([
        signals.spin_echo(1.0, t1, t2, 500.0, 10.0),
        signals.inversion_recovery(1.0, t1, t2, 4500.0, 7.0, 35.0),
        signals.inversion_recovery(1.0, t1, t2, 4500.0, 7.0, 3000.0, k=0.9, magnitude=False),
        signals.flair(1.0, t1, t2, 15000.0, 100.0, 3000.0),
        signals.ir_fse_magnitude(1.0, t1, 50.0),
        signals.ir_three_parameter(1.0, t1, 1.9, 35.0, 4500.0),
        signals.spoiled_gradient_echo(1.0, t1, 7.3, 15.0),
        signals.multi_echo_spin_echo(1.0, t2, 320.0),
        physics.cpmg_echo_train(1.0, t2, t1, 10.0, 4, 160.0).sum(-1),
    ])


def test_finite_values_and_gradients_over_physiological_range_and_edges():
    t1 = jnp.concatenate([jnp.geomspace(1.0, 10000.0, 40), jnp.array([0.0, 1e-3, 1e5])])
    t2 = jnp.concatenate([jnp.geomspace(1.0, 5000.0, 40), jnp.array([0.0, 1e-3, 1e5])])
    t1g, t2g = jnp.meshgrid(t1, t2)
    vals = jax.jit(_all_model_values)(t1g, t2g)
    assert bool(jnp.all(jnp.isfinite(vals)))
    g = jax.jit(jax.vmap(jax.vmap(jax.jacfwd(_all_model_values, argnums=(0, 1)))))(t1g, t2g)
    for gi in g:
        assert bool(jnp.all(jnp.isfinite(gi)))
    gr = jax.jit(jax.vmap(jax.vmap(jax.grad(lambda a, b: _all_model_values(a, b).sum(),
                                                  argnums=(0, 1)))))(t1g, t2g)
    for gi in gr:
        assert bool(jnp.all(jnp.isfinite(gi)))


def test_decay_edges():
    assert float(signals.decay(10.0, 0.0)) == 0.0
    assert float(signals.decay(0.0, 0.0)) == 1.0
    assert float(signals.decay(10.0, jnp.inf)) == 1.0
    assert float(jax.grad(signals.decay, argnums=1)(10.0, 0.0)) == 0.0


def test_named_protocols():
    assert set(physics.list_protocols()) >= {"four_contrast_brain", "ir_fse_7ti", "nist_vir"}
    p = physics.get_protocol("four_contrast_brain")
    np.testing.assert_array_equal(p.tr_ms, [500, 4500, 8000, 15000])
    np.testing.assert_array_equal(p.te_ms, [10, 100, 10, 100])
    assert p.kinds == ("se", "se", "se", "flair") and float(p.ti_ms[3]) == 3000
    p = physics.get_protocol("ir_fse_7ti")
    np.testing.assert_array_equal(p.ti_ms, [50, 100, 250, 500, 850, 1500, 2500])
    np.testing.assert_allclose(p.te_ms, 7.14)
    np.testing.assert_array_equal(p.tr_ms, 10000)
    p = physics.get_protocol("nist_vir")
    np.testing.assert_array_equal(p.ti_ms, [35, 75, 100, 125, 150, 250, 1000, 1500, 2000, 3000])
    np.testing.assert_array_equal(p.tr_ms, 4500)
    with pytest.raises(KeyError, match="unknown protocol"):
        physics.get_protocol("nope")
    # Round trip through the JSON form.
    q = physics.Protocol.from_dict(p.to_dict())
    np.testing.assert_array_equal(q.ti_ms, p.ti_ms)
    assert q.kinds == p.kinds and q.names == p.names


def test_inversion_given_as_k_or_as_b_is_one_quantity():
    """B = 1 + k: an IR-FSE series simulated from k equals the one from B = 1 + k (closed form
    |PD (1 - B e^{-TI/T1})|), an IR series from B equals the one from k = B - 1, and without
    either the inversion is perfect (k = 1, B = 2)."""
    fse, vir = physics.get_protocol("ir_fse_7ti"), physics.get_protocol("nist_vir")
    base = {"PD": 0.8, "T1": 900.0, "T2": 80.0}
    k = 0.85
    by_k = physics.simulate({**base, "k": k}, fse)
    ti = np.asarray(fse.ti_ms)
    np.testing.assert_allclose(by_k, 0.8 * np.abs(1 - (1 + k) * np.exp(-ti / 900.0)), rtol=1e-5)
    np.testing.assert_allclose(physics.simulate({**base, "B": 1 + k}, fse), by_k, rtol=1e-6)
    np.testing.assert_allclose(physics.simulate({**base, "B": 1 + k}, vir),
                               physics.simulate({**base, "k": k}, vir), rtol=1e-6)
    np.testing.assert_allclose(physics.simulate(base, fse),
                               physics.simulate({**base, "B": 2.0}, fse), rtol=1e-6)
    np.testing.assert_allclose(physics.simulate(base, vir),
                               physics.simulate({**base, "k": 1.0}, vir), rtol=1e-6)
    # The kind's own form wins where both are given.
    np.testing.assert_allclose(physics.simulate({**base, "k": 0.5, "B": 1 + k}, fse), by_k,
                               rtol=1e-6)


def test_protocol_validation():
    with pytest.raises(ValueError, match="unknown sequence kind"):
        physics.Protocol.create(("se", "bogus"), tr_ms=100.0)
    with pytest.raises(ValueError, match="te_ms has shape"):
        physics.Protocol.create(("se", "se"), tr_ms=100.0, te_ms=[1.0, 2.0, 3.0])
    with pytest.raises(KeyError, match="needs map 'T2'"):
        physics.simulate({"PD": 1.0, "T1": 100.0}, physics.get_protocol("four_contrast_brain"))


@pytest.mark.parametrize("snr", [5.0, 50.0])
def test_rician_noise_moments(snr):
    sigma = 1.0 / snr
    x = physics.add_rician_noise(jax.random.key(1), jnp.ones((400_000,)), sigma)
    mean, std = physics.rician_moments(1.0, sigma)
    np.testing.assert_allclose(float(x.mean()), float(mean), rtol=0.03)
    np.testing.assert_allclose(float(x.std()), float(std), rtol=0.03)
    # Background (nu = 0) is Rayleigh: mean sigma sqrt(pi/2).
    bg = physics.add_rician_noise(jax.random.key(2), jnp.zeros((400_000,)), sigma)
    np.testing.assert_allclose(float(bg.mean()), sigma * np.sqrt(np.pi / 2), rtol=0.01)


def test_rician_nll_matches_scipy():
    from scipy import stats
    m = np.array([0.05, 0.5, 1.0, 2.0, 5.0])
    nu, sigma = 1.2, 0.4
    ref = -stats.rice.logpdf(m, nu / sigma, scale=sigma)
    with jax.enable_x64(True):
        got = physics.rician_nll(jnp.asarray(m), nu, sigma)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_log_i0_and_ratio_against_scipy():
    from scipy import special
    x = np.concatenate([np.linspace(0, 10, 501), np.geomspace(10, 1e6, 200)])
    with jax.enable_x64(True):
        log_i0, ratio = physics.log_i0_and_ratio(jnp.asarray(x))
    np.testing.assert_allclose(log_i0, np.log(special.i0e(x)) + x, atol=1e-6, rtol=1e-7)
    np.testing.assert_allclose(ratio, special.i1e(x) / special.i0e(x), atol=2e-6)


def test_sigma_from_background():
    rng = np.random.default_rng(0)
    sigma = 3.0
    img = np.zeros((64, 64, 3))
    img[16:48, 16:48] = 100.0
    noisy = np.abs(img + sigma * rng.standard_normal(img.shape) + 1j * sigma * rng.standard_normal(img.shape))
    np.testing.assert_allclose(physics.estimate_sigma_background(noisy), sigma, rtol=0.05)


def _bloch_mprage(t1, tr, ti, flip, k=1.0, esp=7.1, n=176, shots=40, dt=0.71):
    """A step-by-step Bloch simulation of the MPRAGE shot (vector over T1 values): rotations about
    x, relaxation in steps of dt, perfect spoiling after each readout pulse, repeated shots until
    the steady state; returns the signed transverse signal of the centre pulse."""
    t1 = np.asarray(t1, np.float64)
    mz = np.ones_like(t1)
    c, a = n // 2, np.deg2rad(flip)
    ta = ti - c * esp
    td = tr - ta - n * esp

    def relax(mz, t):
        steps = max(1, int(round(t / dt)))
        for _ in range(steps):
            mz = 1.0 + (mz - 1.0) * np.exp(-(t / steps) / t1)
        return mz

    sig = None
    for _ in range(shots):
        mz = relax(-k * mz, ta)  # inversion, then the delay to the readout
        for p in range(n):
            my = mz * np.sin(a)  # rotation about x of (0, 0, mz): (0, mz sin a, mz cos a)
            mz = mz * np.cos(a)
            if p == c:
                sig = my
            mz = relax(mz, esp)  # transverse part spoiled
        mz = relax(mz, td)
    return sig


@pytest.mark.parametrize("tr,ti,flip,k", [(1900.0, 900.0, 9.0, 1.0), (2300.0, 700.0, 12.0, 0.95)])
def test_mprage_matches_a_step_by_step_bloch_simulation(tr, ti, flip, k):
    t1 = np.array([250.0, 600.0, 850.0, 1400.0, 2500.0, 4000.0])
    ref = _bloch_mprage(t1, tr, ti, flip, k=k)
    got = np.asarray(signals.mprage(1.0, jnp.asarray(t1, jnp.float32), tr, ti, flip, k=k,
                                    magnitude=False))
    np.testing.assert_allclose(got, ref, rtol=0.01)  # the tolerance; seen: ~1e-5
    np.testing.assert_allclose(np.asarray(signals.mprage(1.0, t1, tr, ti, flip, k=k)),
                               np.abs(ref), rtol=0.01)


def test_mprage_contrast_gradients_and_timing_check():
    prot = physics.get_protocol("qiu_mprage_gre_flair")
    maps = {"PD": jnp.array([0.69, 0.8, 1.0]), "T1": jnp.array([850.0, 1400.0, 4000.0]),
            "T2": jnp.array([75.0, 95.0, 2000.0])}
    mprage = physics.simulate(maps, prot)[:, 0]
    assert mprage[0] > mprage[1] > mprage[2]  # T1-weighted: WM > GM > CSF
    check_grads(lambda t1: signals.mprage(1.0, t1, 1900.0, 900.0, 9.0),
                (jnp.array([800.0, 1500.0]),), order=1, modes=["rev"], rtol=2e-2)
    with pytest.raises(ValueError, match="does not fit its readout"):
        physics.Protocol.create("mprage", tr_ms=1500.0, ti_ms=900.0, flip_deg=9.0)
