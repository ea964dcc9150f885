"""A model's uncertainty against the exact posterior: the exact posterior itself scores a ratio
of 1 and no distance, a model twice as wide a ratio of 2, and the background noise estimate of
each slice is the simulated sigma."""

import numpy as np
import pytest

from qmri_jax.evaluation.exact_posterior import exact_uncertainty, slice_sigmas
from qmri_jax.fitting.models import get_model
from qmri_jax.fitting.posterior import GridPrior, ir_posterior
from qmri_jax.physics.protocol import get_protocol

PROT = get_protocol("nist_vir")
PRIOR = GridPrior(num_t1=32, num_k=12, num_pd=12, coarse_t1=48, coarse_k=9)
SIGMA = 0.03


@pytest.fixture(scope="module")
def scan():
    """Two 16 x 16 slices, a disc of random (T1, k, PD) voxels in noise-only background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    disc = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 25
    mask = np.stack([disc, disc])
    shape = mask.shape
    t1 = np.exp(rng.uniform(np.log(300), np.log(3000), shape))
    k = rng.uniform(0.85, 1.15, shape)
    pd = np.where(mask, rng.uniform(0.5, 1.0, shape), 0.0)
    clean = np.abs(np.asarray(get_model("ir").signal({"T1": t1, "k": k, "PD": pd}, PROT)))
    noisy = np.hypot(clean + SIGMA * rng.standard_normal(clean.shape),
                     SIGMA * rng.standard_normal(clean.shape))
    return {"images": noisy.astype(np.float32), "mask": mask.astype(np.float32),
            "targets": np.stack([t1, pd, k], -1)}


def test_background_sigma_is_the_simulated_one(scan):
    np.testing.assert_allclose(slice_sigmas(scan["images"], scan["mask"]), SIGMA, rtol=0.05)
    assert np.isnan(slice_sigmas(scan["images"], np.ones_like(scan["mask"])))[0]


def test_the_exact_posterior_scores_one_and_a_wider_model_two(scan):
    brain = scan["mask"].astype(bool)
    sig = slice_sigmas(scan["images"], brain)
    idx = np.argwhere(brain)
    ex = ir_posterior(scan["images"][tuple(idx.T)], PROT, sig[idx[:, 0]], PRIOR)
    names = ("T1", "PD", "k")
    mean = np.zeros(scan["targets"].shape)
    std = np.ones(scan["targets"].shape)
    for c, n in enumerate(names):
        mean[..., c][tuple(idx.T)] = ex[n]["mean"]
        std[..., c][tuple(idx.T)] = ex[n]["sd"]
    res = exact_uncertainty(mean, std, scan, names, PROT, PRIOR, max_voxels=10_000)
    assert res["voxels"] == brain.sum() and res["map"] == "T1"
    for n in ("T1", "k"):
        r = res["by_map"][n]
        assert r["sd_ratio_median"] == pytest.approx(1.0, rel=1e-5)
        assert r["w2_median"] == pytest.approx(0.0, abs=1e-5)
        assert r["raw_coverage_2sd"] == r["exact_coverage_2sd"] > 0.85
    assert res["by_map"]["PD"]["sd_ratio_median"] == pytest.approx(1.0, rel=1e-5)
    wide = exact_uncertainty(mean, 2 * std, scan, names, PROT, PRIOR, max_voxels=10_000)
    assert wide["sd_ratio_median"] == pytest.approx(2.0, rel=1e-5)
    assert wide["w2_median"] == pytest.approx(1.0, rel=1e-5)
    assert wide["raw_coverage_2sd"] >= res["raw_coverage_2sd"]
    few = exact_uncertainty(mean, std, scan, names, PROT, PRIOR, max_voxels=7, seed=1)
    assert few["voxels"] == 7
    assert exact_uncertainty(mean, std, {**scan, "mask": np.ones_like(scan["mask"])}, names,
                             PROT, PRIOR) == {"skipped": "no slice has 50 background samples "
                                                         "to estimate the noise from"}
