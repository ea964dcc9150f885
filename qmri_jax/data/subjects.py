"""Synthetic subjects: deformed MNI152 anatomy with literature tissue parameters and pathology.

A brain subject is the template anatomy warped by a smooth, invertible random deformation (a small
random affine plus an elastic field), with per-subject tissue means from
:mod:`qmri_jax.data.tissues`, per-voxel texture and partial-volume mixing of the tissue parameters by
the warped probability maps. Optional pathology (tumour: necrotic core, enhancing rim, oedema; MS-like
lesions) replaces tissue parameters inside smooth blobs in white matter. "Geometric" subjects are
random ellipsoids with log-uniform T1/T2 for the wide range phantoms and pathology need.

Invertibility: with ``x -> A x + u(x)`` and ``||A^{-1}|| ||grad u|| < 1`` everywhere the Jacobian
``A + grad u`` is non-singular with ``det > 0`` and the map is injective (``u`` is a contraction
after ``A^{-1}``); the elastic field is scaled so that ``||grad u||_F <= 0.5`` and ``A`` is within
+-7% of a rotation, which guarantees this.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from qmri_jax.data import tissues as tissue_lib
from qmri_jax.data.anatomy import Anatomy

__all__ = ["Subject", "GEOMETRIC_RADIUS", "make_brain_subject", "make_geometric_subject", "random_warp",
           "jacobian_determinant", "MASK_NAMES", "MAP_NAMES"]

MAP_NAMES = ("T1", "T2", "PD")
MASK_NAMES = ("brain", "GM", "WM", "CSF", "lesion", "putamen", "thalamus")


@dataclasses.dataclass
class Subject:
    """One synthetic subject on a 3D grid.

    Attributes:
      maps: ``{"T1": ms, "T2": ms, "PD": a.u.}``, each ``[X, Y, Z]`` float32; 0 outside the brain.
      prob: tissue probabilities ``{"GM", "WM", "CSF", "lesion"}`` ``[X, Y, Z]`` float32, and the
        warped deep grey matter ROIs ``{"putamen", "thalamus"}`` (fractions; zero for geometric
        subjects).
      brain: ``[X, Y, Z]`` bool.
      affine: voxel-to-RAS+ mm ``[4, 4]``.
      meta: tissue means drawn for this subject, field, pathology description.
    """

    maps: dict
    prob: dict
    brain: np.ndarray
    affine: np.ndarray
    meta: dict

    def masks(self) -> dict[str, np.ndarray]:
        """Binary masks ``[X, Y, Z]`` uint8: brain, and the most probable tissue for GM/WM/CSF,
        lesion and the deep grey matter ROIs where their fraction is >= 0.5."""
        stack = np.stack([self.prob["GM"], self.prob["WM"], self.prob["CSF"]], axis=-1)
        label = np.argmax(stack, axis=-1)
        b = self.brain
        out = {"brain": b.astype(np.uint8)}
        for i, name in enumerate(("GM", "WM", "CSF")):
            out[name] = (b & (label == i)).astype(np.uint8)
        for name in ("lesion", "putamen", "thalamus"):
            out[name] = (b & (self.prob[name] >= 0.5)).astype(np.uint8)
        return out


def _smooth_field(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (Gaussian-filtered white noise)."""
    # Generate on a coarse grid and upsample: same statistics, much cheaper than a wide filter.
    step = max(1, int(sigma_vox // 2))
    coarse_shape = tuple(int(np.ceil(s / step)) + 2 for s in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32),
                                sigma_vox / step, mode="wrap")
    if step > 1:
        f = ndimage.zoom(f, step, order=1)
    f = f[tuple(slice(0, s) for s in shape)]
    f = f - f.mean()
    return f / max(float(f.std()), 1e-6)


def _affine_about_centre(rng, shape, voxel_mm, max_rot_deg, max_scale, max_shift_mm):
    """A random near-identity affine in voxel coordinates, about the volume centre."""
    angles = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    scale = np.diag(rng.uniform(1 - max_scale, 1 + max_scale, 3))
    m = rz @ ry @ rx @ scale
    centre = (np.array(shape) - 1) / 2.0
    shift = rng.uniform(-max_shift_mm, max_shift_mm, 3) / voxel_mm
    return m, centre, shift


def random_warp(rng: np.random.Generator, shape, voxel_mm: float, *, max_rot_deg: float = 6.0,
                max_scale: float = 0.07, max_shift_mm: float = 4.0, elastic_mm: float = 3.0,
                smooth_mm: float = 12.0) -> np.ndarray:
    """Sampling coordinates of a smooth invertible warp: ``src(x) = A (x - c) + c + t + u(x)``.

    Args:
      rng: numpy generator.
      shape: ``(X, Y, Z)``.
      voxel_mm: voxel size (mm).
      max_rot_deg, max_scale, max_shift_mm: affine part limits.
      elastic_mm: typical elastic displacement (std, mm), reduced where needed so that
        ``||grad u||_F <= 0.5`` (no folding).
      smooth_mm: smoothness (Gaussian std, mm) of the elastic field.

    Returns:
      Source coordinates ``[3, X, Y, Z]`` (voxels) for ``scipy.ndimage.map_coordinates``.
    """
    m, centre, shift = _affine_about_centre(rng, shape, voxel_mm, max_rot_deg, max_scale,
                                            max_shift_mm)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    rel = grid - centre[:, None, None, None].astype(np.float32)
    coords = np.einsum("ij,j...->i...", m.astype(np.float32), rel)
    coords += (centre + shift)[:, None, None, None].astype(np.float32)
    sigma = smooth_mm / voxel_mm
    u = np.stack([_smooth_field(rng, shape, sigma) for _ in range(3)]) * (elastic_mm / voxel_mm)
    grad_norm = np.sqrt(sum(np.gradient(u[i], axis=j) ** 2 for i in range(3) for j in range(3)))
    peak = float(grad_norm.max())
    if peak > 0.5:
        u *= 0.5 / peak
    return coords + u


def jacobian_determinant(coords: np.ndarray) -> np.ndarray:
    """``det(d src / d x)`` of a sampling-coordinate field ``[3, X, Y, Z]`` (finite differences)."""
    j = np.stack([np.stack(np.gradient(coords[i]), axis=0) for i in range(3)], axis=0)
    j = np.moveaxis(j, (0, 1), (-2, -1))
    return np.linalg.det(j)


def _warp(vol: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    return ndimage.map_coordinates(vol, coords, order=order, mode="constant", cval=0.0,
                                   prefilter=False).astype(np.float32)


def _blob(rng, shape, centre, radii_vox, roughness=0.25):
    """Soft ellipsoid with a perturbed boundary: values in [0, 1], ``[X, Y, Z]``."""
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii_vox))
    r = np.sqrt(r2) * (1 + roughness * _smooth_field(rng, shape, max(radii_vox) / 2) * 0.3)
    return np.clip(1.5 - r, 0, 1).astype(np.float32)  # 1 inside r<0.5, soft edge to r=1.5


