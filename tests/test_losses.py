"""Masked losses against naive numpy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax import losses

RNG = np.random.default_rng(0)
PRED = RNG.uniform(0.5, 2.0, (2, 12, 10, 3)).astype(np.float32)
TRUE = RNG.uniform(0.5, 2.0, (2, 12, 10, 3)).astype(np.float32)
MASK = (RNG.uniform(size=(2, 12, 10)) > 0.3).astype(np.float32)


def _naive_mean(err):
    vals = [err[b, i, j, c] for b in range(2) for i in range(12) for j in range(10) for c in range(3)
            if MASK[b, i, j]]
    return float(np.mean(vals))


@pytest.mark.parametrize("name,fn", [
    ("mae", lambda p, t: np.abs(p - t)),
    ("mse", lambda p, t: (p - t) ** 2),
    ("mae_mse", lambda p, t: np.abs(p - t) + (p - t) ** 2),
    ("nmae", lambda p, t: np.abs(p - t) / t),
    ("nmse", lambda p, t: ((p - t) / t) ** 2),
    ("nmae_nmse", lambda p, t: np.abs(p - t) / t + ((p - t) / t) ** 2),
])
def test_pointwise_losses_match_naive(name, fn):
    got = float(losses.get_loss(name)(jnp.asarray(PRED), jnp.asarray(TRUE), jnp.asarray(MASK)))
    assert got == pytest.approx(_naive_mean(fn(PRED, TRUE)), rel=1e-5)


def test_losses_ignore_voxels_outside_mask():
    changed = PRED.copy()
    changed[MASK == 0] = 1e6
    for name in losses.LOSSES:
        a = float(losses.get_loss(name)(jnp.asarray(PRED), jnp.asarray(TRUE), jnp.asarray(MASK)))
        if name in ("ssim", "l1_ssim", "mind"):
            continue  # windowed losses see neighbours by design
        b = float(losses.get_loss(name)(jnp.asarray(changed), jnp.asarray(TRUE), jnp.asarray(MASK)))
        assert a == pytest.approx(b, rel=1e-6), name


def _naive_ssim(x, y, data_range=1.0, size=11, sigma=1.5):
    """Direct windowed sums with zero padding, one voxel at a time."""
    h, w = x.shape
    r = size // 2
    g1 = np.exp(-((np.arange(size) - r) ** 2) / (2 * sigma**2))
    g1 /= g1.sum()
    g = np.outer(g1, g1)
    xp, yp = np.pad(x, r), np.pad(y, r)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            px, py = xp[i:i + size, j:j + size], yp[i:i + size, j:j + size]
            mx, my = (g * px).sum(), (g * py).sum()
            sxx = (g * px * px).sum() - mx**2
            syy = (g * py * py).sum() - my**2
            sxy = (g * px * py).sum() - mx * my
            out[i, j] = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return out


def test_ssim_matches_naive_and_identity():
    x, y = PRED[0, :, :, 0], TRUE[0, :, :, 0]
    got = np.asarray(losses.ssim_map(jnp.asarray(x)[None, ..., None], jnp.asarray(y)[None, ..., None],
                                     data_range=2.0))[0, ..., 0]
    np.testing.assert_allclose(got, _naive_ssim(x, y, 2.0), rtol=1e-4, atol=1e-5)
    same = float(losses.ssim(jnp.asarray(PRED), jnp.asarray(PRED), jnp.asarray(MASK), 2.0))
    assert same == pytest.approx(0.0, abs=1e-5)
    l1s = float(losses.l1_ssim(jnp.asarray(PRED), jnp.asarray(TRUE), jnp.asarray(MASK), lam=0.5,
                               data_range=2.0))
    expect = _naive_mean(np.abs(PRED - TRUE)) + 0.5 * float(
        losses.ssim(jnp.asarray(PRED), jnp.asarray(TRUE), jnp.asarray(MASK), 2.0))
    assert l1s == pytest.approx(expect, rel=1e-5)


def _naive_sobel(img):
    """Sobel derivative per axis of a 2D or 3D image by explicit loops (zero padding,
    cross-correlation), ``[*S, nd]``."""
    nd = img.ndim
    p = np.pad(img, 1)
    out = np.zeros(img.shape + (nd,))
    for a in range(nd):
        k = np.ones((3,) * nd)
        for b in range(nd):
            w = np.array([1.0, 0.0, -1.0]) if a == b else np.array([1.0, 2.0, 1.0])
            k = k * w.reshape([3 if i == b else 1 for i in range(nd)])
        for idx in np.ndindex(img.shape):
            win = p[tuple(slice(i, i + 3) for i in idx)]
            out[idx + (a,)] = (win * k).sum()
    return out


def _naive_mind(img):
    """MIND of a 2D or 3D image by explicit loops: on each Sobel channel, 2 nd neighbours
    (edge replication), 3^nd patch SSD (zero padding); ``[*S, nd, 2 nd]``."""
    s = _naive_sobel(img)
    nd = img.ndim
    shape = img.shape
    offs = []
    for a in range(nd):
        for sgn in (1, -1):
            o = [0] * nd
            o[a] = sgn
            offs.append(o)
    d = np.zeros(shape + (nd, len(offs)))
    for ch in range(nd):
        x = s[..., ch]
        for r, o in enumerate(offs):
            diff2 = np.zeros(shape)
            for idx in np.ndindex(shape):
                nb = tuple(min(max(i + oi, 0), n - 1) for i, oi, n in zip(idx, o, shape))
                diff2[idx] = (x[idx] - x[nb]) ** 2
            dp = np.pad(diff2, 1)
            for idx in np.ndindex(shape):
                d[idx + (ch, r)] = dp[tuple(slice(i, i + 3) for i in idx)].sum()
    v = np.maximum(d.mean(-1, keepdims=True), 1e-6)
    m = np.exp(-d / v)
    return m / m.max(-1, keepdims=True)


def test_mind_matches_naive():
    a, b = PRED[:1, :, :, :1], TRUE[:1, :, :, :1]
    got = float(losses.mind(jnp.asarray(a), jnp.asarray(b), jnp.asarray(MASK[:1])))
    diff = np.abs(_naive_mind(a[0, :, :, 0]) - _naive_mind(b[0, :, :, 0])).mean(axis=(-2, -1))
    expect = diff[MASK[0] > 0].mean()
    assert got == pytest.approx(expect, rel=1e-4)
    same = float(losses.mind(jnp.asarray(a * 3.0), jnp.asarray(a), jnp.asarray(MASK[:1])))
    assert same == pytest.approx(0.0, abs=1e-5)


def test_mind_3d_matches_naive_six_neighbours():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(1, 7, 6, 5, 1)).astype(np.float32)
    b = (a + 0.5 * rng.normal(size=a.shape)).astype(np.float32)
    mask = (rng.random((1, 7, 6, 5)) > 0.3).astype(np.float32)
    desc = np.asarray(losses.mind_descriptor(losses.sobel_channels(jnp.asarray(a))))
    naive_a = _naive_mind(a[0, ..., 0])
    assert desc.shape == (1, 7, 6, 5, 3, 6)
    np.testing.assert_allclose(desc[0], naive_a, rtol=1e-4, atol=1e-5)
    got = float(losses.mind(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask)))
    diff = np.abs(naive_a - _naive_mind(b[0, ..., 0])).mean(axis=(-2, -1))
    assert got == pytest.approx(diff[mask[0] > 0].mean(), rel=1e-4)
    # structure, not intensity: a rescaled volume has the same descriptor
    assert float(losses.mind(jnp.asarray(2.5 * a), jnp.asarray(a),
                             jnp.asarray(mask))) == pytest.approx(0.0, abs=1e-5)
