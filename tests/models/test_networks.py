"""Networks: shapes, positivity, jit without retracing, finite gradients, every config builds."""

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax import models
from qmri_jax.models.layers import AttentionGate

SCALE = (1000.0, 100.0, 1.0)


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Tiny models: XLA optimisation passes cost more than they save (see STYLE.md)."""
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)
SMALL = {
    "unet": dict(features=(4, 8, 16)),
    "uresnet": dict(features=(4, 8, 16)),
    "uattennet": dict(features=(4, 8, 16)),
    "unet_qiu": dict(features=(4, 8, 16)),
    "highresnet": dict(features=(4, 8, 8), blocks_per_stage=1),
    "resnet": dict(features=8, num_blocks=2),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_shapes_positive_jit_and_gradients(name):
    model = models.create_model(name, SCALE, **SMALL[name])
    x = jax.random.uniform(jax.random.key(0), (2, 16, 24, 4))
    variables = model.init(jax.random.key(1), x)
    y = model.apply(variables, x)
    assert y.shape == (2, 16, 24, 3)
    assert bool(jnp.all(y > 0))
    traces = []

    @jax.jit
    def f(v, x):
        traces.append(1)
        return model.apply(v, x)

    f(variables, x)
    f(variables, x + 1.0)
    assert len(traces) == 1  # no retracing for same shapes

    def loss(params):
        out = model.apply({**variables, "params": params}, x)
        return jnp.mean(out / jnp.asarray(SCALE))

    g = jax.grad(loss)(variables["params"])
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in leaves)
    assert sum(float(jnp.abs(v).sum()) for v in leaves) > 0


def test_unet_parameter_count_matches_formula():
    model = models.UNet(features=(4, 8), out_scale=(1.0,), norm="none", convs_per_level=1)
    p = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))["params"]
    n = sum(v.size for v in jax.tree.leaves(p))
    # enc conv 3x3x2x4+4, bottleneck 3x3x4x8+8, up transpose 2x2x8x4+4, dec conv 3x3x8x4+4,
    # head 1x1x4x1+1
    expected = (9 * 2 * 4 + 4) + (9 * 4 * 8 + 8) + (4 * 8 * 4 + 4) + (9 * 8 * 4 + 4) + (4 + 1)
    assert n == expected


def test_highresnet_3d_and_dilation_receptive_field():
    m = models.HighResNet(features=(4, 4, 4), blocks_per_stage=1, norm="none", out_scale=(1.0,))
    x = jnp.zeros((1, 24, 24, 24, 1))
    v = m.init(jax.random.key(0), x)
    assert m.apply(v, x).shape == (1, 24, 24, 24, 1)
    # A single impulse influences outputs up to the receptive field: 1 + 2*(1 + 2*(1+2+4)) = 31
    # voxels wide in 2D; check it reaches at least +-10 voxels (dilations at work).
    m2 = models.HighResNet(features=(4, 4, 4), blocks_per_stage=1, norm="none", out_scale=(1.0,))
    x2 = jax.random.normal(jax.random.key(3), (1, 41, 41, 1))
    v2 = m2.init(jax.random.key(0), x2)
    jac = jax.grad(lambda z: m2.apply(v2, z)[0, 20, 20, 0])(x2)
    nz = np.argwhere(np.abs(np.asarray(jac[0, :, :, 0])) > 0)
    assert nz[:, 0].min() <= 10 and nz[:, 0].max() >= 30


def test_attention_gate_scales_skip_between_zero_and_one():
    gate = AttentionGate(4)
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 6))
    g = jax.random.normal(jax.random.key(1), (1, 8, 8, 5))
    v = gate.init(jax.random.key(2), x, g)
    y = gate.apply(v, x, g)
    ratio = np.asarray(y / x)
    assert np.all(ratio >= 0) and np.all(ratio <= 1)
    assert np.allclose(ratio, ratio[..., :1], atol=1e-5)  # one gate per voxel, all channels


def test_thesis_unet_options_one_gate_and_dropout_on_the_paths():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 4))
    gated = lambda m: sorted(k for k in m.init(jax.random.key(1), x)["params"]  # noqa: E731
                             if k.startswith("AttentionGate"))
    every = models.UAttenNet(features=(4, 8, 16, 32), out_scale=SCALE)
    one = models.UAttenNet(features=(4, 8, 16, 32), out_scale=SCALE, attention_levels=1)
    assert len(gated(every)) == 3 and len(gated(one)) == 1
    m = models.UNet(features=(4, 8, 16), out_scale=SCALE, dropout=0.5, dropout_at="paths",
                    norm="none")
    v = m.init(jax.random.key(1), x)
    a = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
    b = m.apply(v, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)  # dropout acts in training
    np.testing.assert_array_equal(m.apply(v, x), m.apply(v, x))  # and not in evaluation
    # The same parameters as the bottleneck placement: dropout has none.
    same = models.UNet(features=(4, 8, 16), out_scale=SCALE, dropout=0.5, norm="none")
    assert jax.tree.structure(same.init(jax.random.key(1), x)) == jax.tree.structure(v)
    from configs import uattennet
    for preset in ("thesis", "thesis_paper"):
        cfg = uattennet.get_config(preset)
        assert (cfg.model.attention_levels, cfg.model.dropout_at, cfg.data.field,
                cfg.data.normalisation, tuple(cfg.data.pathology_splits)) == (
                    1, "paths", "1.5T", "rescale", ("test",))
        from qmri_jax.tasks.regression import build_model
        assert len(gated(build_model(cfg, features=(4, 8, 16, 32)))) == 1
    assert uattennet.get_config("thesis_paper").model.features == (64, 128, 256, 512)
    with pytest.raises(ValueError, match="dropout_at='both'"):
        models.UNet(features=(4, 8), out_scale=SCALE, dropout_at="both").init(
            jax.random.key(0), x)


def test_unet_rejects_indivisible_shapes():
    m = models.UNet(features=(4, 8, 16), out_scale=SCALE)
    with pytest.raises(ValueError, match="must divide by 4"):
        m.init(jax.random.key(0), jnp.zeros((1, 18, 16, 4)))


CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "..", "configs", "*.py"))
    if not os.path.basename(p).startswith("_") and os.path.basename(p) not in (
        "default.py", "presets.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_initialises(name):
    mod = importlib.import_module(f"configs.{name}")
    cfg = mod.get_config()
    assert set(cfg.keys()) <= set(importlib.import_module("configs.default").get_config().keys())
    if cfg.mode != "train":
        return
    from qmri_jax import engine
    from qmri_jax.physics.protocol import get_protocol
    from qmri_jax.predict import example_batch
    from qmri_jax.tasks import create_task
    n = len(get_protocol(cfg.data.protocol))
    x = jnp.ones((1, 16, 16, n))
    with cfg.unlocked():  # a posterior task samples briefly here
        cfg.ddpm.sample_steps, cfg.ddpm.num_samples = 1, 2
    task = create_task(cfg)
    if hasattr(task, "translate_volume"):  # 3D: one GE volume in, one TSE volume out
        x = jnp.ones((1, 16, 16, 16, 1))
        example = {"input": x}
    else:
        example = example_batch(task, x.shape[1:])
    state = engine.init_state(task, example, 0)
    kw = {"sigma": 0.02} if getattr(task, "noise", False) else {}  # a noise-conditioned DDPM
    out = task.predict(state, x, jax.random.key(0), **kw)
    assert out["mean"].shape == (*x.shape[:-1], len(cfg.targets))
    assert np.all(np.isfinite(np.asarray(out["mean"])))
    paper = mod.get_config("paper")
    assert paper.train.num_steps > cfg.train.num_steps


@pytest.mark.parametrize("nd", [2, 3])
def test_upconv_equals_flax_conv_transpose(nd):
    import flax.linen as nn
    from qmri_jax.models.layers import UpConv2x
    x = jax.random.normal(jax.random.key(0), (2, *(5,) * nd, 3))
    up = UpConv2x(4)
    v = up.init(jax.random.key(1), x)
    k = v["params"]["kernel"]
    ref = nn.ConvTranspose(4, (2,) * nd, (2,) * nd).apply(
        {"params": {"kernel": jnp.flip(k, axis=tuple(range(nd))), "bias": v["params"]["bias"]}}, x)
    np.testing.assert_allclose(up.apply(v, x), ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (2, 4, 6, 2, 3)])
def test_reshape_pooling_equals_reduce_window(shape):
    """Values and gradients equal reduce_window's, also where a window holds tied maxima (the
    first in row-major order takes the cotangent, as select-and-scatter and PyTorch do)."""
    import flax.linen as nn
    from qmri_jax.models.unets import pool2x
    nd = len(shape) - 2
    w = (2,) * nd
    x = jax.random.normal(jax.random.key(0), shape)
    ties = jnp.round(jax.random.uniform(jax.random.key(1), shape) * 2)  # values 0, 1, 2: many ties
    for inp in (x, ties):
        np.testing.assert_allclose(pool2x(inp, "max"), nn.max_pool(inp, w, w))
        np.testing.assert_allclose(pool2x(inp, "avg"), nn.avg_pool(inp, w, w), rtol=1e-6)
        cot = jax.random.normal(jax.random.key(2), pool2x(inp, "max").shape)
        for kind, ref in (("max", nn.max_pool), ("avg", nn.avg_pool)):
            got = jax.grad(lambda v, kind=kind: jnp.sum(pool2x(v, kind) * cot))(inp)
            want = jax.grad(lambda v, ref=ref: jnp.sum(ref(v, w, w) * cot))(inp)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert int(jnp.sum(jax.grad(lambda v: jnp.sum(pool2x(v, "max")))(ties) != 0)) == cot.size


@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 16), 4), ((2, 3, 4, 5, 8), 8), ((3, 4, 4, 6), 1)])
def test_group_norm_equals_flax_values_and_gradients(shape, groups):
    """Same output, parameter names and gradients as flax.linen.GroupNorm, also for inputs with a
    large common offset (where E[x^2] - E[x]^2 loses digits, as Flax's default does)."""
    import flax.linen as nn
    from qmri_jax.models.layers import GroupNorm
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)
    ours, ref = GroupNorm(groups), nn.GroupNorm(num_groups=groups)
    v = ref.init(jax.random.key(1), x)
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), v)
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(v)
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), atol=2e-5)
    w = jax.random.normal(jax.random.key(3), shape)

    def loss(mod):
        return lambda v, x: jnp.sum(jnp.tanh(mod.apply(v, x)) * w)

    g_ours = jax.grad(loss(ours), argnums=(0, 1))(v, x)
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="do not divide"):
        GroupNorm(5).init(jax.random.key(0), x)


