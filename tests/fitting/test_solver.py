"""Voxelwise fitting: noiseless recovery, efficiency against the CRLB, consistency, bad input."""

import jax
import numpy as np
import pytest

from qmri_jax import physics
from qmri_jax.fitting import (SolverOptions, crlb, despot1, fit_images, fit_signals, fit_voxels,
                              get_model, list_models)


def _truth(model, n, rng):
    """Random parameters well inside the model's identifiable range."""
    ranges = {"PD": (0.5, 2.0), "a": (0.5, 2.0), "T1": (80.0, 3000.0), "k": (0.8, 1.0),
              "b": (1.7, 2.0), "B": (1.7, 2.0), "T2": (15.0, 300.0), "offset": (0.0, 0.05),
              "refocus": (120.0, 175.0), "B1": (0.75, 1.1)}
    out = {}
    for p in model.params:
        lo, hi = ranges[p]
        out[p] = np.exp(rng.uniform(np.log(lo), np.log(hi), n)) if p in ("T1", "T2") else rng.uniform(lo, hi, n)
    return out


CASES = {
    "ir": "nist_vir",
    "ir3": "nist_vir",
    "ir_fse": "ir_fse_7ti",
    "t2": "nist_mse",
    "t2_offset": "nist_mse",
    "t2_epg": "nist_mse",
    "t2_epg_b1": "nist_mse",
    "vfa": "nist_vfa",
    "joint": "four_contrast_brain",
}


def test_every_model_has_a_recovery_case():
    assert set(CASES) == set(list_models())


@pytest.mark.parametrize("name", sorted(CASES))
def test_noiseless_recovery(name):
    model, prot = get_model(name), physics.get_protocol(CASES[name])
    truth = _truth(model, 64, np.random.default_rng(0))
    if name == "joint":  # brain tissue range; TE 10/100 ms pins T2 poorly beyond ~1000 ms (CSF)
        truth["T1"] = np.random.default_rng(1).uniform(600, 3000, 64)
        truth["T2"] = np.random.default_rng(2).uniform(40, 400, 64)
    if name == "vfa":  # PD scale of an SPGR signal is small; keep T1 within the protocol's range.
        truth["T1"] = np.random.default_rng(3).uniform(100, 2500, 64)
    y = np.asarray(model.signal(truth, prot))
    res = fit_voxels(model, prot, y)
    for p in model.params:
        np.testing.assert_allclose(res.params[p], truth[p], rtol=2e-3, atol=1e-4, err_msg=p)
    assert res.converged.mean() > 0.95


def test_statistical_efficiency_against_crlb():
    """Monte-Carlo std of T1 is within 15% of sqrt(CRLB) for T1 in 300-2500 ms (IR, known sigma)."""
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    sigma, reps = 0.02, 1500
    rng = np.random.default_rng(0)
    for t1 in (300.0, 800.0, 1500.0, 2500.0):
        truth = {"PD": np.ones(reps), "T1": np.full(reps, t1), "k": np.full(reps, 0.95)}
        clean = np.asarray(model.signal(truth, prot))
        noisy = clean + sigma * rng.standard_normal(clean.shape)
        res = fit_voxels(model, prot, noisy, sigma=sigma)
        bound = np.sqrt(crlb(model, prot, {k: v[:1] for k, v in truth.items()}, sigma)["T1"][0])
        sd = np.std(res.params["T1"])
        assert abs(sd / bound - 1) < 0.15, (t1, sd, bound)
        # The fit's own CRLB map (at the estimates) agrees with the bound at the truth.
        np.testing.assert_allclose(np.median(res.crlb_sd("T1")), bound, rtol=0.15)
        assert abs(np.mean(res.params["T1"]) / t1 - 1) < 0.02


def test_vmap_equals_per_voxel_loop():
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    rng = np.random.default_rng(5)
    truth = _truth(model, 12, rng)
    y = np.asarray(model.signal(truth, prot)) + 0.01 * rng.standard_normal((12, len(prot)))
    batch = fit_voxels(model, prot, y, sigma=0.01)
    for i in range(12):
        one = fit_voxels(model, prot, y[i:i + 1], sigma=0.01)
        for p in model.params:
            np.testing.assert_allclose(one.params[p][0], batch.params[p][i], rtol=1e-4, err_msg=p)


