"""The test-split report on hand-made arrays: per-map, per-tissue, lesion and ROI entries,
metrics.json, and NIfTI stacks of slice maps."""

import json

import nibabel as nib
import numpy as np
import pytest

from qmri_jax.evaluation import report


def _arrays():
    truth = np.full((2, 8, 8, 1), 1000.0)
    pred = truth.copy()
    wm = np.zeros((2, 8, 8), bool)
    wm[:, :, :4] = True
    pred[..., 0][wm] = 1100.0  # +10% in white matter, exact in grey matter
    mask = np.ones((2, 8, 8))
    lesion = np.zeros((2, 8, 8), bool)
    lesion[0, 0, 0] = True
    arrays = {"targets": truth, "mask": mask, "WM": wm, "GM": ~wm, "CSF": np.zeros_like(wm),
              "lesion": lesion, "subject": np.array([0, 1]), "images": np.zeros((2, 8, 8, 2))}
    return pred, arrays


def test_evaluate_maps_per_tissue_lesion_and_roi():
    pred, arrays = _arrays()
    out = report.evaluate_maps(pred, arrays, ("T1",))["T1"]
    assert out["units"] == "ms" and out["num_voxels"] == 128
    assert out["mean_abs_pct"] == pytest.approx(5.0)  # half the voxels at 10%
    assert out["by_tissue"]["WM"]["median_abs_pct"] == pytest.approx(10.0)
    assert out["by_tissue"]["GM"]["mae"] == pytest.approx(0.0)
    assert out["by_tissue"]["CSF"]["num_voxels"] == 0
    assert out["lesion"]["num_voxels"] == 1 and out["lesion"]["mae"] == pytest.approx(100.0)
    # ROI means per subject and tissue (WM: 1100 vs 1000, GM: exact) -> Bland-Altman
    assert sorted(out["roi"]["label"]) == ["sub0-GM", "sub0-WM", "sub1-GM", "sub1-WM"]
    assert out["roi"]["bias"] == pytest.approx(50.0)
    assert out["roi"]["paired_t"]["WM"]["n"] == 2 and np.isnan(out["roi"]["paired_t"]["GM"]["t"])
    whole = out["ssim_whole_image"]
    assert whole["n"] == 2 and 0 < whole["mean"] < 1 and whole["sd"] == pytest.approx(0, abs=1e-12)
    assert report.evaluate_maps(arrays["targets"], arrays, ("T1",))["T1"]["ssim_whole_image"][
        "mean"] == pytest.approx(1.0)
    # Eroded by one voxel in-plane: WM (columns 0-3 of 8 x 8) keeps rows 1-6 x columns 1-2.
    assert out["roi_eroded"]["bias"] == pytest.approx(50.0) and len(out["roi_eroded"]["label"]) == 4


def test_roi_paired_t_test_per_tissue():
    pred, arrays = _arrays()
    arrays["subject"] = np.array([0, 1, 2])
    pred, arrays = np.concatenate([pred, pred[:1]]), {k: (np.concatenate([v, v[:1]]) if k not in (
        "subject",) else v) for k, v in arrays.items()}
    pred[2, ..., 0][arrays["WM"][2]] = 1300.0  # WM +100, +100, +300 over three subjects
    out = report.evaluate_maps(pred, arrays, ("T1",))["T1"]["roi"]["paired_t"]["WM"]
    d = np.array([100.0, 100.0, 300.0])
    assert out["n"] == 3 and out["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(3)))


def test_deep_grey_matter_rois_are_reported_and_not_eroded():
    pred, arrays = _arrays()
    putamen = np.zeros((2, 8, 8), bool)
    putamen[:, 5:8, 5:8] = True  # 9 voxels per subject: below the 10-voxel minimum
    putamen[1, 4, 5] = True  # 10 in subject 1; one erosion would leave a single voxel
    arrays["putamen"] = putamen
    pred[..., 0][putamen] = 900.0  # -10% in the putamen
    out = report.evaluate_maps(pred, arrays, ("T1",))["T1"]
    assert out["by_tissue"]["putamen"]["median_abs_pct"] == pytest.approx(10.0)
    for key in ("roi", "roi_eroded"):
        i = out[key]["label"].index("sub1-putamen")
        assert "sub0-putamen" not in out[key]["label"]
        assert out[key]["measured"][i] == pytest.approx(900.0)
        assert out[key]["reference"][i] == pytest.approx(1000.0)
        assert "putamen" not in out[key]["paired_t"]  # one subject: nothing to test


def test_csf_dilated_by_one_voxel_is_left_out_per_slice():
    pred, arrays = _arrays()
    csf = np.zeros((2, 8, 8), bool)
    csf[0, 4, 6] = True  # one CSF voxel in slice 0, in grey matter (exact there)
    pred[0, 3:6, 5:8, 0] = 5000.0  # wrong in its 3x3 neighbourhood
    arrays["CSF"] = csf
    out = report.evaluate_maps(pred, arrays, ("T1",))["T1"]
    grown = report.dilate_in_plane(csf)
    assert grown[0].sum() == 5 and not grown[1].any()  # the voxel and its 4 neighbours, slice 0
    assert out["excluding_CSF"]["num_voxels"] == 127
    assert out["excluding_CSF_dilated"]["num_voxels"] == 123
    # The 4 corners of the 3x3 block stay in: 4000 ms off each, against 1100-1000 in WM.
    assert out["excluding_CSF_dilated"]["mae"] == pytest.approx((4 * 4000 + 64 * 100) / 123)
    per = out["excluding_CSF_dilated"]["per_sample"]["mae"]
    assert per["n"] == 2 and per["mean"] == pytest.approx(((4 * 4000 + 32 * 100) / 59 + 50) / 2)


def test_write_report_and_map_volumes(tmp_path):
    pred, arrays = _arrays()
    m = report.write_report(str(tmp_path), pred, arrays, ("T1",), figures=False,
                            extra={"note": "x"})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["note"] == "x" and on_disk["T1"]["mean_abs_pct"] == m["T1"]["mean_abs_pct"]
    report.write_map_volumes(str(tmp_path), {("T1", None): pred[..., 0],
                                             ("T1", "std"): np.ones((2, 8, 8))}, 4.0, "ddpm")
    img = nib.load(tmp_path / "ddpm_T1map.nii.gz")
    assert img.shape == (8, 8, 2)  # slices last
    np.testing.assert_allclose(img.affine, np.diag([4.0, 4.0, 4.0, 1.0]))
    np.testing.assert_allclose(img.get_fdata()[..., 0], pred[0, ..., 0])
    assert (tmp_path / "ddpm_desc-std_T1map.nii.gz").is_file()
