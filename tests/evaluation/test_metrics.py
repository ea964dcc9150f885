"""Masked metrics on hand-computed arrays; the SSIM metric and the SSIM loss agree."""

import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax import losses
from qmri_jax.evaluation import metrics as M

PRED = np.array([1.0, 2.0, 3.0, 4.0])
TRUTH = np.array([1.0, 1.0, 2.0, 5.0])
ALL = np.ones(4, bool)


def test_errors_on_hand_computed_values():
    # differences 0, 1, 1, -1; |%| 0, 100, 50, 20
    assert M.rmse(PRED, TRUTH, ALL) == pytest.approx(np.sqrt(0.75))
    assert M.mae(PRED, TRUTH, ALL) == pytest.approx(0.75)
    assert M.nrmse(PRED, TRUTH, ALL) == pytest.approx(np.sqrt(3 / 31))
    assert M.psnr(PRED, TRUTH, ALL) == pytest.approx(10 * np.log10(25 / 0.75))
    np.testing.assert_allclose(M.abs_pct_errors(PRED, TRUTH, ALL), [0, 100, 50, 20])
    # the mask leaves the last voxel out: differences 0, 1, 1 and a peak of 2
    m = np.array([True, True, True, False])
    assert M.rmse(PRED, TRUTH, m) == pytest.approx(np.sqrt(2 / 3))
    assert M.psnr(PRED, TRUTH, m) == pytest.approx(10 * np.log10(4 / (2 / 3)))
    # a non-positive truth has no percentage error
    np.testing.assert_allclose(M.abs_pct_errors(PRED, np.array([0.0, 1, 2, 5]), ALL),
                               [100, 50, 20])
    with pytest.raises(ValueError, match="shapes differ"):
        M.rmse(PRED, TRUTH[:3], ALL)


def test_masked_metrics_keys_medians_and_empty_mask():
    p, t = PRED.reshape(2, 2), TRUTH.reshape(2, 2)
    out = M.masked_metrics(p, t, ALL.reshape(2, 2))
    assert set(out) == set(M.METRIC_KEYS)
    assert out["median_abs_pct"] == pytest.approx(35.0) and out["mean_abs_pct"] == 42.5
    assert out["num_voxels"] == 4
    empty = M.masked_metrics(p, t, np.zeros((2, 2), bool))
    assert empty["num_voxels"] == 0 and np.isnan(empty["rmse"])


def test_identical_images_have_ssim_one_and_full_mutual_information():
    t = np.random.default_rng(0).uniform(1, 2, (2, 16, 16))
    m = np.ones_like(t, bool)
    assert M.ssim(t, t, m) == pytest.approx(1.0)
    assert M.mutual_information(t, t, m, bins=8) > M.mutual_information(
        t, np.random.default_rng(1).permutation(t.ravel()).reshape(t.shape), m, bins=8)


def test_bland_altman_on_hand_computed_pairs():
    out = M.bland_altman([10.0, 12.0, 14.0], [10.0, 10.0, 10.0])  # differences 0, 2, 4
    assert out["bias"] == pytest.approx(2.0) and out["n"] == 3
    assert out["loa_low"] == pytest.approx(2 - 1.96 * 2) and out["loa_high"] == pytest.approx(
        2 + 1.96 * 2)
    assert out["bias_pct"] == pytest.approx(20.0)
    assert out["loa_pct_high"] == pytest.approx(20 + 1.96 * 20)


def test_ssim_metric_and_ssim_loss_agree_on_the_same_images():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 1.0, (2, 24, 20))
    pred = truth + rng.normal(0, 0.1, truth.shape)
    mask = np.zeros(truth.shape, bool)
    mask[:, 3:21, 2:18] = True  # near the border too: both pad with zeros
    metric = M.ssim(pred, truth, mask)
    rng_t = float(truth[mask].max() - truth[mask].min())
    loss = losses.ssim(jnp.asarray(pred[..., None], jnp.float32),
                       jnp.asarray(truth[..., None], jnp.float32),
                       jnp.asarray(mask, jnp.float32), data_range=rng_t)
    assert 0.2 < metric < 0.95
    assert 1.0 - float(loss) == pytest.approx(metric, abs=1e-5)


def test_per_sample_metrics_are_mean_and_sd_over_slices():
    rng = np.random.default_rng(3)
    truth = rng.uniform(500, 1500, (4, 16, 16))
    pred = truth * (1 + rng.normal(0, [[[0.01]], [[0.05]], [[0.1]], [[0.2]]], truth.shape))
    mask = np.ones_like(truth, bool)
    mask[3] = False
    mask[3, :2, :2] = True  # 4 voxels: below min_voxels, left out
    out = M.per_sample_metrics(pred, truth, mask)
    per = [M.masked_metrics(pred[i], truth[i], mask[i]) for i in range(3)]
    for k in ("median_abs_pct", "psnr", "ssim", "rmse"):
        vals = [r[k] for r in per]
        assert out[k]["n"] == 3
        np.testing.assert_allclose(out[k]["mean"], np.mean(vals), rtol=1e-12)
        np.testing.assert_allclose(out[k]["sd"], np.std(vals, ddof=1), rtol=1e-12)
    assert out["median_abs_pct"]["mean"] != M.masked_metrics(pred, truth, mask)["median_abs_pct"]
