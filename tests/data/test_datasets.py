"""Synthetic brain data: anatomy, tissue table, deformations, acquisition noise, datasets,
export."""

import glob
import hashlib
import json
import os

import jax
import nibabel as nib
import numpy as np
import pytest

from qmri_jax.data import acquisition, anatomy, datasets, subjects, tissues
from qmri_jax.physics import noise
from qmri_jax.physics.protocol import Protocol, get_protocol, simulate


@pytest.fixture(scope="module")
def anat2():
    return anatomy.load_mni152(2)


def test_anatomy_grid_and_csf(anat2):
    a = anat2
    assert a.shape == (96, 112, 94)
    assert np.all(a.csf >= 0) and np.all(a.csf <= 1)
    inside = a.brain
    np.testing.assert_allclose(a.csf[inside], np.clip(1 - a.gm - a.wm, 0, 1)[inside], atol=1e-6)
    assert not a.gm[~inside].any() and not a.csf[~inside].any()
    # The 2 mm affine points at the centre of the 2x2x2 block it averages.
    from nilearn import datasets as nd
    img = nd.load_mni152_gm_template(resolution=1)
    gm1 = img.get_fdata()
    ijk2 = np.array([48, 60, 50])
    world = a.affine @ np.r_[ijk2, 1]
    ijk1 = np.linalg.solve(img.affine, world)[:3]  # block centre: half-integer 1 mm coordinates
    lo = np.floor(ijk1).astype(int)
    np.testing.assert_allclose(ijk1 - lo, 0.5)
    block = gm1[lo[0]:lo[0] + 2, lo[1]:lo[1] + 2, lo[2]:lo[2] + 2].mean()
    assert a.gm[tuple(ijk2)] == pytest.approx(block if a.brain[tuple(ijk2)] else 0.0, abs=1e-5)


def test_deep_grey_matter_rois_are_the_packaged_spheres(anat2):
    """Putamen and thalamus: every voxel centre within 4 mm of a sphere centre of the structure,
    the voxel nearest each centre inside, both hemispheres, and deep in the template's grey
    matter; a subject carries them warped with its anatomy."""
    from nilearn import datasets as nd
    c = nd.fetch_coords_seitzman_2018(ordered_regions=False)
    xyz = np.asarray(c.rois[["x", "y", "z"]], float)
    regions = np.asarray(c.regions).astype(str)
    centres = {"putamen": xyz[(regions == "basalGanglia") & (np.abs(xyz[:, 0]) >= 22)],
               "thalamus": xyz[regions == "thalamus"]}
    assert [len(v) for v in centres.values()] == [8, 12]
    inv = np.linalg.inv(anat2.affine)
    for name, cs in centres.items():
        roi = anat2.rois[name].astype(bool)
        ijk = np.argwhere(roi)
        mm = ijk @ anat2.affine[:3, :3].T + anat2.affine[:3, 3]
        dist = np.min(np.linalg.norm(mm[:, None] - cs[None], axis=-1), axis=1)
        assert dist.max() <= 4.0 + 1e-6
        for centre in cs:
            nearest = np.round(inv[:3, :3] @ centre + inv[:3, 3]).astype(int)
            assert roi[tuple(nearest)]
        assert (mm[:, 0] > 0).any() and (mm[:, 0] < 0).any()
        assert anat2.gm[roi].mean() > 0.4 and anat2.brain[roi].all()
    assert np.abs(centres["putamen"][:, 0]).min() > np.abs(centres["thalamus"][:, 0]).max()
    flat = subjects.make_brain_subject(np.random.default_rng(0), anat2, deform=False)
    np.testing.assert_array_equal(flat.masks()["putamen"], anat2.rois["putamen"])
    warped = subjects.make_brain_subject(np.random.default_rng(1), anat2).masks()
    for name in ("putamen", "thalamus"):
        n0 = anat2.rois[name].sum()
        assert 0.6 * n0 < warped[name].sum() < 1.4 * n0
        assert not (warped[name] & ~warped["brain"]).any()


@pytest.mark.parametrize("field", ["1.5T", "3T"])
def test_tissue_medians_within_literature_ranges(anat2, field):
    for seed, pathology in enumerate(["tumour", "ms", None]):
        s = subjects.make_brain_subject(np.random.default_rng(seed), anat2, field,
                                        pathology=pathology)
        for tissue in tissues.TISSUES:
            pure = s.prob[tissue] > 0.9
            assert pure.sum() > 200, (tissue, pure.sum())
            for p in ("T1", "T2", "PD"):
                lo, hi = tissues.TISSUE_TABLE[field][tissue][p]
                med = float(np.median(s.maps[p][pure]))
                assert lo <= med <= hi, f"{field} seed {seed} {tissue} {p}: {med} not in [{lo}, {hi}]"


