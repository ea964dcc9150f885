"""Real-scan validation on the NIST/ISMRM phantom (needs ../shared; skips with a reason otherwise)."""

import json
import re

import numpy as np
import pytest

from experiments import nist_phantom


@pytest.fixture(scope="module")
def run_a(nist_dir, tmp_path_factory):
    """Set A analysed once for the tests of this module: (results, output folder)."""
    out = tmp_path_factory.mktemp("phantom_a")
    return nist_phantom.run(nist_dir, out), out


def _sessions(nist_dir):
    """Every scan session of the same layout under ../shared/nist_phantom (A, and any added)."""
    return [d for d in sorted(nist_dir.parent.iterdir())
            if (d / "dicom" / "vir").is_dir() and (d / "rois.npz").is_file()]


def test_phantom_t1_and_t2_accuracy(nist_dir, tmp_path, run_a):
    sessions = _sessions(nist_dir)
    assert nist_dir in sessions
    for session in sessions:
        if session == nist_dir:
            _check_session(*run_a)
        else:
            _check_session(nist_phantom.run(session, tmp_path / session.name), tmp_path / session.name)


def _check_session(res, tmp_path):
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"array", "index", "reference_ms", "estimate_ms", "bias_percent"} <= set(saved["spheres"][0])
    t1 = {s["index"]: s for s in saved["spheres"] if s["array"] == "T1"}
    t2 = {s["index"]: s for s in saved["spheres"] if s["array"] == "T2"}
    assert sorted(t1) == list(range(1, 15)) and sorted(t2) == list(range(1, 15))
    for k in range(1, 11):  # 86-1884 ms
        assert abs(t1[k]["bias_percent"]) <= 4.0, t1[k]
    # T2 (EPG + smooth B1) at 20 C: spheres 2-12 within 6% except sphere 5, whose certified
    # value does not follow its own MnCl2 concentration (docs/results.md); it reads -22%.
    for k in range(2, 13):
        assert abs(t2[k]["bias_percent"]) <= (25.0 if k == 5 else 6.0), t2[k]
        assert 0.5 < t2[k]["b1"] < 1.5 and np.isfinite(t2[k]["mono_offset_bias_percent"])
    # The mono-exponential fits read high (stimulated echoes): the EPG model is what removes it.
    mono = [t2[k]["mono_offset_bias_percent"] for k in range(6, 12)]
    assert min(mono) > 8.0
    temps = saved["temperature_sensitivity"]
    assert temps["best_temperature_C"] in (18.0, 20.0) and len(temps["by_temperature"]) == 6
    # Clipped samples were found and excluded (spheres 1-4 at early TIs).
    assert sum(t1[k]["clipped_samples_excluded"] for k in range(1, 5)) > 0
    assert res["summary"]["t1_max_abs_bias_percent_spheres_1_10"] <= 4.0
    assert (tmp_path / "maps" / "vir_T1map.nii.gz").is_file()
    assert (tmp_path / "maps" / "vir_T1map.json").is_file()
    assert (tmp_path / "maps" / "mse_B1map.nii.gz").is_file()
    assert (tmp_path / "t1_map.png").stat().st_size > 10_000
    # The one-page report: a single-page PDF beside results.json, ROI SDs in the JSON.
    pdf = (tmp_path / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) == 1
    assert len(pdf) > 20_000 and all(np.isfinite(t1[k]["roi_sd_ms"]) for k in range(1, 11))


def test_temperature_picks_reference_row(nist_dir):
    r20 = nist_phantom.load_reference(nist_dir, None)
    r16 = nist_phantom.load_reference(nist_dir, 16.0)
    assert r16[("T1", 1)]["T1"] == 1766.68 and r20[("T1", 1)]["T1"] == 1883.97
    # MnCl2 T2 spheres change strongly with temperature.
    assert r16[("T2", 5)]["T2"] < r20[("T2", 5)]["T2"]


def test_reads_the_same_from_another_folder_of_the_same_layout(nist_dir, tmp_path):
    """Series folders renamed (in reverse order) and files renamed: the series, their order and
    timing come from the headers, not from names, so the analysis (deterministic in its inputs)
    sees exactly what it sees in set A."""
    import glob
    import shutil

    from qmri_jax.io import read_dicom_series

    session = tmp_path / "B"
    for kind in ("vir", "mse"):
        for i, folder in enumerate(sorted((nist_dir / "dicom" / kind).iterdir())[::-1]):
            dst = session / "dicom" / kind / f"series{i:02d}"
            dst.mkdir(parents=True)
            for j, f in enumerate(sorted(folder.iterdir())):
                shutil.copy(f, dst / f"img{j:03d}.dcm")
    for kind, seq in (("vir", "ir"), ("mse", "se")):
        a, b = (read_dicom_series(sorted(glob.glob(str(d / "dicom" / kind / "*"))), kind=seq,
                                  name=kind) for d in (nist_dir, session))
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.valid, b.valid)
        np.testing.assert_array_equal(a.affine, b.affine)
        for field in ("tr_ms", "te_ms", "ti_ms", "flip_deg"):
            np.testing.assert_array_equal(getattr(a.protocol, field), getattr(b.protocol, field))
        assert a.protocol.kinds == b.protocol.kinds


