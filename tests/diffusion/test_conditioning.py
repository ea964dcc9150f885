"""The DDPM's condition: the images, and each voxel's voxelwise IR fit scaled like the targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax.diffusion import conditioning
from qmri_jax.physics.protocol import get_protocol, simulate
from qmri_jax.physics.units import to_unit_range, unscale_maps
from tests.tiny import vir_data as make_vir_data


@pytest.fixture(scope="module")
def vir_data():
    return make_vir_data()


def test_images_condition_is_the_images_and_unknown_kinds_are_refused():
    x = jnp.ones((2, 3, 4))
    np.testing.assert_array_equal(conditioning.condition_images(x, "images"), x)
    assert conditioning.condition_channels("fit", 10) == 13
    with pytest.raises(ValueError, match="condition"):
        conditioning.condition_images(x, "shape")


def test_fit_condition_values_and_scale_equivariance(vir_data):
    # Closed form: noiseless IR series of known maps -> the fitted channels are the scaled maps.
    prot = get_protocol("nist_vir")
    rng = np.random.default_rng(0)
    truth = {"PD": rng.uniform(0.3, 1.2, (2, 5, 6)),
             "T1": np.exp(rng.uniform(np.log(60.0), np.log(3000.0), (2, 5, 6))),
             "T2": np.full((2, 5, 6), 80.0), "k": rng.uniform(0.85, 1.0, (2, 5, 6))}
    images = simulate({n: jnp.asarray(v, jnp.float32) for n, v in truth.items()}, prot)
    c = conditioning.condition_images(images, "fit", prot)
    assert c.shape == (2, 5, 6, len(prot) + 3)
    np.testing.assert_array_equal(c[..., :len(prot)], images)
    fitted = unscale_maps(c[..., len(prot):], ("PD", "T1", "k"))
    te_weight = np.exp(-6.9 / 80.0)  # TE weighting is absorbed in PD
    np.testing.assert_allclose(fitted[..., 0], truth["PD"] * te_weight, rtol=5e-3)
    np.testing.assert_allclose(fitted[..., 1], truth["T1"], rtol=5e-3)
    np.testing.assert_allclose(fitted[..., 2], truth["k"], atol=5e-3)
    # Scaling the images leaves the T1 and k channels and moves PD with them (inside +-2).
    x = jnp.asarray(vir_data["train"]["images"][:2])
    a = conditioning.condition_images(x, "fit", prot)
    b = conditioning.condition_images(0.8 * x, "fit", prot)
    brain = np.asarray(vir_data["train"]["mask"][:2]) > 0
    # (Each voxel is fitted in units of its own maximum, so only float32 rounding differs; after 5
    # unconverged steps it moves a few ill-conditioned voxels further: a fresh install on
    # 2026-11-23 moved one by 0.2 with a 99th percentile of 1.0e-3, so those are bounded by count.)
    diff = np.abs(np.asarray(a[..., -2:]) - np.asarray(b[..., -2:]))[brain]
    assert np.quantile(diff, 0.98) < 1e-3 and np.mean(diff > 2e-2) < 2e-3, (
        np.quantile(diff, 0.98), np.mean(diff > 2e-2))
    pd_a = unscale_maps(a[..., -3:], ("PD", "T1", "k"))[..., 0]
    pd_b = unscale_maps(b[..., -3:], ("PD", "T1", "k"))[..., 0]
    rel = np.abs(np.asarray(pd_b)[brain] / (0.8 * np.asarray(pd_a)[brain]) - 1)
    assert np.quantile(rel, 0.99) < 1e-3 and rel.max() < 2e-2, (np.quantile(rel, 0.99), rel.max())
    assert float(jnp.abs(a[..., -3:]).max()) <= 2.0  # noise-only voxels' fits are held at +-2
    with pytest.raises(ValueError, match="needs the acquisition protocol"):
        conditioning.condition_images(x, "fit")


def test_validity_condition_zeroes_invalid_samples_and_its_fit_leaves_them_out():
    """validity=True: NaN samples (clipped or missing) become 0 with a 0 in their mask channel,
    and the fitted channels are the fit of the valid samples alone: a series whose brightest
    samples were clipped (here at 85% of their value) reads the true T1 with them marked, and a
    wrong one when the clipped values are fitted as measurements."""
    prot = get_protocol("nist_vir")
    n = len(prot)
    t1 = jnp.asarray([300.0, 800.0, 1500.0])
    truth = {"PD": jnp.ones(3), "T1": t1, "T2": jnp.full(3, 80.0), "k": jnp.full(3, 0.95)}
    clean = simulate(truth, prot)  # [3, N]
    level = 0.85 * jnp.max(clean, axis=-1, keepdims=True)
    clipped = jnp.minimum(clean, level)
    valid = clean < level
    assert bool(jnp.all(jnp.sum(~valid, -1) >= 1)) and bool(jnp.all(jnp.sum(valid, -1) >= 4))
    c = conditioning.condition_images(conditioning.mark_invalid(clipped, valid), "fit", prot,
                                      validity=True)
    assert c.shape == (3, 2 * n + 3) == (3, conditioning.condition_channels("fit", n, True))
    assert bool(jnp.all(jnp.isfinite(c)))
    np.testing.assert_array_equal(c[:, :n], jnp.where(valid, clipped, 0.0))
    np.testing.assert_array_equal(c[:, n:2 * n], valid.astype(jnp.float32))
    fitted = unscale_maps(c[:, 2 * n:], ("PD", "T1", "k"))
    np.testing.assert_allclose(fitted[:, 1], t1, rtol=5e-3)
    np.testing.assert_allclose(fitted[:, 2], 0.95, atol=5e-3)
    as_measured = unscale_maps(conditioning.condition_images(clipped, "fit", prot)[:, n:],
                               ("PD", "T1", "k"))
    assert float(jnp.max(jnp.abs(as_measured[:, 1] / t1 - 1))) > 0.05
    # Without validity the condition is what it was (no mask channels).
    assert conditioning.condition_images(clipped, "images", validity=False).shape == (3, n)
    assert conditioning.condition_channels("images", n, True) == 2 * n


def test_noise_channel_is_log10_sigma_before_the_fit_and_the_background_gives_sigma():
    """The noise condition: sigma measured on a slice's Rician background (Rayleigh:
    sqrt(mean m^2 / 2)) within 3%; the channel log10(sigma / 0.01) sits between the images (and
    validity) and the fitted maps, so the residual DDPM's base is unchanged; sigma as a scalar, one
    per image or per voxel gives the same channel."""
    rng = np.random.default_rng(0)
    sig = np.array([0.02, 0.05], np.float32)
    b, h, w, n = 2, 40, 40, 10
    noise = lambda s: np.sqrt((s * rng.standard_normal((h, w, n))) ** 2  # noqa: E731
                              + (s * rng.standard_normal((h, w, n))) ** 2)
    images = np.stack([noise(s) for s in sig]).astype(np.float32)
    mask = np.zeros((b, h, w), np.float32)
    mask[:, 10:30, 10:30] = 1.0
    images[:, 10:30, 10:30] += 0.8  # "tissue": never read
    est = np.asarray(conditioning.slice_noise_sigma(jnp.asarray(images), jnp.asarray(mask)))
    np.testing.assert_allclose(est, sig, rtol=0.03)
    assert np.isnan(float(conditioning.slice_noise_sigma(jnp.asarray(images[:1]),
                                                         jnp.ones((1, h, w)))[0]))
    np.testing.assert_allclose(float(conditioning.noise_channel(0.01)), 0.0, atol=1e-7)
    np.testing.assert_allclose(float(conditioning.noise_channel(0.1)), 1.0, atol=1e-6)

    prot = get_protocol("nist_vir")
    x = jnp.asarray(images[:, :4, :4])
    cond = jax.jit(lambda x, s: conditioning.condition_images(x, "fit", prot, True, s))
    plain = jax.jit(lambda x: conditioning.condition_images(x, "fit", prot, True))(x)
    assert conditioning.condition_channels("fit", n, True, noise=True) == 2 * n + 4
    for s in (jnp.asarray(sig), jnp.broadcast_to(jnp.asarray(sig)[:, None, None], (b, 4, 4))):
        c = cond(x, s)
        assert c.shape == (b, 4, 4, 2 * n + 4)
        np.testing.assert_allclose(np.asarray(c[..., 2 * n]),
                                   np.log10(sig / 0.01)[:, None, None] * np.ones((b, 4, 4)),
                                   rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(c[..., :2 * n]), np.asarray(plain[..., :2 * n]))
        np.testing.assert_array_equal(np.asarray(conditioning.fit_base(c, ("T1", "PD", "k"))),
                                      np.asarray(conditioning.fit_base(plain, ("T1", "PD", "k"))))
    one = conditioning.condition_images(x[:1], "images", sigma=0.05)
    np.testing.assert_allclose(np.asarray(one[..., -1]), np.log10(5.0), rtol=1e-6)


def test_fit_sd_is_the_crlb_of_the_fit_on_the_scaled_maps():
    """fit_sd: the Gaussian Cramer-Rao SD of the fitted (PD, T1, k) at the noise channel's sigma,
    over the samples marked valid, equals fitting.crlb of the ir model at those values carried
    onto the [-1, 1] scale (T1 log: x 2 / (T1 ln 600); PD x 2 / 1.5; k x 2 / 0.75)."""
    from qmri_jax.fitting import get_model
    from qmri_jax.fitting.crlb import crlb

    prot = get_protocol("nist_vir")
    n = len(prot)
    pd, t1, k = np.array([0.9, 0.5]), np.array([800.0, 1500.0]), np.array([0.95, 0.9])
    sigma = np.array([0.02, 0.05])
    valid = np.ones((2, n), np.float32)
    valid[1, :3] = 0.0  # three samples of the second voxel left out
    fit = np.stack([np.asarray(to_unit_range(jnp.asarray(v), name)) for v, name in
                    ((pd, "PD"), (t1, "T1"), (k, "k"))], -1)
    cond = np.concatenate([np.zeros((2, n)), valid, np.log10(sigma / 0.01)[:, None], fit], -1)
    got = np.asarray(conditioning.fit_sd(jnp.asarray(cond, jnp.float32), prot, True))
    var = crlb(get_model("ir"), prot, {"PD": pd, "T1": t1, "k": k}, sigma, weights=valid)
    want = np.stack([np.sqrt(var["PD"]) * 2 / 1.5, np.sqrt(var["T1"]) * 2 / (t1 * np.log(600.0)),
                     np.sqrt(var["k"]) * 2 / 0.75], -1)
    np.testing.assert_allclose(got, want, rtol=2e-3)
    assert got[1, 1] > got[0, 1]  # fewer samples and more noise: a wider T1 posterior
    with pytest.raises(ValueError, match="noise"):
        conditioning.fit_sd(jnp.asarray(cond[:, :-4]), prot, True)
