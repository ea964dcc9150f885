"""3D patches: random training patches of paired volumes, and Gaussian-weighted patch fusion.

* :func:`sample_translation_patches`: random patches of the translation volumes
  (:mod:`qmri_jax.data.translation`) centred on foreground voxels, for High-to-low training (the
  high-resolution GE patch and the thick slices it fully explains, with the kernel's offset in
  patch coordinates: the patch starts at any thin slice, so the slice boundaries fall at random
  positions in it) or low-to-low training (aligned thick-slice patches). Volumes smaller than a
  patch are reflection-padded; left-right flips at random.
* :func:`fuse_patches`: a patch-wise network over a whole volume, overlapping patches (stride
  ``patch / 3`` by default) combined with Gaussian weights (sigma ``patch / 6`` per axis, lowered
  to ~0 at the patch edges: :func:`gaussian_window`), each
  output on its own grid (e.g. a high-resolution output and its thick slices from one pass: joint
  HR/LR fusion). A network that is the identity gives back its input exactly.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["sample_translation_patches", "lr_slices_per_patch", "patch_starts", "gaussian_window",
           "fuse_patches"]


def lr_slices_per_patch(patch_z: int, factor: int, num_taps: int) -> int:
    """Thick slices a High-to-low patch of ``patch_z`` thin slices always explains fully (whatever
    its start): ``floor((patch_z - num_taps - factor + 1) / factor) + 1``."""
    n = (patch_z - num_taps - factor + 1) // factor + 1
    if n < 1:
        raise ValueError(f"a patch of {patch_z} thin slices holds no whole thick slice of "
                         f"{num_taps} taps at factor {factor}: enlarge the patch")
    return n


def _pad_to(vol, shape):
    pads = [(0, max(0, s - v)) for v, s in zip(vol.shape[:3], shape)]
    if any(p[1] for p in pads):
        pads += [(0, 0)] * (vol.ndim - 3)
        return np.pad(vol, pads, mode="reflect")
    return vol


def _start(rng, centre, size, length):
    return int(np.clip(centre - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0,
                       max(length - size, 0)))


def sample_translation_patches(rng: np.random.Generator, vols: dict, count: int, patch: tuple,
                               factor: int, mode: str = "high_to_low", num_taps: int = 4,
                               kernel_offset: int = 0, flip: bool = True) -> dict:
    """``count`` random patches of ``vols`` (stacked subjects ``{key: [S, X, Y, Z(_lr)]}`` with
    ``ge``, ``ge_lr``, ``tse_lr``, ``brain``, ``brain_lr``).

    Args:
      rng: numpy generator.
      vols: the split's volumes.
      count: patches.
      patch: ``(px, py, pz)`` in high-resolution voxels (``pz`` a multiple of ``factor`` for
        low-to-low, whose patches are ``(px, py, pz / factor)`` thick slices).
      factor: thick / thin slice thickness.
      mode: ``"high_to_low"`` or ``"low_to_low"``.
      num_taps, kernel_offset: the network's downsampling kernel (High-to-low): slice ``j`` of
        the volume averages thin slices ``factor j + kernel_offset + t``, ``t < num_taps``.
      flip: left-right (axis 0) flips with probability 1/2.

    Returns:
      ``input [count, px, py, pz_in, 1]`` (GE, thin or thick slices), ``target [count, px, py, n,
      1]`` (thick-slice TSE), ``mask [count, px, py, n]`` (thick-slice brain), ``mask_in``
      (brain on the input grid) and ``offset [count]`` int32: the kernel's first tap for target
      slice 0 in patch coordinates (0 for low-to-low).
    """
    if mode not in ("high_to_low", "low_to_low"):
        raise ValueError(f"mode={mode!r}: expected 'high_to_low' or 'low_to_low'")
    px, py, pz = patch
    h2l = mode == "high_to_low"
    if not h2l and pz % factor:
        raise ValueError(f"patch z {pz}: expected a multiple of the slice factor {factor}")
    n = lr_slices_per_patch(pz, factor, num_taps) if h2l else pz // factor
    out = {k: [] for k in ("input", "target", "mask", "mask_in", "offset")}
    subjects = len(vols["ge"])
    for _ in range(count):
        s = int(rng.integers(subjects))
        brain = vols["brain"][s]
        fg = np.argwhere(brain)
        c = fg[rng.integers(len(fg))] if len(fg) else np.array(brain.shape) // 2
        x0 = _start(rng, c[0], px, brain.shape[0])
        y0 = _start(rng, c[1], py, brain.shape[1])
        z_lr = vols["tse_lr"][s].shape[2]
        if h2l:
            z0 = _start(rng, c[2], pz, brain.shape[2])
            j0 = max(0, -(-(z0 - kernel_offset) // factor))
            j0 = min(j0, max(z_lr - n, 0))
            off = factor * j0 + kernel_offset - z0
            inp = _pad_to(vols["ge"][s], (px, py, pz))[x0:x0 + px, y0:y0 + py, z0:z0 + pz]
            m_in = _pad_to(brain, (px, py, pz))[x0:x0 + px, y0:y0 + py, z0:z0 + pz]
        else:
            j0 = _start(rng, c[2] // factor, n, z_lr)
            off = 0
            inp = _pad_to(vols["ge_lr"][s], (px, py, n))[x0:x0 + px, y0:y0 + py, j0:j0 + n]
            m_in = _pad_to(vols["brain_lr"][s], (px, py, n))[x0:x0 + px, y0:y0 + py, j0:j0 + n]
        tgt = _pad_to(vols["tse_lr"][s], (px, py, n))[x0:x0 + px, y0:y0 + py, j0:j0 + n]
        msk = _pad_to(vols["brain_lr"][s], (px, py, n))[x0:x0 + px, y0:y0 + py, j0:j0 + n]
        arrays = [inp, tgt, msk, m_in]
        if flip and rng.random() < 0.5:
            arrays = [a[::-1] for a in arrays]
        for k, a in zip(("input", "target", "mask", "mask_in"), arrays):
            out[k].append(np.ascontiguousarray(a))
        out["offset"].append(off)
    res = {k: np.stack(v) for k, v in out.items()}
    res["input"] = res["input"][..., None].astype(np.float32)
    res["target"] = res["target"][..., None].astype(np.float32)
    res["mask"] = res["mask"].astype(np.float32)
    res["mask_in"] = res["mask_in"].astype(np.float32)
    res["offset"] = res["offset"].astype(np.int32)
    return res


def patch_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts of patches of ``size`` every ``stride`` covering ``[0, length)`` (the last one
    flush with the end)."""
    if size >= length:
        return [0]
    starts = list(range(0, length - size + 1, max(stride, 1)))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def gaussian_window(shape, sigma_frac: float = 1.0 / 6.0, floor: float = 1e-3) -> np.ndarray:
    """Separable Gaussian ``[*shape]`` centred in the patch, sigma ``sigma_frac * size`` per axis,
    each axis's profile lowered by its value at the patch edge (floored at ``floor`` of the
    peak): a patch enters the weighted sum at ~0 weight, so a network's per-patch differences
    leave no seam (with sigma = size / 6 the plain Gaussian is still 2.3% of its peak there)."""
    w = np.ones((), np.float64)
    for s in shape:
        r = np.arange(s) - (s - 1) / 2.0
        g = np.exp(-0.5 * (r / max(sigma_frac * s, 1e-6)) ** 2)
        g = np.maximum(g - g.min(), floor * g.max())
        w = np.multiply.outer(w, g)
    return w