@pytest.mark.parametrize("shape,relu", [((4, 6, 5, 8), True), ((2, 3, 4, 5, 8), True),
                                        ((3, 4, 4, 6), False)])
def test_batch_norm_equals_flax_values_gradients_and_running_stats(shape, relu):
    """Our BatchNorm (hand-written VJP, optionally fused with ReLU) against flax.linen.BatchNorm
    (+ nn.relu): same variables, outputs in training and evaluation mode, running statistics after
    a step, and gradients with respect to the input, scale and bias."""
    import flax.linen as nn
    from qmri_jax.models.layers import BatchNorm

    class Ref(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            return nn.relu(y) if relu else y

    class Ours(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            return BatchNorm(momentum=0.9, relu=relu)(x, train)

    x = 1.5 + 2.0 * jax.random.normal(jax.random.key(0), shape)
    v = Ref().init(jax.random.key(1), x, False)
    assert jax.tree.structure(Ours().init(jax.random.key(1), x, False)) == jax.tree.structure(v)
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), v)
    v["batch_stats"] = jax.tree.map(jnp.abs, v["batch_stats"])  # a valid running variance
    for train in (False, True):
        out_o, upd_o = Ours().apply(v, x, train, mutable=["batch_stats"])
        out_r, upd_r = Ref().apply(v, x, train, mutable=["batch_stats"])
        np.testing.assert_allclose(out_o, out_r, atol=2e-5)
        for a, b in zip(jax.tree.leaves(upd_o), jax.tree.leaves(upd_r)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    w = jax.random.normal(jax.random.key(3), shape)

    def loss(mod):
        def f(params, x):
            out, _ = mod.apply({"params": params, "batch_stats": v["batch_stats"]}, x, True,
                               mutable=["batch_stats"])
            return jnp.sum(jnp.sin(out) * w)
        return f

    g_ours = jax.grad(loss(Ours()), argnums=(0, 1))(v["params"], x)
    g_ref = jax.grad(loss(Ref()), argnums=(0, 1))(v["params"], x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    assert float(jnp.abs(g_ours[1]).max()) > 1e-2  # the check compares real, nonzero gradients


def test_rim_shapes_gradients_and_data_term():
    from qmri_jax.models.rim import K_RANGE, profiled_nll
    from qmri_jax.physics.protocol import get_protocol, simulate
    prot = get_protocol("nist_vir")
    # The profiled data term is zero at the truth and its gradient matches finite differences.
    t1, k = 900.0, 0.95
    from qmri_jax.physics.units import to_unit_range
    k_unit = 2 * (k - K_RANGE[0]) / (K_RANGE[1] - K_RANGE[0]) - 1  # the RIM's own k scale
    xs = jnp.array([[to_unit_range(t1, "T1"), k_unit]])
    y = 3.0 * simulate({"PD": 1.0, "T1": jnp.array([t1]), "T2": 1e4, "k": k}, prot)
    nll, a = profiled_nll(xs, y, prot, ("T1", "k"))
    assert float(nll[0]) == pytest.approx(0.0, abs=1e-5) and float(a[0]) == pytest.approx(3.0, rel=1e-4)
    x2 = xs + jnp.array([[0.1, -0.05]])
    g = jax.grad(lambda x: profiled_nll(x, y, prot, ("T1", "k"))[0].sum())(x2)
    eps = 1e-3
    for i in range(2):
        d = jnp.zeros_like(x2).at[0, i].set(eps)
        fd = (profiled_nll(x2 + d, y, prot, ("T1", "k"))[0] - profiled_nll(x2 - d, y, prot,
                                                                        ("T1", "k"))[0]) / (2 * eps)
        assert float(g[0, i]) == pytest.approx(float(fd[0]), rel=2e-2, abs=1e-4)
    rim = models.RIM(protocol="nist_vir", features=8, num_iterations=2)
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 10))
    v = rim.init(jax.random.key(1), x)
    out = rim.apply(v, x)
    assert out.shape == (2, 8, 8, 3) and bool(jnp.all(out > 0))
    gr = jax.grad(lambda p: jnp.mean(rim.apply({"params": p}, x, train=True)[..., 0]))(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(gr))