def test_subjects_differ_and_pathology_changes_parameters(anat2):
    s1 = subjects.make_brain_subject(np.random.default_rng(1), anat2)
    s2 = subjects.make_brain_subject(np.random.default_rng(2), anat2)
    both = s1.brain & s2.brain
    with np.errstate(invalid="ignore"):
            rel = np.abs(s1.maps["T1"] - s2.maps["T1"]) / (0.5 * (s1.maps["T1"] + s2.maps["T1"]))
    assert rel[both].mean() > 0.05
    t = subjects.make_brain_subject(np.random.default_rng(0), anat2, pathology="tumour")
    lesion = t.masks()["lesion"].astype(bool)
    assert lesion.sum() > 50
    wm_t1 = t.meta["tissue_means"]["WM"]["T1"]
    assert np.median(t.maps["T1"][lesion]) > 1.2 * wm_t1  # every component has T1 >= 1.2 x WM
    assert np.all(t.maps["T1"][t.brain] > 0) and not t.maps["T1"][~t.brain].any()


@pytest.mark.parametrize("elastic_mm", [3.0, 30.0])
def test_warp_is_smooth_and_invertible(elastic_mm):
    shape = (48, 56, 47)
    for seed in range(3):
        coords = subjects.random_warp(np.random.default_rng(seed), shape, 2.0,
                                      elastic_mm=elastic_mm, smooth_mm=8.0)
        det = subjects.jacobian_determinant(coords)
        assert det.min() > 0.2, det.min()  # no folding anywhere (30 mm asks for far more)
        identity = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
        assert np.abs(coords - identity).max() > 1.0  # it does deform


def test_geometric_subject_ranges():
    s = subjects.make_geometric_subject(np.random.default_rng(3), (32, 32, 8), np.eye(4))
    for params in s.meta["geometric"]:
        assert 10 <= params["T1"] <= 4000 and 5 <= params["T2"] <= min(2000, params["T1"])
    assert s.brain.any() and np.all(s.maps["T1"][s.brain] >= 10)


def test_geometric_radius_bounds_each_ellipsoid_and_names_the_dataset():
    # One ellipsoid at a time: its extent along each axis is at most 2 * high * size + 1 voxels and
    # at least 2 * low * size - 1 (the centre lies inside [0.2, 0.8] of the axis, so it never clips).
    shape = (64, 48, 32)
    for lo, hi in ((0.03, 0.05), (0.2, 0.25)):
        for seed in range(5):
            s = subjects.make_geometric_subject(np.random.default_rng(seed), shape, np.eye(4),
                                                num_ellipsoids=(1, 2), radius=(lo, hi))
            idx = np.nonzero(s.brain)
            for ax, n in zip(idx, shape):
                ext = ax.max() - ax.min() + 1
                assert 2 * lo * n - 1 <= ext <= 2 * hi * n + 1, (lo, hi, ext)
    # The default keeps the names (caches) of existing datasets; another range names a new one.
    assert "geometric_radius" not in datasets.DataConfig().to_dict()
    assert datasets.DataConfig(geometric_radius=(0.03, 0.3)).name != datasets.DataConfig().name
    for bad in ((0.0, 0.3), (0.3, 0.1), (0.1, 0.6), (0.1,)):
        with pytest.raises(ValueError, match="geometric_radius"):
            datasets.DataConfig(geometric_radius=bad)


@pytest.mark.parametrize("snr", [5.0, 50.0])
def test_magnitude_noise_matches_rician_moments(snr):
    prot = Protocol.create("se", tr_ms=[3000.0], te_ms=[20.0])
    shape = (200, 200, 5)
    maps = {"T1": np.full(shape, 1000.0, np.float32), "T2": np.full(shape, 100.0, np.float32),
            "PD": np.full(shape, 0.8, np.float32)}
    brain = np.ones(shape, bool)
    img, _ = acquisition.acquire(np.random.default_rng(0), maps, prot, brain,
                                 acquisition.AcquisitionConfig(snr=snr))
    nu = 0.8 * (1 - np.exp(-3000 / 1000)) * np.exp(-20 / 100)  # spin echo, closed form
    mean, std = noise.rician_moments(nu, 1.0 / snr)
    assert img.mean() == pytest.approx(float(mean), rel=0.03)
    assert img.std() == pytest.approx(float(std), rel=0.03)
    if snr == 5.0:  # the Rician bias is real at low SNR: the plain Gaussian mean would be nu
        assert img.mean() > nu * 1.02


