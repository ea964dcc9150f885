"""Fitting defects found in review (issue 28); each test failed on the old code."""

import numpy as np
import pytest

from qmri_jax import physics
from qmri_jax.fitting import SolverOptions, crlb, fit_signals, fit_voxels, get_model

TI = [35.0, 75.0, 100.0, 125.0, 150.0, 250.0, 1000.0, 1500.0, 2000.0, 3000.0]


@pytest.mark.parametrize("name", ["ir", "ir3", "ir_fse"])
def test_signed_ir_is_fitted_as_signed(name):
    """Phase-corrected (signed) IR data are fitted with the signed model: noiseless T1 300-2500 ms
    come back exact (the old code fitted the magnitude model: 791/1597/3579/5 ms)."""
    model = get_model(name)
    prot = physics.Protocol.create("ir_signed", tr_ms=4500.0, ti_ms=TI, te_ms=0.0, name="signed")
    t1 = np.array([300.0, 800.0, 1500.0, 2500.0])
    truth = {"ir": {"PD": np.ones(4), "T1": t1, "k": np.full(4, 0.95)},
             "ir3": {"a": np.ones(4), "T1": t1, "b": np.full(4, 1.9)},
             "ir_fse": {"PD": np.ones(4), "T1": t1, "B": np.full(4, 1.9)}}[name]
    y = np.asarray(model.signal(truth, prot))
    assert (y < 0).any()  # the data really are signed
    res = fit_voxels(model, prot, y)
    np.testing.assert_allclose(res.params["T1"], t1, rtol=1e-3)
    assert res.converged.all()
    with pytest.raises(ValueError, match="magnitude"):
        fit_voxels(model, prot, y, sigma=0.01, options=SolverOptions(loss="rician"))


def _brute_force_ir_cost(prot, y):
    """The global least-squares minimum of |c1 + c2 exp(-TI/T1)| per voxel: every null position
    (polarity pattern) on a fine T1 grid, amplitudes in closed form (float64)."""
    ti = np.asarray(prot.ti_ms, float)
    order = np.argsort(ti)
    t1 = np.geomspace(5.0, 10000.0, 1500)
    e = np.exp(-ti[None, :] / t1[:, None])  # [T, N]
    s0, s1, s2 = len(ti), e.sum(1), (e * e).sum(1)
    det = s0 * s2 - s1 * s1
    best = np.full(len(y), np.inf)
    for j in range(len(ti) + 1):
        sign = np.ones(len(ti))
        sign[order[:j]] = -1.0
        sy = y * sign
        t0, tt = sy.sum(1)[:, None], sy @ e.T  # [V, 1], [V, T]
        c1, c2 = (s2 * t0 - s1 * tt) / det, (s0 * tt - s1 * t0) / det
        gain = np.where((c1 > 0) & (c2 < 0), c1 * t0 + c2 * tt, -np.inf)
        best = np.minimum(best, 0.5 * ((y * y).sum(1) - gain.max(1)))
    return best


def test_magnitude_ir_finds_the_global_minimum():
    """SNR 20 magnitude IR: the least-squares fit reaches the global minimum (brute force over T1
    and every null position) in >= 99.9% of the voxels whose estimate is not on a bound (the old
    dictionary + LM start missed 5.3% here); under 1% end on a bound (e.g. k > 1.5)."""
    rng = np.random.default_rng(7)
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    n = 4000
    truth = {"PD": np.ones(n), "T1": np.exp(rng.uniform(np.log(50), np.log(3000), n)),
             "k": rng.uniform(0.8, 1.0, n)}
    clean = np.asarray(model.signal(truth, prot))
    noisy = np.abs(clean + 0.05 * (rng.standard_normal(clean.shape)
                                   + 1j * rng.standard_normal(clean.shape)))
    res = fit_voxels(model, prot, noisy)
    fitted = np.asarray(model.signal(res.params, prot), float)
    cost = 0.5 * ((fitted - noisy) ** 2).sum(1)
    ref = _brute_force_ir_cost(prot, noisy.astype(float))
    missed = (cost > ref * (1 + 1e-3) + 1e-7) & ~res.at_bound  # the reference has no bounds
    assert missed.mean() <= 1e-3, (missed.sum(), cost[missed][:5], ref[missed][:5])
    assert res.at_bound.mean() < 0.01
    assert res.converged[~res.at_bound].mean() > 0.99