def test_fit_signals_is_fit_voxels_as_a_pure_function():
    """The jit-able fit: noiseless recovery over any leading shape, the same estimates as
    fit_voxels with the same iterations (Gaussian loss), finite on all-zero series."""
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    rng = np.random.default_rng(7)
    truth = _truth(model, 48, rng)
    y = np.asarray(model.signal(truth, prot))
    out = jax.jit(lambda s: fit_signals(model, prot, s, max_iter=30))(y.reshape(6, 8, -1))
    for p in model.params:
        assert out[p].shape == (6, 8)
        np.testing.assert_allclose(np.asarray(out[p]).ravel(), truth[p], rtol=2e-3, atol=1e-4,
                                   err_msg=p)
    assert np.asarray(out["converged"]).mean() > 0.95
    noisy = np.abs(y + 0.02 * rng.standard_normal(y.shape))
    few = jax.jit(lambda s: fit_signals(model, prot, s, max_iter=5))(noisy)
    ref = fit_voxels(model, prot, noisy, options=SolverOptions(loss="gaussian", max_iter=5))
    # Same steps; the dictionary matmul is blocked differently (padded chunk), so float32
    # rounding moves unconverged 5-step estimates by ~1e-4, far below the noise (~5% in T1).
    for p in model.params:
        np.testing.assert_allclose(np.asarray(few[p]), ref.params[p], rtol=1e-3, err_msg=p)
    zero = jax.jit(lambda s: fit_signals(model, prot, s, max_iter=5))(np.zeros((48, len(prot))))
    assert all(np.all(np.isfinite(np.asarray(zero[p]))) for p in model.params)
    np.testing.assert_array_equal(np.asarray(zero["PD"]), 0.0)
    with pytest.raises(ValueError, match=r"signals \[..., 3\] for protocol 'nist_vir'"):
        fit_signals(model, prot, np.ones((2, 3)))
    with pytest.raises(ValueError, match="needs images of kind"):
        fit_signals(get_model("t2"), prot, y)


def test_sharded_equals_single_device():
    assert len(jax.devices()) == 4, "conftest sets four fake CPU devices"
    model, prot = get_model("ir3"), physics.get_protocol("nist_vir")
    rng = np.random.default_rng(6)
    truth = _truth(model, 3000, rng)
    y = np.abs(np.asarray(model.signal(truth, prot)) + 0.02 * rng.standard_normal((3000, len(prot))))
    opts = SolverOptions(loss="rician", chunk_size=2048)
    many = fit_voxels(model, prot, y, sigma=0.02, options=opts)
    one = fit_voxels(model, prot, y, sigma=0.02, options=opts, devices=jax.devices()[:1])
    # Per-voxel math is identical; only the blocking of the dictionary matmul differs (rounding at
    # 1e-7), and LM stops at a 1e-5 relative cost change, so estimates agree to ~1e-4 relative,
    # far inside the noise (a few percent of the precision bound).
    for p in model.params:
        np.testing.assert_allclose(many.params[p], one.params[p], rtol=1e-3, err_msg=p)
        assert np.all(np.abs(many.params[p] - one.params[p]) < 0.05 * one.crlb_sd(p)), p
    assert np.mean(many.converged == one.converged) > 0.99


def test_chunk_size_does_not_change_the_fit():
    """Chunks of 4096 voxels run the IR start in blocks (a ``lax.map`` on CPU), chunks of 1024 in
    one piece: the same arithmetic up to rounding."""
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    rng = np.random.default_rng(7)
    truth = _truth(model, 4096, rng)
    clean = np.asarray(model.signal(truth, prot))
    y = np.abs(clean + 0.02 * rng.standard_normal(clean.shape))
    fits = [fit_voxels(model, prot, y, sigma=0.02, devices=jax.devices()[:1],
                       options=SolverOptions(loss="rician", chunk_size=c)) for c in (4096, 1024)]
    for p in model.params:
        sd = fits[1].crlb_sd(p)
        assert np.all(np.abs(fits[0].params[p] - fits[1].params[p]) <= 0.01 * sd), p
    assert np.mean(fits[0].converged == fits[1].converged) > 0.999
    assert fits[0].converged.mean() > 0.9