def test_saturate_equals_clipping_then_p95_normalisation():
    # A series clipped by the scanner (12-bit DICOM) and then p95-normalised is what saturate()
    # makes of the unclipped normalised series, at level = clip / unclipped p95.
    rng = np.random.default_rng(1)
    raw = rng.uniform(100.0, 4000.0, (16, 16, 2, 5))
    brain = np.zeros((16, 16, 2), bool)
    brain[2:14, 3:13] = True
    p95 = np.percentile(raw[brain].max(-1), 95)
    norm = acquisition.normalise_images(raw, brain, "p95")
    for clip in (0.6 * p95, 0.9 * p95, 2.0 * raw.max()):
        real = acquisition.normalise_images(np.minimum(raw, clip), brain, "p95")
        np.testing.assert_allclose(acquisition.saturate(norm, clip / p95), real, rtol=1e-5)
    lvl = jax.numpy.asarray([[[[0.7]]]])
    out = acquisition.saturate(jax.numpy.asarray(norm[None]), lvl)
    assert isinstance(out, jax.Array) and float(out.max()) == pytest.approx(1.0)



def test_invalid_samples_marks_exactly_the_clipped_and_the_dropped_samples():
    """The validity augmentation: with saturation on every item and a fixed level, the NaN
    samples are exactly those at or above the level and the rest are saturate()'s values; random
    missing samples come at the stated rate, only on the stated fraction of items."""
    rng = np.random.default_rng(2)
    x = jax.numpy.asarray(rng.uniform(0.0, 1.4, (4000, 1, 10)), jax.numpy.float32)
    key = jax.random.key(0)
    out = np.asarray(acquisition.invalid_samples(key, x, saturation=1.0,
                                                 saturation_range=(0.8, 0.8)))
    xn = np.asarray(x)
    np.testing.assert_array_equal(np.isnan(out), xn >= 0.8)
    ok = ~np.isnan(out)
    np.testing.assert_allclose(out[ok], np.asarray(acquisition.saturate(x, 0.8))[ok], rtol=1e-6)
    out = np.asarray(acquisition.invalid_samples(key, x, missing=0.5, missing_rate=0.2))
    per_item = np.isnan(out).reshape(4000, -1).any(-1)
    rate = np.isnan(out)[per_item].mean()
    assert abs(per_item.mean() - 0.5 * (1 - 0.8 ** 10)) < 0.03, per_item.mean()
    assert abs(rate - 0.2 / (1 - 0.8 ** 10)) < 0.02, rate  # given at least one missing
    np.testing.assert_array_equal(out[~np.isnan(out)], xn[~np.isnan(out)])
    np.testing.assert_array_equal(np.asarray(acquisition.invalid_samples(key, x)), xn)
    # The renormalisation factor of each item (its noise SD grows with it): 1 / min(level, 1)
    # on the clipped items (about half), 1 elsewhere; 1 everywhere at a level above 1.
    out, scale = acquisition.invalid_samples(key, x, saturation=0.5, saturation_range=(0.8, 0.8),
                                             return_scale=True)
    scale, out = np.asarray(scale), np.asarray(out)
    assert scale.shape == (4000, 1, 1)
    on = ~np.all(out == xn, axis=(1, 2))  # every clipped item is changed (NaN or / 0.8)
    assert 0.4 < on.mean() < 0.6
    np.testing.assert_allclose(scale[on, 0, 0], 1.25, rtol=1e-6)
    np.testing.assert_array_equal(scale[~on, 0, 0], 1.0)
    _, scale = acquisition.invalid_samples(key, x, saturation=0.5, saturation_range=(1.2, 1.2),
                                           return_scale=True)
    np.testing.assert_array_equal(np.asarray(scale), 1.0)


