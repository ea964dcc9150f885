"""Prediction on files with any task: input checks, sliding windows, NIfTI maps of a regression
workdir and posterior mean / std maps of a DDPM workdir (on the real phantom's DICOMs)."""

import os

import jax
import nibabel as nib
import numpy as np
import pytest

from qmri_jax import predict, train
from qmri_jax.physics.protocol import get_protocol
from tests.tiny import ddpm_config_tiny, four_contrast_data, unet_config_tiny as tiny_config


@pytest.fixture(scope="module")
def tiny_data():
    return four_contrast_data()


def test_sliding_window_fusion_reproduces_a_local_function():
    vol = np.random.default_rng(0).uniform(size=(20, 18, 13, 2)).astype(np.float32)
    out = predict.sliding_window_predict(lambda x: 2.0 * x[..., :1] + x[..., 1:], vol, (8, 8, 8))
    np.testing.assert_allclose(out[..., 0], 2 * vol[..., 0] + vol[..., 1], rtol=1e-5)


def test_predict_refuses_wrong_contrasts_and_protocol(tmp_path):
    trained = get_protocol("four_contrast_brain").to_dict()
    with pytest.raises(ValueError, match="3 contrasts given, but the model was trained on 4"):
        predict.check_protocol(trained, None, 3, "a.nii.gz")
    other = get_protocol("four_contrast_brain").to_dict()
    other["images"][1]["te_ms"] = 80.0
    from qmri_jax.physics.protocol import Protocol
    with pytest.raises(ValueError, match="te_ms=80"):
        predict.check_protocol(trained, Protocol.from_dict(other), 4, "dicom/")
    predict.check_protocol(trained, Protocol.from_dict(other), 4, "dicom/", allow_mismatch=True)


def test_predict_files_end_to_end(tiny_data, tmp_path):
    import nibabel as nib
    cfg = tiny_config(num_steps=2)
    wd = str(tmp_path / "w")
    train.train_and_evaluate(cfg, wd, data=tiny_data)
    vol = np.random.default_rng(0).uniform(0, 1, (20, 24, 3, 4)).astype(np.float32)
    files = []
    for c in range(4):
        f = tmp_path / f"c{c}.nii.gz"
        nib.save(nib.Nifti1Image(vol[..., c], np.diag([2.0, 2.0, 2.0, 1.0])), f)
        files.append(str(f))
    with cfg.unlocked():
        cfg.predict.inputs = ",".join(files[:3])
    with pytest.raises(ValueError, match="3 contrasts given"):
        predict.predict_files(cfg, wd)
    with cfg.unlocked():
        cfg.predict.inputs = ",".join(files)
        cfg.predict.protocol = "ir_fse_7ti"
    with pytest.raises(ValueError):
        predict.predict_files(cfg, wd)
    with cfg.unlocked():
        cfg.predict.protocol = ""
    out = predict.predict_files(cfg, wd)
    t1 = nib.load(os.path.join(out, "pred_T1map.nii.gz"))
    assert t1.shape == (20, 24, 3)
    np.testing.assert_allclose(t1.affine, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.fixture(scope="module")
def ddpm_workdir(tmp_path_factory):
    """A tiny workdir of the main job's default (the per-voxel DDPM around the fit, re-simulated
    voxels), stopped after 2 of 3 steps (checkpoints, no end-of-training evaluation)."""
    from tests.tiny import vir_data
    wd = str(tmp_path_factory.mktemp("ddpm") / "w")
    cfg = ddpm_config_tiny(3, preset="")
    assert cfg.ddpm.network == "voxel" and cfg.ddpm.voxel_resimulate > 0
    with cfg.unlocked():
        cfg.eval.figures = False
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        _, metrics = train.train_and_evaluate(cfg, wd, stop_at=2, data=vir_data())
        assert metrics is None and os.listdir(os.path.join(wd, "checkpoints_best"))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    return cfg, wd


def test_predict_files_on_a_ddpm_workdir_writes_posterior_mean_and_std(ddpm_workdir, nist_dir,
                                                                        tmp_path):
    """--mode=predict on a DDPM workdir with the phantom's VIR DICOM folder (one slice, 10 TIs):
    posterior mean and std maps of every target on the input grid, zero outside the mask."""
    cfg, wd = ddpm_workdir
    with cfg.unlocked():
        cfg.predict.inputs = str(nist_dir / "dicom" / "vir")
        cfg.predict.output = str(tmp_path / "out")
    out = predict.predict_files(cfg, wd)
    from qmri_jax.io.dicom import read_dicom_series
    vir = read_dicom_series(str(nist_dir / "dicom" / "vir"))
    mean = nib.load(os.path.join(out, "pred_T1map.nii.gz"))
    std = nib.load(os.path.join(out, "pred_desc-std_T1map.nii.gz"))
    assert mean.shape == std.shape == vir.images.shape[:3]
    np.testing.assert_allclose(mean.affine, vir.affine)
    m, s = mean.get_fdata(), std.get_fdata()
    inside = m > 0
    assert 0.05 < inside.mean() < 0.9  # the phantom's disc, not the background
    assert np.all(np.isfinite(m)) and np.all(s >= 0) and float(s[inside].max()) > 0
    assert np.all(s[~inside] == 0)
    for name in ("PD", "desc-k"):  # every target, with its std
        assert any(f.startswith(f"pred_{name}") for f in os.listdir(out)), os.listdir(out)
    assert os.path.isfile(os.path.join(out, "pred_desc-std_PDmap.nii.gz"))


def test_trained_ddpm_applies_to_real_phantom_scans(ddpm_workdir, nist_dir, tmp_path):
    """experiments/nist_phantom.py --checkpoint: the DDPM workdir applies to the real VIR DICOMs
    through the task's predict, with a posterior std inside the spheres; the scan's clipped
    samples reach the model marked invalid (the main job's model takes the validity mask)."""
    from experiments.phantom_learned import learned_t1
    from qmri_jax.io.dicom import read_dicom_series
    _, wd = ddpm_workdir
    vir = read_dicom_series(str(nist_dir / "dicom" / "vir"), kind="ir", name="vir")
    labels = np.asarray(np.load(nist_dir / "rois.npz")["t1_labels"]).T
    assert vir.n_clipped > 0
    out = learned_t1(wd, vir, labels > 0, tmp_path)
    assert out["T1"].shape == labels.shape and "T1_std" in out
    assert "clipped samples marked invalid" in out["kind"], out["kind"]
    # the per-voxel model takes the scan's own voxels (no blocks mixing a sphere with its edge)
    pixel = float(np.linalg.norm(vir.affine[:3, 0]))
    assert f"at {pixel:.1f} mm (the mask's voxels only)" in out["kind"], out["kind"]
    inside = labels > 0
    assert np.all(np.isfinite(out["T1"][inside])) and np.all(out["T1"][inside] > 0)
    assert np.all(np.isnan(out["T1"][~inside]))