@pytest.mark.parametrize("name", ["ir3", "t2"])
def test_no_weights_equals_all_weights_on_several_devices(name):
    """``weights=None`` (one row of ones on the devices, no [V, N] host array) fits as explicit
    all-True weights do, sharded over the four fake devices with padding. The two compilations
    differ in rounding (the start's sums over the weights are computed once for a single row), and
    the fixed-count LM then stops at slightly different points of a flat objective: the estimates
    agree to 1% of their CRLB SD and the objective to 1e-5."""
    model = get_model(name)
    prot = physics.get_protocol(CASES[name])
    rng = np.random.default_rng(12)
    truth = _truth(model, 1001, rng)
    clean = np.asarray(model.signal(truth, prot))
    y = np.abs(clean + 0.02 * rng.standard_normal(clean.shape))
    opts = SolverOptions(loss="rician", chunk_size=512)
    none = fit_voxels(model, prot, y, sigma=0.02, options=opts)
    ones = fit_voxels(model, prot, y, weights=np.ones_like(y, bool), sigma=0.02, options=opts)
    for p in model.params:
        sd = none.crlb_sd(p)
        assert np.all(np.isfinite(sd)), p
        assert np.max(np.abs(none.params[p] - ones.params[p]) / sd) < 0.01, p
        np.testing.assert_allclose(none.crlb[p], ones.crlb[p], rtol=1e-2, err_msg=p)
    np.testing.assert_allclose(none.cost, ones.cost, rtol=1e-5, atol=1e-9)
    assert np.mean(none.converged == ones.converged) >= 0.999
    assert none.converged.mean() > 0.9


def test_excluded_samples_do_not_bias():
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    truth = {"PD": np.full(8, 1.0), "T1": np.linspace(200, 2000, 8), "k": np.full(8, 0.97)}
    y = np.array(model.signal(truth, prot))
    w = np.ones_like(y, bool)
    y[:, :3] = 0.5  # corrupt (e.g. clipped) samples
    w[:, :3] = False
    res = fit_voxels(model, prot, y, weights=w)
    np.testing.assert_allclose(res.params["T1"], truth["T1"], rtol=2e-3)
    bad = fit_voxels(model, prot, y)
    assert np.max(np.abs(bad.params["T1"] / truth["T1"] - 1)) > 0.05


def test_rician_mle_removes_noise_floor_bias():
    """At low SNR the late echoes sit on the Rician floor: NLLS over-estimates T2, MLE does not."""
    model, prot = get_model("t2"), physics.get_protocol("nist_mse")
    sigma, n = 0.05, 2000
    truth = {"PD": np.ones(n), "T2": np.full(n, 60.0)}
    clean = np.asarray(model.signal(truth, prot))
    noisy = np.asarray(physics.add_rician_noise(jax.random.key(0), clean, sigma))
    ls = fit_voxels(model, prot, noisy, sigma=sigma)
    ml = fit_voxels(model, prot, noisy, sigma=sigma, options=SolverOptions(loss="rician", max_iter=30))
    bias_ls = np.median(ls.params["T2"]) / 60 - 1
    bias_ml = np.median(ml.params["T2"]) / 60 - 1
    assert bias_ls > 0.05
    assert abs(bias_ml) < 0.02


def test_despot1_recovers_t1():
    prot = physics.get_protocol("nist_vfa")
    t1 = np.array([100.0, 500.0, 1000.0, 2000.0])
    y = np.asarray(physics.spoiled_gradient_echo(2.0, t1[:, None], 7.3, prot.flip_deg[None, :]))
    est, pd = despot1(y, np.asarray(prot.flip_deg), 7.3)
    np.testing.assert_allclose(est, t1, rtol=1e-4)
    np.testing.assert_allclose(pd, 2.0, rtol=1e-4)


def test_fit_images_maps_and_mask():
    prot = physics.get_protocol("nist_vir")
    t1 = np.full((16, 16), np.nan)
    t1[4:12, 4:12] = np.linspace(200, 1500, 64).reshape(8, 8)
    pd = np.where(np.isnan(t1), 0.0, 1.0)
    clean = np.asarray(physics.simulate({"PD": pd, "T1": np.nan_to_num(t1, nan=1000.0), "T2": 1e6,
                                         "k": 0.95}, prot))
    rng = np.random.default_rng(0)
    sigma = 0.01
    noisy = np.abs(clean + sigma * rng.standard_normal(clean.shape) + 1j * sigma * rng.standard_normal(clean.shape))
    res = fit_images(noisy, prot, "ir")
    inside = ~np.isnan(t1)
    np.testing.assert_array_equal(res.mask, inside)
    err = np.abs(res.maps["T1"][inside] - t1[inside])
    assert np.all(err < 4 * res.crlb_sd["T1"][inside])  # within 4 sd of the precision bound
    assert np.all(np.isnan(res.maps["T1"][~inside]))
    np.testing.assert_allclose(res.sigma, sigma, rtol=0.1)
    assert np.all(res.crlb_sd["T1"][inside] > 0)