def test_k_spread_scales_the_inversion_efficiency_per_subject():
    maps = {"T1": np.full((6, 6, 2), 300.0), "T2": np.full((6, 6, 2), 80.0),
            "PD": np.ones((6, 6, 2))}
    brain = np.ones((6, 6, 2), bool)
    prot = get_protocol("nist_vir")
    base_cfg = acquisition.AcquisitionConfig(transmit_bias=0.05)
    _, base = acquisition.acquire(np.random.default_rng(3), maps, prot, brain, base_cfg, 4.0)
    ks = []
    for seed in range(8):
        cfg = acquisition.AcquisitionConfig(transmit_bias=0.05, k_spread=0.15)
        img, f = acquisition.acquire(np.random.default_rng(seed), maps, prot, brain, cfg, 4.0)
        _, f0 = acquisition.acquire(np.random.default_rng(seed), maps, prot, brain, base_cfg, 4.0)
        ratio = f["k"] / f0["k"]  # one factor per subject, in [0.85, 1.15]
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-6)
        assert 0.85 <= ratio.flat[0] <= 1.15
        ks.append(float(f["k"].max()))
        # the images are the signal equation at that k
        ref = np.asarray(simulate({**maps, "k": f["k"]}, prot))
        np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-6)
    assert max(ks) > 1.0 and float(base["k"].max()) <= 1.0
    with pytest.raises(ValueError, match="k_spread"):
        acquisition.AcquisitionConfig(k_spread=1.5)
    # datasets without it keep their names (and caches)
    assert "k_spread" not in datasets.DataConfig().to_dict()
    assert datasets.DataConfig(k_spread=0.1).name != datasets.DataConfig().name


def test_normalisations_and_bias_fields():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 3.0, (20, 20, 4, 3)).astype(np.float32)
    brain = np.zeros((20, 20, 4), bool)
    brain[5:15, 5:15] = True
    r = acquisition.normalise_images(x, brain, "rescale")
    np.testing.assert_allclose(r.min(axis=(0, 1, 2)), 0.01, atol=1e-6)
    np.testing.assert_allclose(r.max(axis=(0, 1, 2)), 1.0, atol=1e-6)
    p = acquisition.normalise_images(x, brain, "p95")
    np.testing.assert_allclose(np.percentile(p[brain].max(-1), 95), 1.0, rtol=1e-5)
    # one factor for the whole series: the ratios between images (T1 information) survive
    np.testing.assert_allclose(p[..., 1] / p[..., 0], x[..., 1] / x[..., 0], rtol=1e-5)
    with pytest.raises(ValueError, match="normalisation"):
        acquisition.AcquisitionConfig(normalisation="zscore")
    # Per slice and image (Qiu et al.): a slice scaled by 3 comes out the same as the others.
    y = x.copy()
    y[:, :, 2] *= 3.0
    q = acquisition.normalise_images(y, brain, "p95_slice")
    for z in range(4):
        np.testing.assert_allclose(np.percentile(q[:, :, z][brain[:, :, z]], 95, axis=0), 1.0,
                                   rtol=1e-5)
    np.testing.assert_allclose(q[:, :, 2], acquisition.normalise_images(x, brain, "p95_slice")[:, :, 2],
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"p95_slice' needs images \[X, Y, Z, N\]"):
        acquisition.normalise_images(x[0], brain[0], "p95_slice")
    f = acquisition.smooth_bias_field(rng, (40, 40, 10), 2.0, 0.1)
    assert f.min() > 0 and 0.05 < np.log(f).std() < 0.15


def test_thick_slices_average_through_plane():
    prot = get_protocol("four_contrast_brain")
    shape = (4, 4, 9)
    t1 = np.full(shape, 900.0, np.float32)
    t1[:, :, 4] = 4000.0
    maps = {"T1": t1, "T2": np.full(shape, 80.0, np.float32), "PD": np.ones(shape, np.float32)}
    thin, _ = acquisition.acquire(np.random.default_rng(0), maps, prot, np.ones(shape, bool))
    thick, _ = acquisition.acquire(np.random.default_rng(0), maps, prot, np.ones(shape, bool),
                                   acquisition.AcquisitionConfig(slice_thickness_vox=3))
    np.testing.assert_allclose(thick[0, 0, 4], thin[0, 0, 3:6].mean(axis=0), rtol=1e-5)


def _digest(root):
    out = {}
    for f in sorted(glob.glob(os.path.join(root, "**", "*.array_record*"), recursive=True)):
        out[os.path.relpath(f, root)] = hashlib.sha256(open(f, "rb").read()).hexdigest()
    return out


def test_dataset_splits_disjoint_and_byte_identical(tmp_path):
    cfg = datasets.DataConfig(num_subjects=4, slices_per_subject=2, snr=30.0, seed=5,
                              pathology_fraction=0.5, geometric_fraction=0.25)
    b1 = datasets.build(cfg, str(tmp_path / "a"))
    datasets.build(cfg, str(tmp_path / "b"))
    d1, d2 = _digest(str(tmp_path / "a")), _digest(str(tmp_path / "b"))
    assert len(d1) == 3 and d1 == d2
    seen = {}
    for split in datasets.SPLITS:
        arr = datasets.load_split_arrays(b1, split)
        assert arr["images"].shape[1:] == (96, 112, 4) and arr["T1"].shape[1:] == (96, 112)
        seen[split] = set(arr["subject"].tolist())
        assert seen[split] == set(datasets.subject_split(cfg)[split])
        assert np.all(np.isfinite(arr["images"]))
    assert not (seen["train"] & seen["validation"] or seen["train"] & seen["test"]
                or seen["validation"] & seen["test"])
    # The stored example equals a fresh regeneration (determinism across processes).
    arr = datasets.load_split_arrays(b1, "test")
    again = datasets.subject_slices(cfg, int(arr["subject"][0]))[0]
    np.testing.assert_array_equal(arr["images"][0], again["images"])
    other = datasets.DataConfig(num_subjects=4, slices_per_subject=2, snr=30.0, seed=6)
    assert other.name != cfg.name