def test_resimulated_probe_puts_the_reference_t1_into_the_sphere_rois(nist_dir):
    # experiments.phantom_domain_gap's "re-simulated, ref T1" probe: a voxelwise fit of what it
    # hands the model gives back each sphere's certified T1; voxels outside the ROIs are untouched.
    from experiments import phantom_domain_gap as gap
    from qmri_jax.data.acquisition import normalise_images
    from qmri_jax.evaluation import roi_medians
    from qmri_jax.fitting import SolverOptions, fit_images
    from qmri_jax.io import read_dicom_series

    ref = nist_phantom.load_reference(nist_dir, None)
    labels = np.asarray(np.load(nist_dir / "rois.npz")["t1_labels"]).T
    vir = read_dicom_series(str(nist_dir / "dicom" / "vir"), kind="ir", name="vir")
    spheres = list(range(1, 11))
    reference = np.array([ref[("T1", k)]["T1"] for k in spheres])
    raw = vir.images[:, :, 0].astype(np.float32)
    scan = normalise_images(raw, labels > 0, "p95")
    out = gap.resimulate_scan(vir, labels, spheres, reference, True)(scan)
    np.testing.assert_array_equal(out[labels == 0], scan[labels == 0])
    sel = np.isin(labels, spheres)
    fit = fit_images(out, vir.protocol, "ir", mask=sel,
                     options=SolverOptions(loss="gaussian", max_iter=30))
    est = roi_medians(fit.maps["T1"], labels)
    for k, r in zip(spheres, reference):
        assert abs(est[k] - r) <= 0.01 * r, (k, est[k], r)


def test_brighter_scan_clipped_at_4095_is_marked_and_the_fit_reads_what_is_left(nist_dir):
    """--vir-scale: set A's VIR x 1.5 and x 2, clipped at the 12-bit maximum, the new clips marked
    invalid. The voxelwise fit, which leaves them out, stays near the reference at x 1.5 (max
    |bias| 5.0% on spheres 1-10, against 2.9% on the scan itself; 3 of 10 samples left in
    spheres 1-4); at x 2 spheres 2-5 keep 1-3 samples per voxel, too few for PD, T1 and k, and
    the fit flags them not converged (no ROI value) instead of returning a number."""
    from qmri_jax.evaluation import roi_medians
    from qmri_jax.io import read_dicom_series

    vir = read_dicom_series(str(nist_dir / "dicom" / "vir"), kind="ir", name="vir")
    labels = np.asarray(np.load(nist_dir / "rois.npz")["t1_labels"]).T
    ref = nist_phantom.load_reference(nist_dir, None)
    bias = {}
    for factor in (1.5, 2.0):
        scaled = nist_phantom.scale_and_clip(vir, factor)
        top = 2.0 ** vir.bits_stored - 1
        assert scaled.images.max() == top
        expect = vir.valid & (vir.images * np.float32(factor) < top)
        np.testing.assert_array_equal(scaled.valid, expect)
        assert scaled.n_clipped > 3 * vir.n_clipped
        fit = nist_phantom.fit_vir(scaled, labels > 0)
        est = roi_medians(fit.maps["T1"], labels, keep=fit.converged)
        bias[factor] = np.array([100 * (est[k] / ref[("T1", k)]["T1"] - 1)
                                 for k in nist_phantom.T1_JUDGED])
    assert np.nanmax(np.abs(bias[1.5])) < 5.5, np.round(bias[1.5], 1)
    assert np.all(np.isnan(bias[2.0][1:5])), np.round(bias[2.0], 1)
    assert np.nanmax(np.abs(bias[2.0])) < 8.0, np.round(bias[2.0], 1)
    with pytest.raises(SystemExit, match="vir-scale"):
        nist_phantom.scale_and_clip(vir, 0.0)


def test_block_mean_averages_the_valid_voxels_and_drops_mostly_clipped_blocks():
    from experiments.phantom_learned import block_mean

    x = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    valid = np.ones_like(x, bool)
    valid[0, 0, 0] = valid[0, 1, 0] = valid[1, 0, 0] = False  # 3 of the first block's 4
    valid[2, 2, 1] = False  # 1 of the last block's 4
    plain = block_mean(x, None, 2)
    np.testing.assert_allclose(plain[0, 0], x[:2, :2].mean(axis=(0, 1)))
    out = block_mean(x, valid, 2)
    assert np.isnan(out[0, 0, 0]) and out[0, 0, 1] == plain[0, 0, 1]
    np.testing.assert_allclose(out[1, 1, 1], np.mean([x[2, 3, 1], x[3, 2, 1], x[3, 3, 1]]))
    np.testing.assert_array_equal(np.isnan(block_mean(x, valid, 1)), ~valid)