@pytest.mark.parametrize("fit", ["fit_voxels", "fit_signals"])
def test_ir_recovered_before_the_first_ti_is_fitted_as_recovered(fit):
    """T1 8 ms, shortest TI 35 ms, SNR 50: the curve is flat. Where noise lifts the first sample
    above the rest, every short T1 of the global start needed c2 > 0, and the search ended on a
    far worse recovering curve: median T1 82 ms, 90th percentile 3174 ms, 43% below 20 ms. The
    flat curve is now a candidate of the start: most voxels come back below 20 ms."""
    rng = np.random.default_rng(11)
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    n = 2000
    clean = np.asarray(model.signal({"PD": np.ones(n), "T1": np.full(n, 8.0), "k": np.ones(n)},
                                    prot))
    noisy = np.abs(clean + 0.02 * (rng.standard_normal(clean.shape)
                                   + 1j * rng.standard_normal(clean.shape)))
    t1 = np.asarray((fit_voxels(model, prot, noisy).params if fit == "fit_voxels"
                     else fit_signals(model, prot, noisy))["T1"])
    assert np.mean(t1 < 20.0) > 0.8, np.percentile(t1, [50, 90])
    assert np.percentile(t1, 90) < 100.0, np.percentile(t1, [50, 90])


def test_degenerate_and_noise_voxels_are_not_converged():
    """All-zero voxels and pure noise are flagged not converged (the old code flagged 61% of noise
    voxels converged, an all-zero voxel converged at T1 = 5 ms); estimates on a bound say so."""
    rng = np.random.default_rng(3)
    model, prot = get_model("ir"), physics.get_protocol("nist_vir")
    noise = np.abs(rng.standard_normal((2000, len(prot))) + 1j * rng.standard_normal((2000, len(prot))))
    y = np.concatenate([np.zeros((1, len(prot))), noise])
    for loss in ("gaussian", "rician"):
        res = fit_voxels(model, prot, y, sigma=1.0, options=SolverOptions(loss=loss))
        assert not res.converged[0]
        assert res.converged[1:].mean() < 0.01, (loss, res.converged[1:].mean())
        assert res.at_bound.dtype == bool and res.at_bound[1:].any()
        on = np.zeros(len(y), bool)  # T1 or k on a bound (PD's bounds scale with each voxel)
        for p in ("T1", "k"):
            i = model.params.index(p)
            tol = 1e-6 * (model.upper[i] - model.lower[i])
            on |= (res.params[p] <= model.lower[i] + tol) | (res.params[p] >= model.upper[i] - tol)
        assert on[1:].any() and np.all(res.at_bound[on])


@pytest.mark.parametrize("snr,t2", [(10.0, 60.0), (20.0, 60.0), (50.0, 60.0), (10.0, 150.0)])
def test_rician_crlb_is_the_precision_of_the_rician_fit(snr, t2):
    """Under Rician noise the Monte-Carlo SD of the Rician MLE matches the Rician CRLB within 6%
    (nist_mse, 32 echoes); the Gaussian bound the old code reported is 17% too small for T2 60 ms
    at SNR 10. The fit's own CRLB map reports the Rician bound."""
    model, prot = get_model("t2"), physics.get_protocol("nist_mse")
    rng = np.random.default_rng(int(snr + t2))
    reps, sigma = 2000, 1.0 / snr
    truth = {"PD": np.ones(reps), "T2": np.full(reps, t2)}
    clean = np.asarray(model.signal(truth, prot))
    noisy = np.abs(clean + sigma * (rng.standard_normal(clean.shape)
                                    + 1j * rng.standard_normal(clean.shape)))
    res = fit_voxels(model, prot, noisy, sigma=sigma, options=SolverOptions(loss="rician"))
    one = {k: v[:1] for k, v in truth.items()}
    rician = np.sqrt(crlb(model, prot, one, sigma, noise="rician")["T2"][0])
    gaussian = np.sqrt(crlb(model, prot, one, sigma)["T2"][0])
    sd = np.std(res.params["T2"])
    assert abs(sd / rician - 1) < 0.06, (sd, rician, gaussian)
    np.testing.assert_allclose(np.median(res.crlb_sd("T2")), rician, rtol=0.03)
    if snr == 10.0 and t2 == 60.0:
        assert sd / gaussian > 1.1