def test_bad_input_messages():
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    y = np.ones((4, len(prot)))
    y[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf in 1 voxels"):
        fit_voxels(model, prot, y)
    with pytest.raises(ValueError, match=r"signals must be \[V, 10\]"):
        fit_voxels(model, prot, np.ones((4, 3)))
    with pytest.raises(ValueError, match="Rician loss needs the noise sigma"):
        fit_voxels(model, prot, np.ones((4, 10)), options=SolverOptions(loss="rician"))
    with pytest.raises(ValueError, match="needs images of kind"):
        fit_voxels(get_model("t2"), prot, np.ones((4, 10)))
    with pytest.raises(ValueError, match="TE_j = j \\* ESP"):
        fit_voxels(get_model("t2_epg"), physics.Protocol.create("se", tr_ms=5000, te_ms=[10, 30, 40]),
                   np.ones((2, 3)))
    img = np.ones((5, 5, 10))
    img[2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="inside the mask have NaN/Inf"):
        fit_images(img, prot, "ir", mask=np.ones((5, 5), bool), sigma=0.1)


@pytest.mark.parametrize("name", ["ir", "ir3", "ir_fse"])
def test_ir_cost_is_the_objective_of_the_returned_parameters(name):
    """The reported cost of the vectorised IR fit is the objective at the parameters it returns,
    also where they were moved onto a bound (pure-noise voxels): recomputed here from the physics
    signal model, in the solver's normalised units (samples over the voxel's largest sample)."""
    from qmri_jax.fitting.objective import objective_terms

    model = get_model(name)
    prot = physics.get_protocol(CASES[name])
    rng = np.random.default_rng(3)
    truth = _truth(model, 48, rng)
    sigma = 0.02
    clean = np.asarray(model.signal(truth, prot))
    y = np.abs(clean + sigma * rng.normal(size=clean.shape) + 1j * sigma * rng.normal(size=clean.shape))
    y = np.concatenate([y, np.abs(sigma * rng.normal(size=(48, len(prot)))
                                  + 1j * sigma * rng.normal(size=(48, len(prot))))]).astype(np.float32)
    res = fit_voxels(model, prot, y, sigma=sigma, options=SolverOptions(loss="rician"))
    assert res.at_bound[48:].mean() > 0.3 and not res.at_bound[:48].any()
    amp = y.max(axis=1, keepdims=True)
    nu = np.abs(np.asarray(model.signal(res.params, prot))) / amp
    f, _ = objective_terms("rician", y / amp, nu, np.ones_like(y), sigma / amp)
    np.testing.assert_allclose(res.cost, np.asarray(f).sum(axis=1), rtol=2e-4, atol=1e-7)


def test_start_values_replace_the_global_start():
    model, prot = get_model("t2"), physics.get_protocol("nist_mse")
    truth = _truth(model, 40, np.random.default_rng(4))
    y = np.asarray(model.signal(truth, prot))
    # Started at the optimum, one step stays there; started 3x off in T2, one step does not reach
    # it (the dictionary start would: it lies on the grid next to the truth), twenty steps do.
    at_truth = fit_voxels(model, prot, y, options=SolverOptions(max_iter=1), start=truth)
    np.testing.assert_allclose(at_truth.params["T2"], truth["T2"], rtol=1e-5)
    far = {"PD": truth["PD"], "T2": 3.0 * truth["T2"]}
    one = fit_voxels(model, prot, y, options=SolverOptions(max_iter=1), start=far)
    assert np.median(np.abs(one.params["T2"] / truth["T2"] - 1)) > 0.05
    dictionary = fit_voxels(model, prot, y, options=SolverOptions(max_iter=1))
    assert np.median(np.abs(dictionary.params["T2"] / truth["T2"] - 1)) < 0.05
    many = fit_voxels(model, prot, y, options=SolverOptions(max_iter=20), start=far)
    np.testing.assert_allclose(many.params["T2"], truth["T2"], rtol=2e-3)
    with pytest.raises(ValueError, match="start needs every parameter"):
        fit_voxels(model, prot, y, start={"T2": truth["T2"]})
    with pytest.raises(ValueError, match="1 non-finite"):
        fit_voxels(model, prot, y, start={"PD": truth["PD"], "T2": np.where(
            np.arange(40) == 3, np.nan, truth["T2"])})
