"""Real human anatomy: the MNI152 (ICBM 2009) templates shipped inside the ``nilearn`` wheel.

``nilearn.datasets.load_mni152_{template,gm_template,wm_template,brain_mask}`` read files from the
installed package (no download). They are 1 mm, 197 x 233 x 189 voxels, RAS+ affine.

Deep grey matter regions come from the same wheel: the Seitzman et al. (2018) ROI set
(``nilearn.datasets.fetch_coords_seitzman_2018``, a packaged text file) places 4 mm spheres at MNI
coordinates with an anatomical label each. ``putamen``: the basal-ganglia spheres with
``|x| >= 22 mm`` (8 spheres at x 24.8-28.6 mm; the medial ones are caudate, accumbens and pallidum);
``thalamus``: the 12 thalamus spheres. They sample the structures (ROIs), they do not outline them.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = ["Anatomy", "load_mni152", "deep_gm_rois", "DEEP_GM"]

#: The deep grey matter ROIs of :func:`deep_gm_rois`.
DEEP_GM = ("putamen", "thalamus")


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps on one grid.

    Attributes:
      gm, wm, csf: probabilities ``[X, Y, Z]`` in [0, 1] (CSF = brain - GM - WM, clipped).
      brain: brain mask ``[X, Y, Z]`` (bool).
      t1w: the template's T1-weighted intensity ``[X, Y, Z]`` scaled to [0, 1] (texture source).
      affine: voxel-to-RAS+ mm affine ``[4, 4]``.
      rois: deep grey matter ROIs ``{"putamen", "thalamus"}``, each ``[X, Y, Z]`` float32 in
        {0, 1} (see the module docstring).
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    t1w: np.ndarray
    affine: np.ndarray
    rois: dict = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    x, y, z = (s // f * f for s in a.shape)
    a = a[:x, :y, :z]
    return a.reshape(x // f, f, y // f, f, z // f, f).mean(axis=(1, 3, 5))


def _crop_to_multiple(a: np.ndarray, multiple: tuple[int, int, int]) -> tuple[np.ndarray, list]:
    starts = []
    sl = []
    for n, m in zip(a.shape, multiple):
        keep = n // m * m
        start = (n - keep) // 2
        starts.append(start)
        sl.append(slice(start, start + keep))
    return a[tuple(sl)], starts


def default_multiple(resolution_mm: int) -> tuple[int, int, int]:
    """Crop multiple per resolution: 16 in-plane up to 2 mm (four 2x poolings), 8 above (the
    brain would not fit a 16-multiple crop at 4 mm: 58 -> 48 voxels)."""
    return (16, 16, 2) if resolution_mm <= 2 else (8, 8, 2)


@functools.lru_cache(maxsize=4)
def load_mni152(resolution_mm: int = 2, multiple: tuple[int, int, int] | None = None) -> Anatomy:
    """The MNI152 tissue templates at an integer resolution, cropped for U-Nets.

    Args:
      resolution_mm: voxel size (1, 2, 3, 4 ...): the 1 mm templates are block-averaged by this
        factor (partial volume is preserved, not thresholded).
      multiple: each axis is centre-cropped to a multiple of these (e.g. 16 so four 2x poolings
        divide the in-plane size); default :func:`default_multiple`. At 2 mm this gives
        96 x 112 x 94 voxels, at 4 mm 48 x 56 x 46, the brain fully inside.

    Returns:
      :class:`Anatomy` (cached; treat the arrays as read-only).
    """
    from nilearn import datasets  # local: importing nilearn is slow and only needed here

    if int(resolution_mm) != resolution_mm or resolution_mm < 1:
        raise ValueError(f"resolution_mm={resolution_mm}: expected a positive integer")
    f = int(resolution_mm)
    multiple = default_multiple(f) if multiple is None else tuple(multiple)
    # nilearn's own resolution argument resamples with nearest/continuous interpolation; block
    # averaging keeps the partial-volume fractions exact.
    gm_img = datasets.load_mni152_gm_template(resolution=1)
    vols = {
        "gm": gm_img.get_fdata(dtype=np.float32),
        "wm": datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32),
        "brain": datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32),
        "t1w": datasets.load_mni152_template(resolution=1).get_fdata(dtype=np.float32),
    }
    affine = np.array(gm_img.affine, dtype=np.float64)
    out = {}
    starts = None
    for name, v in vols.items():
        v = _block_mean(v, f) if f > 1 else v
        v, starts = _crop_to_multiple(v, multiple)
        out[name] = v.astype(np.float32)
    scale = np.diag([f, f, f, 1.0])
    new_affine = affine @ scale
    new_affine[:3, 3] = affine[:3, :3] @ (np.array(starts) * f + (f - 1) / 2.0) + affine[:3, 3]
    gm = np.clip(out["gm"], 0, 1)
    wm = np.clip(out["wm"], 0, 1)
    brain_frac = np.clip(out["brain"], 0, 1)
    brain = brain_frac >= 0.5
    gm = np.where(brain, gm, 0)
    wm = np.where(brain, wm, 0)
    # CSF = brain - GM - WM (clipped to [0, 1]), as the tissue templates omit it.
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0, 1), 0)
    t1w = out["t1w"] / max(float(out["t1w"].max()), 1e-6)
    arrays = dict(gm=gm, wm=wm, csf=csf, brain=brain, t1w=t1w)
    rois = deep_gm_rois(gm.shape, new_affine)
    for a in (*arrays.values(), *rois.values()):
        a.flags.writeable = False
    return Anatomy(**arrays, affine=new_affine, rois=rois)


def deep_gm_rois(shape, affine) -> dict[str, np.ndarray]:
    """The deep grey matter ROIs (module docstring) on a grid: ``{"putamen", "thalamus"}``, each
    ``[X, Y, Z]`` float32, 1 where the voxel centre lies within a sphere of the structure.

    Args:
      shape: ``(X, Y, Z)``.
      affine: voxel-to-MNI mm ``[4, 4]``.
    """
    from nilearn import datasets  # the coordinates ship in the wheel (no download)

    coords = datasets.fetch_coords_seitzman_2018(ordered_regions=False)
    xyz = np.asarray(coords.rois[["x", "y", "z"]], np.float64)
    radius = np.asarray(coords.radius, np.float64)
    region = np.asarray(coords.regions).astype(str)
    pick = {"putamen": (region == "basalGanglia") & (np.abs(xyz[:, 0]) >= 22.0),
            "thalamus": region == "thalamus"}
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape],
                                indexing="ij"), axis=-1)
    mm = grid @ np.asarray(affine, np.float64)[:3, :3].T + np.asarray(affine)[:3, 3]
    out = {}
    for name in DEEP_GM:
        inside = np.zeros(shape, bool)
        for centre, r in zip(xyz[pick[name]], radius[pick[name]]):
            inside |= np.sum((mm - centre) ** 2, axis=-1) <= r ** 2
        out[name] = inside.astype(np.float32)
    return out