def fuse_patches(fn, volume: np.ndarray, patch: tuple, stride: tuple | None = None,
                 sigma_frac: float = 1.0 / 6.0, batch_size: int = 4,
                 scales: dict | None = None) -> dict:
    """A patch-wise network over a whole volume by Gaussian-weighted fusion.

    Args:
      fn: ``[B, *patch, C] -> {name: [B, *out_patch, C']}`` (``out_patch`` = ``patch`` times the
        output's ``scales``); a function returning one array is ``{"out": array}``.
      volume: ``[X, Y, Z, C]`` (reflection-padded where smaller than ``patch``).
      patch: ``(px, py, pz)``.
      stride: default ``patch / 3`` (rounded down, at least 1).
      sigma_frac: Gaussian sigma as a fraction of the patch size.
      batch_size: patches per call (the last batch padded by repeating its last patch).
      scales: ``{name: (sx, sy, sz)}`` output voxels per input voxel (e.g. ``(1, 1, 1/4)`` for a
        thick-slice output); default 1 for every output. Patch starts must map to whole output
        voxels.

    Returns:
      ``{name: [X', Y', Z', C']}`` on each output's grid (cropped back to the volume's size).
    """
    shape = volume.shape[:3]
    vol = _pad_to(volume, patch)
    full = vol.shape[:3]
    stride = tuple(max(1, p // 3) for p in patch) if stride is None else tuple(stride)
    grid = [patch_starts(full[i], patch[i], stride[i]) for i in range(3)]
    corners = [(a, b, c) for a in grid[0] for b in grid[1] for c in grid[2]]
    acc, wsum, windows = {}, {}, {}
    for i in range(0, len(corners), batch_size):
        chunk = corners[i:i + batch_size]
        xs = [vol[a:a + patch[0], b:b + patch[1], c:c + patch[2]] for a, b, c in chunk]
        xs += [xs[-1]] * (batch_size - len(xs))
        res = fn(np.stack(xs))
        res = res if isinstance(res, dict) else {"out": res}
        for name, y in res.items():
            y = np.asarray(y, np.float64)
            sc = (scales or {}).get(name, (1, 1, 1))
            if name not in acc:
                out_full = tuple(int(round(f * s)) for f, s in zip(full, sc))
                acc[name] = np.zeros((*out_full, y.shape[-1]))
                wsum[name] = np.zeros(out_full)
                windows[name] = gaussian_window(y.shape[1:4], sigma_frac)
            w = windows[name]
            for (a, b, c), yi in zip(chunk, y):
                o = [a * sc[0], b * sc[1], c * sc[2]]
                if any(abs(v - round(v)) > 1e-9 for v in o):
                    raise ValueError(f"fuse_patches: patch start {(a, b, c)} is not a whole "
                                     f"voxel of output {name!r} at scale {sc}")
                o = [int(round(v)) for v in o]
                sl = tuple(slice(o[d], o[d] + yi.shape[d]) for d in range(3))
                acc[name][sl] += w[..., None] * yi
                wsum[name][sl] += w
    out = {}
    for name in acc:
        sc = (scales or {}).get(name, (1, 1, 1))
        crop = tuple(slice(0, int(math.floor(s * f + 1e-9))) for s, f in zip(shape, sc))
        out[name] = (acc[name] / np.maximum(wsum[name], 1e-300)[..., None])[crop].astype(
            np.float32)
    return out
