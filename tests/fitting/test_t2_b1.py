"""Multi-echo T2 with a smooth transmit field: the robust surface, fit-model covariates, and the
whole pipeline recovering a known B1 plane and known T2 on a synthetic slice."""

import numpy as np
import pytest

from qmri_jax.fitting import (SolverOptions, epg_model, fit_t2_smooth_b1, fit_voxels,
                              smooth_field)
from qmri_jax.physics import Protocol, SliceProfile, cpmg_slice_echo_train

N_ECHO, ESP = 16, 10.0
PROTOCOL = Protocol.create(["se"] * N_ECHO, tr_ms=5000.0, te_ms=ESP * np.arange(1, N_ECHO + 1),
                           name="cpmg16")
PROFILE = SliceProfile(n_positions=8)


def _grid(shape):
    return np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")


def test_smooth_field_recovers_a_surface_through_outliers():
    rng = np.random.default_rng(0)
    x, y = _grid((30, 24))
    truth = 1.1 + 0.1 * x - 0.05 * y + 0.04 * x * y - 0.03 * y**2
    values = truth + 0.005 * rng.standard_normal(truth.shape)
    outliers = rng.random(truth.shape) < 0.2  # a wrong local minimum in 20% of the voxels
    values[outliers] -= 0.3
    values[:5] = np.nan  # no value there: the surface is still defined
    field, w = smooth_field(values, np.ones_like(values), degree=2)
    np.testing.assert_allclose(field, truth, atol=0.01)
    assert np.all(w[outliers & np.isfinite(values)] == 0) and np.all(w[:5] == 0)
    # A plain least-squares plane would be pulled down by the outliers by ~0.06.
    with pytest.raises(ValueError, match="needs at least"):
        smooth_field(values, np.where(np.arange(30)[:, None] < 29, 0.0, 1.0) * np.ones((30, 24))
                     * (np.arange(24) < 3), degree=2)


def test_covariate_model_recovers_t2_with_b1_given():
    b1 = np.array([0.75, 0.9, 1.0, 1.15, 1.3, 1.2], np.float32)
    t2 = np.array([20.0, 45.0, 80.0, 150.0, 300.0, 60.0], np.float32)
    y = 1000.0 * np.asarray(cpmg_slice_echo_train(1.0, t2, 1000.0, ESP, N_ECHO, b1, PROFILE))
    model = epg_model(PROFILE, 1000.0, False)
    res = fit_voxels(model, PROTOCOL, y, covariates={"B1": b1},
                     options=SolverOptions(max_iter=20))
    np.testing.assert_allclose(res.params["T2"], t2, rtol=2e-3)
    np.testing.assert_allclose(res.params["PD"], 1000.0, rtol=2e-3)
    # The covariate matters: the same data with B1 = 1 everywhere read T2 wrong where B1 != 1.
    wrong = fit_voxels(model, PROTOCOL, y, covariates={"B1": np.ones_like(b1)},
                       options=SolverOptions(max_iter=20))
    assert np.max(np.abs(wrong.params["T2"] / t2 - 1)) > 0.05
    with pytest.raises(ValueError, match="covariates"):
        fit_voxels(model, PROTOCOL, y)
    with pytest.raises(ValueError, match="NaN"):
        fit_voxels(model, PROTOCOL, y, covariates={"B1": np.full(6, np.nan)})


