"""Posterior uncertainty: coverage, Spearman ranking and sigma-scaling calibration."""

import numpy as np
import pytest

from qmri_jax.evaluation.uncertainty import fit_std_scale, uncertainty_metrics


def _fake_posterior(rng, n, sigma, reported):
    """Truth, a mean off by N(0, sigma) and a reported std ``reported * sigma`` on a [n, 8, 8]
    brain (relative units)."""
    truth = rng.uniform(500, 1500, size=(n, 8, 8, 1))
    sd = sigma * truth
    mean = truth + rng.normal(size=truth.shape) * sd
    return mean, reported * sd, {"targets": truth, "mask": np.ones((n, 8, 8)),
                                 "images": np.zeros((n, 8, 8, 2))}


@pytest.mark.parametrize("reported", [1 / 50, 1.0, 4.0])
def test_std_scale_recovers_the_miscalibration_on_held_out_data(reported):
    """Posterior std off by a known factor: the fitted scale undoes it (1.96 / 2 / factor for a
    Gaussian) and held-out coverage of mean +- 2 scaled std is the requested 95%."""
    rng = np.random.default_rng(0)
    mean, std, val = _fake_posterior(rng, 400, 0.05, reported)
    cal = fit_std_scale(mean, std, val, ("T1",), 0.95)
    np.testing.assert_allclose(cal["T1"]["std_scale"], 1.96 / 2 / reported, rtol=0.03)
    mean, std, test = _fake_posterior(rng, 400, 0.05, reported)
    unc = uncertainty_metrics(mean, std, test, ("T1",), cal)
    raw = {1 / 50: 0.032, 1.0: 0.954, 4.0: 1.0}[reported]  # P(|z| <= 2 * reported)
    assert abs(unc["coverage_2sigma"] - raw) < 0.01
    assert abs(unc["coverage_2sigma_calibrated"] - 0.95) < 0.01
    assert unc["std_scale"] == cal["T1"]["std_scale"]
    assert "coverage_2sigma_calibrated" not in uncertainty_metrics(mean, std, test, ("T1",))
    with pytest.raises(ValueError, match="calibration_coverage"):
        fit_std_scale(mean, std, val, ("T1",), 1.5)