def test_on_the_fly_epochs_are_fresh_subjects():
    cfg = datasets.DataConfig(num_subjects=3, slices_per_subject=1)
    e0 = datasets.epoch_arrays(cfg, "train", epoch=0)
    e1 = datasets.epoch_arrays(cfg, "train", epoch=1)
    assert e0["subject"].tolist() == e1["subject"].tolist() == datasets.subject_split(cfg)["train"]
    assert not np.allclose(e0["T1"], e1["T1"])


def test_export_cli_writes_bids_nifti_and_montage(tmp_path):
    from qmri_jax.data import export
    export.main(["--subjects", "1", "--protocol", "four_contrast_brain", "--field", "1.5T",
                 "--out", str(tmp_path), "--resolution", "2", "--pathology", "ms"])
    d = tmp_path / "sub-01"
    for name in ("T1map", "T2map", "PDmap", "label-GM_probseg", "label-WM_probseg",
                 "label-CSF_probseg", "label-lesion_probseg", "T1w", "T2w", "PDw", "FLAIR"):
        img = nib.load(d / f"sub-01_{name}.nii.gz")
        assert img.shape == (96, 112, 94), name
        np.testing.assert_allclose(img.affine, anatomy.load_mni152(2).affine)
    t1 = nib.load(d / "sub-01_T1map.nii.gz").get_fdata()
    assert 500 < np.median(t1[t1 > 0]) < 2000
    assert json.loads((d / "sub-01_T1map.json").read_text())["Units"] == "ms"
    side = json.loads((d / "sub-01_FLAIR.json").read_text())
    assert side["ti_ms"] == 3000 and side["InversionTime"] == 3.0
    png = (d / "sub-01_montage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert not list(d.glob("*.tmp*"))


def test_cross_validation_folds_cover_every_subject_once_as_test():
    base = dict(num_subjects=10, slices_per_subject=1)
    tests_seen = []
    for f in range(3):
        split = datasets.subject_split(datasets.DataConfig(cv_folds=3, cv_fold=f, **base))
        assert not set(split["train"]) & set(split["test"])
        assert not set(split["validation"]) & set(split["test"])
        assert sorted(split["train"] + split["validation"] + split["test"]) == list(range(10))
        assert len(split["validation"]) == 1
        tests_seen += split["test"]
    assert sorted(tests_seen) == list(range(10))  # folds of 4, 3, 3
    # Without folds the dataset name (its cache) is what it was before cv_folds existed.
    assert "cv_fold" not in datasets.DataConfig(**base).to_dict()
    assert datasets.DataConfig(cv_folds=3, **base).name != datasets.DataConfig(**base).name
    with pytest.raises(ValueError, match="cv_fold=3: expected 0 <= cv_fold < cv_folds"):
        datasets.DataConfig(cv_folds=3, cv_fold=3, **base)
    with pytest.raises(ValueError, match="cv_folds=1"):
        datasets.DataConfig(cv_folds=1, **base)


def test_pathology_only_in_the_test_split_and_of_the_chosen_kind():
    cfg = datasets.DataConfig(num_subjects=10, slices_per_subject=1, pathology_fraction=1.0,
                              pathology_splits=("test",), pathology_kinds=("tumour",),
                              resolution_mm=4)
    split = datasets.subject_split(cfg)
    for sp, idx in split.items():
        for i in idx:
            vol = datasets.subject_volume(cfg, i)
            assert bool(vol["lesion"].any()) == (sp == "test"), (sp, i)
            if sp == "test":
                assert "tumour" in str(vol["_meta"]).lower()
    assert "pathology_splits" not in datasets.DataConfig().to_dict()  # old dataset names kept
    with pytest.raises(ValueError, match="unknown \\['tset'\\]"):
        datasets.DataConfig(pathology_splits=("tset",))
    with pytest.raises(ValueError, match="pathology_kinds"):
        datasets.DataConfig(pathology_kinds=("stroke",))
