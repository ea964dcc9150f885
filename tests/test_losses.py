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


def _naive_mind(img):
    """MIND of a 2D image [H, W] by explicit loops (Sobel magnitude first)."""
    h, w = img.shape
    p = np.pad(img, 1)
    sx = np.zeros_like(img)
    sy = np.zeros_like(img)
    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], float)
    for i in range(h):
        for j in range(w):
            win = p[i:i + 3, j:j + 3]
            # conv_general_dilated is a cross-correlation
            sx[i, j] = (win * kx).sum()
            sy[i, j] = (win * kx.T).sum()
    s = np.sqrt(sx**2 + sy**2 + 1e-12)
    se = np.pad(s, 1, mode="edge")
    d = np.zeros((h, w, 4))
    for r, (dy, dx) in enumerate(((0, 1), (1, 0), (0, -1), (-1, 0))):
        diff2 = (s - se[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]) ** 2
        dp = np.pad(diff2, 1)  # 3x3 patch sum with zero padding
        for i in range(h):
            for j in range(w):
                d[i, j, r] = dp[i:i + 3, j:j + 3].sum()
    v = np.maximum(d.mean(-1, keepdims=True), 1e-6)
    m = np.exp(-d / v)
    return m / m.max(-1, keepdims=True)


def test_mind_matches_naive():
    a, b = PRED[:1, :, :, :1], TRUE[:1, :, :, :1]
    got = float(losses.mind(jnp.asarray(a), jnp.asarray(b), jnp.asarray(MASK[:1])))
    diff = np.abs(_naive_mind(a[0, :, :, 0]) - _naive_mind(b[0, :, :, 0])).mean(-1)
    expect = diff[MASK[0] > 0].mean()
    assert got == pytest.approx(expect, rel=1e-4)
    # intensity-independent: MIND of a scaled image is unchanged
    same = float(losses.mind(jnp.asarray(a * 3.0), jnp.asarray(a), jnp.asarray(MASK[:1])))
    assert same == pytest.approx(0.0, abs=1e-5)
