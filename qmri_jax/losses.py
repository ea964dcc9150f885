"""Pure, masked losses for map regression. Inputs ``pred``, ``target``: ``[B, *S, C]``; ``mask``:
``[B, *S]`` (1 inside the brain). Every loss averages over masked voxels and channels only.

* ``mae``, ``mse``, ``mae_mse``: absolute / squared error (in the units of the inputs, usually
  maps divided by a per-channel scale);
* ``nmae``, ``nmse``, ``nmae_nmse``: the same relative to the true value (``|p - t| / t``);
* ``ssim``: ``1 - SSIM`` (Gaussian window 11, sigma 1.5, Wang et al., IEEE TIP 2004), averaged over
  the mask; ``l1_ssim``: ``MAE + lambda (1 - SSIM)``;
* ``mind``: mean absolute difference of MIND descriptors (Heinrich et al., MedIA 2012) of the
  Sobel derivative channels (2D: 4 neighbours, 3x3 patches; 3D: 6 neighbours, 3x3x3 patches), a
  structure loss independent of intensity.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["masked_mean", "mae", "mse", "mae_mse", "nmae", "nmse", "nmae_nmse", "ssim_map",
           "ssim", "l1_ssim", "mind", "mind_descriptor", "sobel_channels", "get_loss",
           "LOSSES"]

_EPS = 1e-6


def masked_mean(x, mask):
    """Mean of ``x [B, *S, C]`` over voxels where ``mask [B, *S]`` is 1 (and all channels), or
    over the entries where a per-channel ``mask [B, *S, C]`` is 1; ``mask=None``: the plain mean."""
    if mask is None:
        return jnp.mean(x)
    m = mask if mask.ndim == x.ndim else mask[..., None]
    m = jnp.broadcast_to(m.astype(x.dtype), x.shape)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def mae(pred, target, mask):
    return masked_mean(jnp.abs(pred - target), mask)


def mse(pred, target, mask):
    return masked_mean((pred - target) ** 2, mask)


def mae_mse(pred, target, mask):
    return mae(pred, target, mask) + mse(pred, target, mask)


def _rel(pred, target):
    return (pred - target) / jnp.maximum(jnp.abs(target), _EPS)


def nmae(pred, target, mask):
    return masked_mean(jnp.abs(_rel(pred, target)), mask)


def nmse(pred, target, mask):
    return masked_mean(_rel(pred, target) ** 2, mask)


def nmae_nmse(pred, target, mask):
    return nmae(pred, target, mask) + nmse(pred, target, mask)


def _gaussian_window(size=11, sigma=1.5):
    x = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    g = jnp.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter2d(x, w):
    """Separable 'same' filtering of ``[B, H, W, C]`` with 1D kernel ``w`` (zero padding)."""
    c = x.shape[-1]
    k = w.shape[0]
    kh = jnp.tile(w.reshape(k, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(w.reshape(1, k, 1, 1), (1, 1, 1, c))
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, kh, (1, 1), "SAME", dimension_numbers=dn,
                                     feature_group_count=c)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "SAME", dimension_numbers=dn,
                                        feature_group_count=c)


def ssim_map(x, y, data_range=1.0, size=11, sigma=1.5):
    """Per-voxel SSIM ``[B, H, W, C]`` of 2D images ``[B, H, W, C]``."""
    w = _gaussian_window(size, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filter2d(x, w), _filter2d(y, w)
    sxx = _filter2d(x * x, w) - mx**2
    syy = _filter2d(y * y, w) - my**2
    sxy = _filter2d(x * y, w) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))


def ssim(pred, target, mask, data_range=1.0):
    """``1 - mean SSIM`` inside the mask (inputs scaled so ``data_range`` is their range)."""
    return 1.0 - masked_mean(ssim_map(pred, target, data_range), mask)


def l1_ssim(pred, target, mask, lam=1.0, data_range=1.0):
    return mae(pred, target, mask) + lam * ssim(pred, target, mask, data_range)


def _filter_axis(x, w, axis):
    """'same' correlation of ``x [B, *S, C]`` with the 1D kernel ``w`` along spatial ``axis``
    (zero padding), each channel on its own."""
    nd, c = x.ndim - 2, x.shape[-1]
    shape = [1] * nd
    shape[axis] = w.shape[0]
    k = jnp.tile(jnp.asarray(w, x.dtype).reshape(*shape, 1, 1), (1,) * nd + (1, c))
    sp = "DHW"[-nd:] if nd <= 3 else None
    dn = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    return jax.lax.conv_general_dilated(x, k, (1,) * nd, "SAME", dimension_numbers=dn,
                                        feature_group_count=c)


def sobel_channels(x):
    """Sobel derivatives of ``x [B, *S, C]`` (2D or 3D), one per spatial axis: ``[B, *S, C * nd]``
    (derivative ``[1, 0, -1]`` along the axis, smoothing ``[1, 2, 1]`` along the others;
    cross-correlation, zero padding), channel ``c * nd + a`` the derivative of channel ``c``
    along axis ``a``."""
    nd = x.ndim - 2
    der, smooth = jnp.array([1.0, 0.0, -1.0]), jnp.array([1.0, 2.0, 1.0])
    out = []
    for a in range(nd):
        y = x
        for b in range(nd):
            y = _filter_axis(y, der if a == b else smooth, b)
        out.append(y)
    return jnp.stack(out, axis=-1).reshape(*x.shape[:-1], -1)


def _shift(x, offset):
    """``out[i] = x[i + offset]`` over the spatial axes of ``[B, *S, C]``, edge replication."""
    nd = x.ndim - 2
    pad = jnp.pad(x, ((0, 0),) + ((1, 1),) * nd + ((0, 0),), mode="edge")
    sl = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, x.shape[1:-1]))
    return pad[(slice(None), *sl)]


def _neighbours(nd):
    """The 2 nd face neighbours (4 in 2D, 6 in 3D)."""
    out = []
    for a in range(nd):
        for sgn in (1, -1):
            o = [0] * nd
            o[a] = sgn
            out.append(tuple(o))
    return out


def mind_descriptor(x):
    """MIND ``[B, *S, C, 2 nd]`` of ``[B, *S, C]`` (2D: 4 neighbours, 3D: 6):
    ``exp(-D_r / V)`` normalised by its max over r, ``D_r`` the 3^nd-patch SSD (zero padding) to
    the neighbour at ``r`` (edge replication) and ``V`` the mean of ``D_r`` over r."""
    nd = x.ndim - 2
    box = jnp.ones((3,), jnp.float32)
    ds = []
    for off in _neighbours(nd):
        d = (x - _shift(x, off)) ** 2
        for a in range(nd):
            d = _filter_axis(d, box, a)
        ds.append(d)
    d = jnp.stack(ds, -1)
    v = jnp.maximum(d.mean(axis=-1, keepdims=True), 1e-6)
    m = jnp.exp(-d / v)
    return m / jnp.max(m, axis=-1, keepdims=True)


def mind(pred, target, mask):
    """Mean |MIND(Sobel(pred)) - MIND(Sobel(target))| inside the mask, 2D or 3D, on the Sobel
    derivative channels (one per axis, as the High-to-low paper); ``target`` may be another
    contrast (e.g. the input GE of a GE -> TSE translation): MIND compares structure, not
    intensity."""
    a = mind_descriptor(sobel_channels(pred))
    b = mind_descriptor(sobel_channels(target))
    return masked_mean(jnp.abs(a - b).mean(axis=(-2, -1)), mask)


LOSSES = {"mae": mae, "mse": mse, "mae_mse": mae_mse, "nmae": nmae, "nmse": nmse,
          "nmae_nmse": nmae_nmse, "ssim": ssim, "l1_ssim": l1_ssim, "mind": mind}


def get_loss(name: str, **kwargs):
    """A loss ``(pred, target, mask) -> scalar`` by name (``kwargs`` e.g. ``lam`` for l1_ssim)."""
    if name not in LOSSES:
        raise ValueError(f"loss {name!r}: expected one of {sorted(LOSSES)}")
    return functools.partial(LOSSES[name], **kwargs) if kwargs else LOSSES[name]
