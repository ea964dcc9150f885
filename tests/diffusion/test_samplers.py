"""Diffusion: schedules, forward process, DDPM/DDIM samplers against an analytic model, vmapped
posterior sampling, the time-conditioned U-Net."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax.diffusion import process, samplers, schedules

MU, S = 0.3, 0.2


def analytic_eps(schedule):
    """Exact E[eps | x_t] for data x0 ~ N(MU, S^2)."""
    def fn(x, t):
        ab = schedule.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)
    return fn


def test_schedules():
    lin = schedules.linear_schedule(1000)
    np.testing.assert_allclose(np.asarray(lin.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    np.testing.assert_allclose(lin.alpha_bars[0], 1 - 1e-4, rtol=1e-6)
    assert float(lin.alpha_bars[-1]) < 1e-4
    cos = schedules.cosine_schedule(1000)
    assert float(cos.alpha_bars[-1]) < 1e-6 and np.all(np.diff(np.asarray(cos.alpha_bars)) < 0)
    np.testing.assert_allclose(cos.alpha_bars, np.cumprod(1 - np.asarray(cos.betas)), rtol=1e-4)
    with pytest.raises(ValueError):
        schedules.get_schedule("quadratic", 10)


def test_forward_process_moments_and_conversions():
    sch = schedules.linear_schedule(1000)
    x0 = jnp.full((20000, 1), MU)
    t = jnp.full((20000,), 300)
    noise = jax.random.normal(jax.random.key(0), x0.shape)
    xt = process.q_sample(sch, x0, t, noise)
    ab = float(sch.alpha_bars[300])
    assert float(xt.mean()) == pytest.approx(np.sqrt(ab) * MU, abs=0.02)
    assert float(xt.std()) == pytest.approx(np.sqrt(1 - ab), rel=0.02)
    np.testing.assert_allclose(process.predict_x0(sch, xt, t, noise), x0, atol=1e-4)
    v = np.sqrt(ab) * noise - np.sqrt(1 - ab) * x0
    np.testing.assert_allclose(process.predict_x0(sch, xt, t, v, "v"), x0, atol=1e-4)
    np.testing.assert_allclose(process.predict_eps(sch, xt, t, v, "v"), noise, atol=1e-4)
    np.testing.assert_allclose(process.predict_x0(sch, xt, t, x0, "x0"), x0, atol=1e-6)
    np.testing.assert_allclose(process.predict_eps(sch, xt, t, x0, "x0"), noise, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim0", "ddim1"])
def test_samplers_reproduce_data_distribution(sampler):
    sch = schedules.linear_schedule(1000)
    fn = analytic_eps(sch)
    shape = (4000, 1, 1, 1)
    key = jax.random.key(1)
    if sampler == "ddpm":
        x = jax.jit(lambda k: samplers.ddpm_sample(fn, sch, shape, k, clip=None))(key)
    else:
        # With every step DDIM has the exact marginals; with fewer it under-disperses this narrow
        # Gaussian (eta 0: std 0.177 at 50 steps, 0.195 at 200), a discretisation error.
        eta, steps = (0.0, 1000) if sampler == "ddim0" else (1.0, 1000)
        x = jax.jit(lambda k: samplers.ddim_sample(fn, sch, shape, k, steps, eta, clip=None))(key)
    assert float(x.mean()) == pytest.approx(MU, abs=0.01)
    assert float(x.std()) == pytest.approx(S, rel=0.05)


def test_sampling_is_reproducible_per_key_and_vmap_equals_loop():
    sch = schedules.linear_schedule(100)
    fn = analytic_eps(sch)
    shape = (3, 2, 2, 1)
    sample = jax.jit(lambda k: samplers.ddim_sample(fn, sch, shape, k, 10, 1.0))
    a, b = sample(jax.random.key(5)), sample(jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, sample(jax.random.key(6)))
    summ = jax.jit(lambda k: samplers.posterior_summary(
        lambda kk: samplers.ddim_sample(fn, sch, shape, kk, 10, 1.0), k, 4, True))(
        jax.random.key(7))
    keys = jax.random.split(jax.random.key(7), 4)
    loop = np.stack([np.asarray(sample(k)) for k in keys])
    np.testing.assert_allclose(summ["samples"], loop, atol=1e-5)
    np.testing.assert_allclose(summ["mean"], loop.mean(0), atol=1e-5)
    np.testing.assert_allclose(summ["std"], loop.std(0, ddof=1), atol=1e-5)  # Bessel-corrected


def test_diffusion_loss_is_zero_for_the_true_noise_predictor():
    sch = schedules.linear_schedule(50)
    x0 = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
    key = jax.random.key(3)
    kt, kn = jax.random.split(key)
    noise = jax.random.normal(kn, x0.shape)

    def oracle(x_t, t):  # recovers eps exactly because it knows x0
        ab = sch.alpha_bars[t][:, None, None, None]
        return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

    assert float(process.diffusion_loss(oracle, sch, x0, key)) == pytest.approx(0.0, abs=1e-6)
    zero = float(process.diffusion_loss(lambda x, t: jnp.zeros_like(x), sch, x0, key))
    assert zero == pytest.approx(float(jnp.mean(noise**2)), rel=1e-5)
    # x0 objective: an x0 oracle has zero loss, the zero predictor has loss E[x0^2]
    assert float(process.diffusion_loss(lambda x, t: x0, sch, x0, key, prediction="x0")) == 0.0
    zero = float(process.diffusion_loss(lambda x, t: jnp.zeros_like(x), sch, x0, key,
                                        prediction="x0"))
    assert zero == pytest.approx(float(jnp.mean(x0**2)), rel=1e-5)
    # Masks: per voxel [B, H, W] (every map of a voxel) or per voxel and map [B, H, W, C].
    rng = np.random.default_rng(1)
    m_vox = jnp.asarray(rng.uniform(size=x0.shape[:-1]) < 0.5, jnp.float32)
    m_map = jnp.asarray(rng.uniform(size=x0.shape) < 0.5, jnp.float32)
    for m, full in ((m_vox, jnp.broadcast_to(m_vox[..., None], x0.shape)), (m_map, m_map)):
        got = float(process.diffusion_loss(lambda x, t: jnp.zeros_like(x), sch, x0, key,
                                           mask=m, prediction="x0"))
        assert got == pytest.approx(float(jnp.sum(x0**2 * full) / jnp.sum(full)), rel=1e-5)


def test_snr_capped_loss_spans_x0_and_v_losses():
    """min(1 + SNR, g)-weighted x0 error: g = 1 is the x0 loss, g -> inf the v loss (any
    parameterisation), and a finite cap lies between them."""
    sch = schedules.linear_schedule(100)
    x0 = jax.random.normal(jax.random.key(0), (16, 4, 4, 2))
    key = jax.random.key(5)
    net = lambda x, t: 0.3 * x + 0.1  # noqa: E731  (any imperfect predictor)
    for pred in ("eps", "v", "x0"):
        plain_v = float(process.diffusion_loss(lambda x, t: _as_v(sch, x, t, net(x, t), pred),
                                               sch, x0, key, prediction="v"))
        inf_cap = float(process.diffusion_loss(net, sch, x0, key, prediction=pred, snr_cap=1e12))
        assert inf_cap == pytest.approx(plain_v, rel=1e-4)
    assert float(process.diffusion_loss(net, sch, x0, key, prediction="x0", snr_cap=1.0)) == \
        pytest.approx(float(process.diffusion_loss(net, sch, x0, key, prediction="x0")), rel=1e-6)
    losses = [float(process.diffusion_loss(net, sch, x0, key, prediction="x0", snr_cap=g))
              for g in (1.0, 5.0, 1e12)]
    assert losses[0] < losses[1] < losses[2]
    with pytest.raises(ValueError, match="snr_cap"):
        process.diffusion_loss(net, sch, x0, key, prediction="x0", snr_cap=0.5)


def _as_v(sch, x_t, t, out, prediction):
    """The v implied by a network output of the given parameterisation."""
    ab = sch.alpha_bars[t].reshape(-1, 1, 1, 1)
    x0 = process.predict_x0(sch, x_t, t, out, prediction)
    eps = process.predict_eps(sch, x_t, t, out, prediction)
    return jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0


def test_diffusion_unet_shapes_and_zero_init_head():
    from qmri_jax.models.diffusion_unet import DiffusionUNet
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        net = DiffusionUNet(features=(8, 16), out_channels=3, attention_levels=(1,), emb_dim=16)
        x = jnp.ones((2, 8, 12, 3))
        c = jnp.ones((2, 8, 12, 10))
        v = jax.jit(net.init)(jax.random.key(0), x, jnp.array([1, 500]), c)
        y = jax.jit(net.apply)(v, x, jnp.array([1, 500]), c)
        assert y.shape == (2, 8, 12, 3)
        np.testing.assert_array_equal(y, 0.0)  # zero-initialised output conv
        def loss(prm):
            out = net.apply({"params": prm}, x, jnp.array([1, 2]), c)
            return jnp.sum(out ** 2) + out.sum()
        g = jax.jit(jax.grad(loss))(v["params"])
        assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(g))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def test_voxel_denoiser_is_per_voxel_any_layout_and_differentiable():
    """VoxelDenoiser: zero at initialisation; a voxel's output depends on that voxel's inputs and
    the time step only (changing another voxel's condition changes nothing else, exactly); the
    same function on [B, H, W, C] and [B, H * W, C]; input gradients match finite differences."""
    from qmri_jax.models.diffusion_unet import VoxelDenoiser
    rng = np.random.default_rng(0)
    net = VoxelDenoiser(width=16, depth=2, out_channels=3)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 3)), jnp.float32)
    c = jnp.asarray(rng.uniform(0, 1, (2, 5, 7, 10)), jnp.float32)
    t = jnp.array([3, 700])
    params = net.init(jax.random.key(0), x, t, c)["params"]
    np.testing.assert_array_equal(net.apply({"params": params}, x, t, c), 0.0)
    # Give the zero-initialised head weights so that the output carries the input.
    params = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape), a.dtype),
                          params)
    f = jax.jit(lambda x, t, c: net.apply({"params": params}, x, t, c))
    y = f(x, t, c)
    assert y.shape == (2, 5, 7, 3) and float(jnp.abs(y).max()) > 1e-3
    y2 = f(x, t, c.at[1, 2, 3].add(0.5))
    changed = np.any(np.asarray(y2 != y), axis=-1)
    assert changed[1, 2, 3] and changed.sum() == 1
    assert float(jnp.abs(f(x, jnp.array([3, 20]), c)[1] - y[1]).max()) > 1e-4  # t enters
    np.testing.assert_allclose(f(x.reshape(2, 35, 3), t, c.reshape(2, 35, 10)),
                               y.reshape(2, 35, 3), rtol=1e-5, atol=1e-6)
    # d(sum of outputs at voxel [0, 1, 1]) / d(its condition) against central differences.
    g = jax.grad(lambda cv: f(x, t, c.at[0, 1, 1].set(cv))[0, 1, 1].sum())(c[0, 1, 1])
    h = 1e-2
    for i in range(3):
        e = jnp.zeros(10).at[i].set(h)
        fd = (f(x, t, c.at[0, 1, 1].add(e))[0, 1, 1].sum()
              - f(x, t, c.at[0, 1, 1].add(-e))[0, 1, 1].sum()) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=2e-2, atol=1e-4)


def test_upsample_conv_equals_nearest_upsampling_then_3x3_conv_values_and_gradients():
    """The four 2x2 phase convolutions compute exactly conv3x3(nearest_up2x(x)) (zero padding
    included: the borders are where a wrong phase offset would show), gradients too."""
    from qmri_jax.models.diffusion_unet import upsample_conv
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 6)), jnp.float32)  # odd, unequal H and W
    k = jnp.asarray(rng.normal(size=(3, 3, 6, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4,)), jnp.float32)

    def reference(x, k, b):
        up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return jax.lax.conv_general_dilated(up, k, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision="highest") + b

    with jax.default_matmul_precision("highest"):
        y, r = upsample_conv(x, k, b), reference(x, k, b)
        assert y.shape == (2, 10, 14, 4)
        np.testing.assert_allclose(y, r, rtol=1e-5, atol=1e-5)
        w = jnp.asarray(rng.normal(size=r.shape), jnp.float32)
        g = jax.grad(lambda *a: jnp.sum(w * upsample_conv(*a)), (0, 1, 2))(x, k, b)
        gr = jax.grad(lambda *a: jnp.sum(w * reference(*a)), (0, 1, 2))(x, k, b)
    for a, e in zip(g, gr):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


def test_diffusion_unet_parameter_names_and_bfloat16_compute():
    """The top-level convolutions keep Flax's automatic names (Conv_0 ... Conv_5 in call order,
    the up-samplers included), so checkpoints trained before UpConv still load; dtype=bfloat16
    keeps float32 parameters and output, runs every convolution in bfloat16 and stays close to
    the float32 network."""
    from qmri_jax.models.diffusion_unet import DiffusionUNet
    net = DiffusionUNet(features=(8, 16, 32), out_channels=3, attention_levels=(1,))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    c = jax.random.uniform(jax.random.key(2), (2, 16, 16, 7))
    t = jnp.array([3, 900])
    params = jax.eval_shape(net.init, jax.random.key(0), x, t, c)["params"]
    assert sorted(k for k in params if k.startswith("Conv")) == [f"Conv_{i}" for i in range(6)]
    assert params["Conv_3"]["kernel"].shape == (3, 3, 32, 32)  # up-sampler of level 2
    assert params["Conv_4"]["kernel"].shape == (3, 3, 16, 16)  # up-sampler of level 1
    rng = np.random.default_rng(0)  # random weights (the output conv starts at zero)
    params = jax.tree.map(lambda p: jnp.asarray(0.1 * rng.normal(size=p.shape), jnp.float32),
                          params)
    bf = net.clone(dtype=jnp.bfloat16)
    p_bf = jax.eval_shape(bf.init, jax.random.key(0), x, t, c)["params"]
    assert jax.tree.structure(p_bf) == jax.tree.structure(params)
    assert {a.dtype for a in jax.tree.leaves(p_bf)} == {jnp.dtype(jnp.float32)}
    jax.config.update("jax_disable_most_optimizations", True)  # compile time, not run time
    try:
        y32 = jax.jit(net.apply)({"params": params}, x, t, c)
        y16 = jax.jit(bf.apply)({"params": params}, x, t, c)
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    assert y16.dtype == jnp.float32
    rel = float(jnp.abs(y16 - y32).mean() / jnp.abs(y32).mean())
    assert 0 < rel < 0.05, rel
    jaxpr = str(jax.make_jaxpr(lambda p: bf.apply({"params": p}, x, t, c))(params))
    convs = [ln for ln in jaxpr.splitlines() if "conv_general_dilated" in ln]
    assert convs and all("bf16[" in ln.split("=")[0] for ln in convs)


def test_ddim_timesteps_are_uniform_and_descending():
    u = samplers.ddim_timesteps(1000, 50)
    assert len(u) == 50 and u[0] == 999 and u[-1] == 0 and np.all(np.diff(u) < 0)
    assert u[-2] == 20  # round(999 / 49)
    assert list(samplers.ddim_timesteps(10, 10)) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="num_steps=0"):
        samplers.ddim_timesteps(1000, 0)


def test_posterior_std_shrinks_with_more_information():
    """With an oracle denoiser that knows x0, every draw equals x0: mean = truth, std = 0."""
    from qmri_jax.diffusion import samplers, schedules
    sch = schedules.linear_schedule(50)
    x0 = jnp.full((2, 4, 4, 1), 0.25)

    def oracle(x_t, t):
        ab = sch.alpha_bars[t][:, None, None, None]
        return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

    out = samplers.posterior_summary(
        lambda k: samplers.ddim_sample(oracle, sch, x0.shape, k, 10, 1.0), jax.random.key(0), 5)
    np.testing.assert_allclose(out["mean"], x0, atol=1e-4)
    np.testing.assert_allclose(out["std"], 0.0, atol=1e-4)