def _pathology(rng, wm_prob, brain, voxel_mm, kind):
    """Pathology component probabilities ``{name: [X, Y, Z]}`` placed in white matter."""
    shape = wm_prob.shape
    candidates = np.argwhere(ndimage.binary_erosion(wm_prob > 0.8, iterations=2))
    if len(candidates) == 0:
        return {}
    comps = {}
    if kind == "tumour":
        c = candidates[rng.integers(len(candidates))]
        r = rng.uniform(10, 18) / voxel_mm
        radii = r * rng.uniform(0.8, 1.2, 3)
        oedema = _blob(rng, shape, c, radii * 1.9)
        rim = _blob(rng, shape, c, radii)
        core = _blob(rng, shape, c, radii * 0.55)
        comps["necrotic_core"] = core
        comps["enhancing_rim"] = np.clip(rim - core, 0, 1)
        comps["oedema"] = np.clip(oedema - rim, 0, 1)
    elif kind == "ms":
        total = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(3, 9))):
            c = candidates[rng.integers(len(candidates))]
            radii = rng.uniform(2.5, 7.0, 3) / voxel_mm
            total = np.maximum(total, _blob(rng, shape, c, np.maximum(radii, 0.7), 0.4))
        comps["ms_lesion"] = total
    else:
        raise ValueError(f"pathology {kind!r}: expected 'tumour', 'ms' or None")
    return {k: np.where(brain, v, 0).astype(np.float32) for k, v in comps.items()}


