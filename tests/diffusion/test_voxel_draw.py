"""Per-voxel training batches: the flat log-T1 draw and the re-simulated voxels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax.diffusion import voxel_draw
from qmri_jax.physics.protocol import get_protocol
from qmri_jax.physics.units import scale_maps


def test_flat_t1_voxel_draw_is_uniform_over_log_t1_bins_and_keeps_background():
    """flat_T1 weights: each occupied log-T1 bin of the brain gets the same draw probability (bins
    rarer than FLAT_T1_MIN_COUNT voxels proportionally less), the background keeps its share of
    the batch, or the share it is given."""
    names = ("T1", "PD", "k")
    t1 = np.r_[np.full(1000, 900.0), np.full(100, 150.0), np.full(40, 3000.0), np.full(2, 20.0),
               np.full(500, 900.0)]
    brain = np.r_[np.ones(1142, bool), np.zeros(500, bool)]
    scaled = scale_maps(jnp.stack([jnp.asarray(t1), jnp.ones(t1.shape),
                                             jnp.ones(t1.shape)], -1), jnp.asarray(brain), names)
    p = np.asarray(voxel_draw.flat_t1_weights(scaled[:, 0], jnp.asarray(brain)))
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1142:].sum(), 500 / 1642, rtol=1e-5)  # background share
    groups = [p[:1000].sum(), p[1000:1100].sum(), p[1100:1140].sum()]
    np.testing.assert_allclose(groups, groups[0], rtol=1e-5)  # 1000, 100 and 40 voxels alike
    rare = voxel_draw.FLAT_T1_MIN_COUNT
    np.testing.assert_allclose(p[1140:1142].sum(), groups[0] * 2 / rare, rtol=1e-5)
    np.testing.assert_allclose(np.ptp(p[:1000]), 0.0, atol=1e-12)  # one bin: equal weights
    # ddpm.voxel_background: the background gets that share, the brain bins keep their ratios.
    for share in (0.1, 0.0):
        q = np.asarray(voxel_draw.flat_t1_weights(scaled[:, 0], jnp.asarray(brain), share))
        np.testing.assert_allclose(q[1142:].sum(), share, atol=1e-7)
        np.testing.assert_allclose(q[:1142], p[:1142] * (1 - share) / p[:1142].sum(), rtol=1e-5)


def test_resimulated_voxels_follow_the_ir_model_at_their_new_t1_and_k():
    """ddpm.voxel_resimulate: the chosen brain voxels get T1 / k from the given ranges and the IR
    model's series at their fitted amplitude (a refit returns the new T1 and k; the noise has std
    amplitude / SNR), their PD target and the other voxels are kept."""
    from qmri_jax.fitting import fit_signals, get_model
    prot = get_protocol("nist_vir")
    model = get_model("ir")
    names = ("T1", "PD", "k")
    n = 1200
    rng = np.random.default_rng(0)
    amp = jnp.asarray(rng.uniform(0.3, 1.0, n), jnp.float32)
    images = model.signal({"PD": amp, "T1": jnp.full((n,), 900.0), "k": jnp.full((n,), 0.97)},
                          prot)
    targets = jnp.stack([jnp.full((n,), 900.0), 1.3 * amp, jnp.full((n,), 0.97)], -1)
    brain = jnp.arange(n) < 1000

    batch = {"images": images[:, None], "targets": targets[:, None],
             "mask": brain.astype(jnp.float32)[:, None],
             "sigma": jnp.full((n, 1), 0.123, jnp.float32)}  # a per-voxel noise SD
    resim_jit = jax.jit(lambda k, fraction, snr: voxel_draw.resimulate_voxels(
        batch, k, names, prot, fraction, (50.0, 3000.0), (0.8, 1.2),
        (snr, snr * (1 + 1e-6))))  # one compile: fraction and SNR are traced

    def resim(fraction, snr, seed=0):
        out = resim_jit(jax.random.key(seed), fraction, snr)
        x, y = np.asarray(out["images"])[:, 0], np.asarray(out["targets"])[:, 0]
        changed = np.any(x != np.asarray(images), axis=-1)
        np.testing.assert_array_equal(np.asarray(out["redrawn"])[:, 0], changed)  # the changed
        np.testing.assert_array_equal(np.asarray(out["mask"]), np.asarray(batch["mask"]))
        # the noise SD becomes amplitude / SNR on the redrawn voxels and is kept elsewhere
        sig = np.asarray(out["sigma"])[:, 0]
        np.testing.assert_allclose(sig[changed], np.asarray(amp)[changed] / snr, rtol=2e-3)
        np.testing.assert_allclose(sig[~changed], 0.123, rtol=1e-6)
        return x, y

    x, y = resim(1.0, 1e7)
    np.testing.assert_array_equal(x[1000:], np.asarray(images)[1000:])  # background kept
    np.testing.assert_array_equal(y[1000:], np.asarray(targets)[1000:])
    np.testing.assert_array_equal(y[:, 1], np.asarray(targets)[:, 1])  # PD target kept
    assert 50.0 <= y[:1000, 0].min() and y[:1000, 0].max() <= 3000.0
    assert 0.8 <= y[:1000, 2].min() and y[:1000, 2].max() <= 1.2
    # Log-uniform T1: the median is near the geometric mean of the range (sqrt(50 * 3000) = 387).
    assert 330 < np.median(y[:1000, 0]) < 450, np.median(y[:1000, 0])
    fit = fit_signals(model, prot, jnp.asarray(x[:1000]), max_iter=20)
    rel = np.abs(np.asarray(fit["T1"]) / y[:1000, 0] - 1)
    assert np.median(rel) < 1e-4 and np.quantile(rel, 0.95) < 1e-2, np.quantile(rel, [0.5, 0.95])
    np.testing.assert_allclose(np.asarray(fit["PD"]), np.asarray(amp)[:1000], rtol=2e-2)
    # Noise: at SNR 50 the late, nearly relaxed samples scatter with std amplitude / 50.
    xn, yn = resim(1.0, 50.0)
    clean = model.signal({"PD": amp[:1000], "T1": jnp.asarray(yn[:1000, 0]),
                          "k": jnp.asarray(yn[:1000, 2])}, prot)
    z = (xn[:1000, -1] - np.asarray(clean)[:, -1]) / np.asarray(amp)[:1000] * 50.0
    keep = yn[:1000, 0] < 600  # TI 3000 ms: > 99% relaxed, Rician ~ Gaussian
    assert 0.85 < np.std(z[keep]) < 1.15 and abs(np.mean(z[keep])) < 0.15, (np.std(z[keep]),
                                                                            np.mean(z[keep]))
    xh, _ = resim(0.5, 1e7, seed=1)
    changed = np.any(xh[:1000] != np.asarray(images)[:1000], axis=-1).mean()
    assert 0.4 < changed < 0.6, changed


def test_draw_voxels_takes_distinct_voxels_of_the_batch_with_their_targets():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 5, 6, 3)).astype(np.float32)
    targets = rng.uniform(100, 2000, size=(2, 5, 6, 3)).astype(np.float32)
    mask = (rng.uniform(size=(2, 5, 6)) > 0.3).astype(np.float32)
    batch = {"images": jnp.asarray(images), "targets": jnp.asarray(targets),
             "mask": jnp.asarray(mask)}
    out = voxel_draw.draw_voxels(batch, jax.random.key(0), 40, ("T1", "PD", "k"))
    assert out["images"].shape == (40, 1, 3) and out["mask"].shape == (40, 1)
    flat_img = images.reshape(-1, 3)
    rows = [int(np.flatnonzero(np.all(flat_img == v, axis=-1))[0])
            for v in np.asarray(out["images"])[:, 0]]
    assert len(set(rows)) == 40  # without replacement
    np.testing.assert_array_equal(np.asarray(out["targets"])[:, 0], targets.reshape(-1, 3)[rows])
    np.testing.assert_array_equal(np.asarray(out["mask"])[:, 0], mask.reshape(-1)[rows])
    # a per-voxel noise SD rides along with its voxel
    sigma = rng.uniform(0.01, 0.05, size=(2, 5, 6)).astype(np.float32)
    with_sigma = voxel_draw.draw_voxels({**batch, "sigma": jnp.asarray(sigma)},
                                        jax.random.key(0), 40, ("T1", "PD", "k"))
    np.testing.assert_array_equal(np.asarray(with_sigma["images"]), np.asarray(out["images"]))
    np.testing.assert_array_equal(np.asarray(with_sigma["sigma"])[:, 0], sigma.reshape(-1)[rows])
    # flat_T1 with no background share draws brain voxels only
    flat = voxel_draw.draw_voxels(batch, jax.random.key(1), 60, ("T1", "PD", "k"), "flat_T1",
                                  0.0)
    assert np.all(np.asarray(flat["mask"]) == 1)
    with pytest.raises(ValueError, match="has only 60 voxels"):
        voxel_draw.draw_voxels(batch, jax.random.key(0), 61, ("T1", "PD", "k"))
    with pytest.raises(ValueError, match="voxel_prior='uniform'"):
        voxel_draw.draw_voxels(batch, jax.random.key(0), 4, ("T1", "PD", "k"), "uniform")