def test_rim_estimates_b_as_one_plus_k_for_ir_and_ir_fse():
    """Targets T1 / PD / B (the qMRI Diffusor's): the data term at B equals the one at k = B - 1
    on the IR protocol, is zero at the truth on the IR-FSE protocol, and B comes out within
    1 + k_range."""
    from qmri_jax.models.rim import K_RANGE, profiled_nll
    from qmri_jax.physics.protocol import get_protocol, simulate
    vir, fse = get_protocol("nist_vir"), get_protocol("ir_fse_7ti")
    xs = jnp.array([[0.2, 0.4], [-0.3, -0.5]])  # (T1, k) and (T1, B) on the same unit scale
    for prot in (vir, fse):
        yk = simulate({"PD": 1.0, "T1": jnp.array([700.0, 300.0]), "T2": 1e4, "k": 0.9}, prot)
        np.testing.assert_allclose(profiled_nll(xs, yk, prot, ("T1", "B"))[0],
                                   profiled_nll(xs, yk, prot, ("T1", "k"))[0], rtol=1e-5)
    from qmri_jax.physics.units import from_unit_range
    t1 = float(from_unit_range(jnp.asarray(0.2), "T1"))
    b = 1 + K_RANGE[0] + (0.4 + 1) / 2 * (K_RANGE[1] - K_RANGE[0])
    y = 2.0 * simulate({"PD": 1.0, "T1": jnp.array([t1]), "B": b}, fse)
    nll, a = profiled_nll(xs[:1], y, fse, ("T1", "B"))
    assert float(nll[0]) == pytest.approx(0.0, abs=1e-6) and float(a[0]) == pytest.approx(2.0,
                                                                                       rel=1e-4)
    rim = models.RIM(protocol="ir_fse_7ti", targets=("T1", "PD", "B"), features=8,
                     num_iterations=2)
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 7))
    out = rim.apply(rim.init(jax.random.key(1), x), x)
    assert out.shape == (1, 8, 8, 3)
    assert bool(jnp.all((out[..., 2] >= 1 + K_RANGE[0]) & (out[..., 2] <= 1 + K_RANGE[1])))
    bad = models.RIM(protocol="nist_vir", targets=("T1", "k", "B"), features=8, num_iterations=1)
    with pytest.raises(ValueError, match="one quantity"):
        bad.init(jax.random.key(1), jnp.ones((1, 8, 8, 10)))


