"""Contrast-transfer metrics: Otsu threshold, per-image metrics, the identity baseline."""

import numpy as np
import pytest

from qmri_jax.evaluation import transfer


def test_otsu_splits_two_clusters_between_them():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.0, 0.5, 4000), rng.normal(10.0, 1.0, 2000)
    t = transfer.otsu_threshold(np.concatenate([a, b]))
    assert np.mean(a > t) < 0.01 and np.mean(b <= t) < 0.01


def test_image_metrics_of_a_perfect_prediction_and_of_a_known_error():
    rng = np.random.default_rng(1)
    t = rng.uniform(1, 2, (16, 16))
    m = np.ones_like(t, bool)
    perfect = transfer.image_metrics(t, t, m)
    assert perfect["mse"] == 0 and perfect["nrmse"] == 0 and perfect["ssim"] == pytest.approx(1)
    assert transfer.image_metrics(3.0 * t, t, m)["mse"] < 1e-24  # each image's own scale
    rng2 = np.random.default_rng(3)
    p = t + rng2.normal(0, 0.05, t.shape)
    off = transfer.image_metrics(p, t, m)
    pn, tn = p / np.percentile(p, 99), t / np.percentile(t, 99)
    assert off["mse"] == pytest.approx(np.mean((pn - tn) ** 2), rel=1e-9)
    assert off["psnr"] == pytest.approx(10 * np.log10(tn.max() ** 2 / off["mse"]), rel=1e-9)


def test_identity_baseline_is_exact_for_a_scaled_copy():
    rng = np.random.default_rng(2)
    img = np.zeros((2, 24, 24))
    img[:, 4:20, 4:20] = rng.uniform(1, 3, (2, 16, 16))
    images = np.stack([img, 0.5 * img], -1)  # contrast 1 is contrast 0 at half the scale
    pred = np.stack([images, images])  # [K_in, N, H, W, K_out]: the model returns the truth
    rows = transfer.transfer_metrics(pred, images)
    for side in ("model", "baseline"):
        for pair in ((0, 1), (1, 0)):
            assert all(r["mse"] < 1e-20 for r in rows[side][pair])