def test_smooth_b1_pipeline_recovers_b1_plane_and_t2():
    """A 24x24 slice of four T2 compartments under a transmit field that rises 25% across it
    (0.86..1.08), Rician noise; the per-voxel B1 scatters (some voxels fall into the alias minimum
    at B1 1.3-1.5), the robust surface is the field, T2 is recovered."""
    rng = np.random.default_rng(1)
    shape = (24, 24)
    x, y = _grid(shape)
    b1 = 0.97 + 0.08 * x + 0.03 * y
    t2 = np.where(x < 0, np.where(y < 0, 40.0, 80.0), np.where(y < 0, 150.0, 25.0))
    clean = 2000.0 * np.asarray(cpmg_slice_echo_train(1.0, t2, 1000.0, ESP, N_ECHO, b1, PROFILE))
    sigma = 10.0
    noisy = np.abs(clean + sigma * rng.standard_normal(clean.shape)
                   + 1j * sigma * rng.standard_normal(clean.shape)).astype(np.float32)
    mask = np.ones(shape, bool)
    fit = fit_t2_smooth_b1(noisy, PROTOCOL, mask, sigma=sigma, profile=PROFILE, b1_stride=2,
                           max_iter=15)
    assert np.max(np.abs(fit.b1 - b1)) < 0.02
    voxel_b1 = fit.b1_voxel.maps["B1"][np.isfinite(fit.b1_voxel.maps["B1"])]
    assert voxel_b1.size == 144  # every second voxel in both directions
    est = fit.t2.maps["T2"]
    for value in (25.0, 40.0, 80.0, 150.0):
        region = t2 == value
        assert abs(np.median(est[region]) / value - 1) < 0.02, (value, np.median(est[region]))
    assert fit.t2.converged.mean() > 0.95
    # The smooth field is what makes the T2 map precise: per-voxel (PD, T2, B1) scatters more.
    free_t2 = fit.b1_voxel.maps["T2"]
    sel = np.isfinite(free_t2) & (t2 == 150.0)
    assert np.std(est[sel]) < np.std(free_t2[sel])


def test_t1_map_covariate_removes_the_t1_bias():
    """Long T2 with a long T1 (and short with short): one assumed T1 of 1000 ms biases T2 by up to
    7% through the stimulated echoes; the T1 map as a covariate reads every voxel exactly."""
    b1 = np.array([0.8, 0.9, 1.0, 1.1, 1.2, 1.15], np.float32)
    t2 = np.array([400.0, 300.0, 60.0, 250.0, 400.0, 40.0], np.float32)
    t1 = np.array([2500.0, 2000.0, 300.0, 2200.0, 3000.0, 250.0], np.float32)
    y = 1000.0 * np.asarray(cpmg_slice_echo_train(1.0, t2, t1, ESP, N_ECHO, b1, PROFILE))
    options = SolverOptions(max_iter=20)
    mapped = fit_voxels(epg_model(PROFILE, None, False), PROTOCOL, y,
                        covariates={"B1": b1, "T1": t1}, options=options)
    np.testing.assert_allclose(mapped.params["T2"], t2, rtol=2e-3)
    fixed = fit_voxels(epg_model(PROFILE, 1000.0, False), PROTOCOL, y, covariates={"B1": b1},
                       options=options)
    assert np.max(np.abs(fixed.params["T2"] / t2 - 1)) > 0.05
    # B1 fitted per voxel with the T1 map given: B1 and T2 both exact.
    free = fit_voxels(epg_model(PROFILE, None, True), PROTOCOL, y, covariates={"T1": t1},
                      options=options)
    np.testing.assert_allclose(free.params["T2"], t2, rtol=2e-3)
    np.testing.assert_allclose(free.params["B1"], b1, atol=2e-3)
    assert "T1 given per voxel" in epg_model(PROFILE, None, True).description


def test_smooth_b1_pipeline_takes_a_t1_map():
    shape = (12, 12)
    x, y = _grid(shape)
    b1 = 1.0 + 0.08 * x
    t2 = np.where(x < 0, 350.0, 60.0)
    t1 = np.where(x < 0, 2500.0, 400.0)
    clean = 2000.0 * np.asarray(cpmg_slice_echo_train(1.0, t2, t1, ESP, N_ECHO, b1, PROFILE))
    mask = np.ones(shape, bool)
    fit = fit_t2_smooth_b1(clean, PROTOCOL, mask, sigma=1.0, profile=PROFILE, t1_ms=t1,
                           b1_stride=2, max_iter=15)
    assert np.max(np.abs(fit.b1 - b1)) < 0.01
    np.testing.assert_allclose(fit.t2.maps["T2"], t2, rtol=0.01)
    assert fit.t1_ms is t1
    bad = t1.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="t1_ms map is not finite"):
        fit_t2_smooth_b1(clean, PROTOCOL, mask, sigma=1.0, profile=PROFILE, t1_ms=bad)
    with pytest.raises(ValueError, match="expected the images' grid"):
        fit_t2_smooth_b1(clean, PROTOCOL, mask, sigma=1.0, profile=PROFILE, t1_ms=t1[:6])