@pytest.mark.parametrize("padding,dilation", [("SAME", (1, 1, 1)), ("REFLECT", (2, 1, 2))])
def test_conv3d_equals_a_naive_3d_convolution(padding, dilation):
    from qmri_jax.models.layers import Conv3D
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 5, 7, 2)).astype(np.float32)
    layer = Conv3D(3, (3, 3, 3), dilation, padding)
    v = layer.init(jax.random.key(0), jnp.asarray(x))
    got = np.asarray(layer.apply(v, jnp.asarray(x)))
    k, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
    d = np.asarray(dilation)
    xp = np.pad(x[0], [(di, di) for di in d] + [(0, 0)],
                mode="reflect" if padding == "REFLECT" else "constant")
    want = np.zeros((6, 5, 7, 3))
    for i, j, l in np.ndindex(6, 5, 7):
        for a, bb, c in np.ndindex(3, 3, 3):
            want[i, j, l] += xp[i + a * d[0], j + bb * d[1], l + c * d[2]] @ k[a, bb, c]
    np.testing.assert_allclose(got[0], want + b, rtol=1e-4, atol=1e-5)


def test_intensity_encoding_hats_sum_to_one_and_interpolate_a_table():
    from qmri_jax.models.layers import intensity_encoding
    x = jnp.asarray([[0.0], [0.2], [0.55], [1.5]])
    enc = np.asarray(intensity_encoding(x, 4, 0.0, 1.5))  # centres 0, 0.5, 1, 1.5
    np.testing.assert_allclose(enc[:, 0], x[:, 0])  # the intensity itself comes first
    np.testing.assert_allclose(enc[:, 1:].sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(enc[1, 1:], [0.6, 0.4, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(enc[2, 1:], [0.0, 0.9, 0.1, 0.0], atol=1e-6)
    # a table at the centres, read through the hats, is its piecewise-linear interpolation
    table = np.array([0.0, 1.0, 0.3, 0.2])
    np.testing.assert_allclose(enc[:, 1:] @ table, np.interp(x[:, 0], [0, 0.5, 1, 1.5], table),
                               atol=1e-6)
    net = models.HighResNet(features=(4,), dilations=(1,), blocks_per_stage=1, head="linear",
                            out_scale=(1.0,), input_encoding=8)
    params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    assert params["params"]["Conv_0"]["kernel"].shape[2] == 9  # the stem sees 1 + 8 channels
    with pytest.raises(ValueError, match="num=1"):
        intensity_encoding(x, 1)