def make_brain_subject(rng: np.random.Generator, anatomy: Anatomy, field: str = "3T", *,
                       pathology: str | None = None, texture: float = 0.03,
                       pv_sharpness: float = 4.0, deform: bool = True) -> Subject:
    """A synthetic brain subject from the template anatomy.

    Args:
      rng: numpy generator (the subject is a deterministic function of its state).
      anatomy: from :func:`qmri_jax.data.anatomy.load_mni152`.
      field: ``"1.5T"`` or ``"3T"`` (tissue table).
      pathology: None, ``"tumour"`` or ``"ms"``.
      texture: relative std of the smooth per-voxel multiplicative texture of T1/T2/PD.
      pv_sharpness: exponent ``g`` in ``p_i^g / sum_j p_j^g``: the MNI152 probabilities average 152
        registered brains and are blurrier than one brain's partial volume (a median pure-GM voxel
        is 93% GM); ``g = 4`` restores sharp tissue boundaries while keeping mixed voxels at them.
      deform: apply the random warp (False: the template itself, for tests).

    Returns:
      :class:`Subject`.
    """
    shape, vox = anatomy.shape, anatomy.voxel_mm
    means = tissue_lib.sample_tissue_means(rng, field)
    if deform:
        coords = random_warp(rng, shape, vox)
        gm, wm, csf = (_warp(a, coords) for a in (anatomy.gm, anatomy.wm, anatomy.csf))
        t1w = _warp(anatomy.t1w, coords)
        brain = _warp(anatomy.brain.astype(np.float32), coords) >= 0.5
        rois = {k: _warp(v, coords) for k, v in anatomy.rois.items()}
    else:
        gm, wm, csf, t1w = (np.array(a, np.float32) for a in
                            (anatomy.gm, anatomy.wm, anatomy.csf, anatomy.t1w))
        brain = np.array(anatomy.brain)
        rois = {k: np.array(v, np.float32) for k, v in anatomy.rois.items()}
    gm, wm, csf = (np.power(np.clip(v, 0, 1), pv_sharpness) for v in (gm, wm, csf))
    total = gm + wm + csf
    inside = brain & (total > 1e-6)
    norm = np.where(inside, total, 1.0)
    probs = {"GM": np.where(inside, gm / norm, 0), "WM": np.where(inside, wm / norm, 0),
             "CSF": np.where(inside, csf / norm, 0)}
    brain = inside

    # Texture: smooth multiplicative fields per parameter, plus deep-GM contrast from the template's
    # T1w intensity (brighter GM on T1w, e.g. the basal ganglia, has a shorter T1).
    tex = {p: 1.0 + texture * _smooth_field(rng, shape, 3.0 / vox) for p in MAP_NAMES}
    gm_t1w = t1w[probs["GM"] > 0.9]
    z = (t1w - (np.median(gm_t1w) if gm_t1w.size else 0.5)) / 0.1
    gm_mod = np.clip(1.0 - 0.04 * z, 0.85, 1.15)
    maps = {}
    for p in MAP_NAMES:
        val = np.zeros(shape, np.float32)
        for t in ("GM", "WM", "CSF"):
            tissue_val = means[t][p] * (gm_mod if (t == "GM" and p == "T1") else 1.0)
            val += probs[t] * tissue_val
        maps[p] = val * tex[p]

    lesion = np.zeros(shape, np.float32)
    meta = {"field": field, "tissue_means": means, "pathology": pathology}
    if pathology is not None:
        comps = _pathology(rng, probs["WM"], brain, vox, pathology)
        wm_means = means["WM"]
        meta["pathology_params"] = {}
        for name, frac in comps.items():
            table = tissue_lib.PATHOLOGY_TABLE[name]
            params = {p: wm_means[p] * float(rng.uniform(*table[p])) for p in MAP_NAMES}
            meta["pathology_params"][name] = params
            frac = np.clip(frac, 0, 1)
            for p in MAP_NAMES:
                maps[p] = (1 - frac) * maps[p] + frac * params[p] * tex[p]
        if comps:  # the nested tumour components add up to the whole lesion
            lesion = np.clip(sum(comps.values()), 0, 1).astype(np.float32)
    maps = {p: np.where(brain, v, 0).astype(np.float32) for p, v in maps.items()}
    probs = {k: v.astype(np.float32) for k, v in probs.items()}
    probs["lesion"] = lesion
    for name in ("putamen", "thalamus"):
        probs[name] = np.where(brain, rois.get(name, 0.0), 0).astype(np.float32)
    return Subject(maps=maps, prob=probs, brain=brain, affine=anatomy.affine, meta=meta)


#: Default semi-axis range of a geometric subject's ellipsoids, as fractions of each axis's size.
GEOMETRIC_RADIUS = (0.08, 0.3)


def make_geometric_subject(rng: np.random.Generator, shape, affine, *, num_ellipsoids=(6, 14),
                           ranges=tissue_lib.GEOMETRIC_RANGES,
                           radius=GEOMETRIC_RADIUS) -> Subject:
    """Random overlapping ellipsoids with log-uniform T1 and T2 (T2 <= T1) and uniform PD.

    Args:
      rng: numpy generator.
      shape: ``(X, Y, Z)``.
      affine: ``[4, 4]``.
      num_ellipsoids: ``(low, high)`` count range.
      ranges: ``{"T1": (lo, hi) ms, "T2": (lo, hi) ms, "PD": (lo, hi)}``.
      radius: ``(low, high)`` semi-axis range as fractions of each axis's size.

    Returns:
      :class:`Subject` with empty tissue probabilities (brain = union of ellipsoids).
    """
    maps = {p: np.zeros(shape, np.float32) for p in MAP_NAMES}
    brain = np.zeros(shape, bool)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    n = int(rng.integers(*num_ellipsoids))
    params = []
    for _ in range(n):
        c = [rng.uniform(0.2 * s, 0.8 * s) for s in shape]
        r = [rng.uniform(radius[0] * s, radius[1] * s) for s in shape]
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0
        lo, hi = np.log(ranges["T1"])
        t1 = float(np.exp(rng.uniform(lo, hi)))
        lo, hi = np.log(ranges["T2"][0]), np.log(min(ranges["T2"][1], t1))
        t2 = float(np.exp(rng.uniform(lo, max(hi, lo))))
        pd = float(rng.uniform(*ranges["PD"]))
        for p, v in zip(MAP_NAMES, (t1, t2, pd)):
            maps[p][inside] = v
        brain |= inside
        params.append({"T1": t1, "T2": t2, "PD": pd})
    zeros = np.zeros(shape, np.float32)
    probs = {k: zeros for k in ("GM", "WM", "CSF", "lesion", "putamen", "thalamus")}
    return Subject(maps=maps, prob=probs, brain=brain, affine=np.asarray(affine),
                   meta={"geometric": params})
