"""DICOM/NIfTI I/O and the fit command line: geometry, clipping, sidecars, bad input."""

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from qmri_jax import fit as fit_cli
from qmri_jax.io import DicomError, read_dicom_series, read_nifti_series, write_nifti
from qmri_jax.physics import Protocol, get_protocol, simulate


def _copy_vir(nist_dir, dst, n=None):
    folders = sorted((nist_dir / "dicom" / "vir").iterdir())[:n]
    for f in folders:
        shutil.copytree(f, dst / f.name)
    return dst


def test_read_vir_series(nist_dir):
    s = read_dicom_series(sorted((nist_dir / "dicom" / "vir").iterdir()))
    assert s.images.shape == (256, 256, 1, 10)
    np.testing.assert_array_equal(s.protocol.ti_ms, [35, 75, 100, 125, 150, 250, 1000, 1500, 2000, 3000])
    np.testing.assert_allclose(s.protocol.tr_ms, 4500)
    np.testing.assert_allclose(s.protocol.te_ms, 6.9)
    assert s.protocol.kinds[0] == "ir" and s.bits_stored == 12
    # Clipped samples are flagged exactly where the stored value hits 4095.
    assert s.n_clipped > 0
    np.testing.assert_array_equal(~s.valid, s.images >= 4095)
    # In-plane voxel size 0.977 mm, slice 6 mm, orthogonal axes.
    np.testing.assert_allclose(np.linalg.norm(s.affine[:3, :3], axis=0), [0.9766, 0.9766, 6.0], atol=2e-3)


def test_mixed_series_is_refused(nist_dir, tmp_path):
    _copy_vir(nist_dir, tmp_path, 2)
    vfa = sorted((nist_dir / "dicom" / "vfa").iterdir())[0]
    shutil.copy(next(p for p in vfa.iterdir() if p.name.startswith("I")), tmp_path / "stray_vfa")
    with pytest.raises(DicomError, match="mixed series"):
        read_dicom_series([tmp_path])


def test_missing_ti_names_the_file(nist_dir, tmp_path):
    _copy_vir(nist_dir, tmp_path, 3)
    victim = next(sorted(tmp_path.iterdir())[1].glob("I*"))
    ds = pydicom.dcmread(victim)
    del ds.InversionTime
    ds.save_as(victim)
    with pytest.raises(DicomError, match=f"{victim.name}: missing InversionTime"):
        read_dicom_series([tmp_path])


def test_no_dicom_at_all(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DicomError, match="no DICOM images found"):
        read_dicom_series([tmp_path])


def _write_ir_niftis(tmp_path, shape=(12, 10, 2)):
    prot = get_protocol("nist_vir")
    t1 = np.linspace(200, 1500, np.prod(shape)).reshape(shape)
    imgs = np.asarray(simulate({"PD": 1000.0, "T1": t1, "T2": 1e6, "k": 0.97}, prot))
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    files = []
    for i in range(len(prot)):
        f = tmp_path / f"ti{i}.nii.gz"
        nib.save(nib.Nifti1Image(imgs[..., i].astype(np.float32), affine), f)
        files.append(str(f))
    return files, prot, t1, affine


def test_nifti_cli_end_to_end_keeps_affine(tmp_path):
    files, prot, t1, affine = _write_ir_niftis(tmp_path)
    out = tmp_path / "out"
    ti = [str(int(v)) for v in np.asarray(prot.ti_ms)]
    rc = fit_cli.main(["--model", "ir", "--nifti", *files, "--ti", *ti, "--tr", "4500",
                       "--loss", "gaussian", "--mask-fraction", "0.0", "--out", str(out)])
    assert rc == 0
    img = nib.load(out / "fit_T1map.nii.gz")
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), t1, rtol=1e-3)
    side = json.loads((out / "fit_T1map.json").read_text())
    assert side["Units"] == "ms" and side["Model"] == "ir"
    assert side["Protocol"]["images"][0]["ti_ms"] == 35.0
    for name in ("fit_desc-crlbsd_T1map.nii.gz", "fit_desc-converged_mask.nii.gz", "fit_maps.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*")), "temporary files left behind"


def test_nifti_shape_mismatch_and_nan(tmp_path, capsys):
    files, prot, _, affine = _write_ir_niftis(tmp_path)
    nib.save(nib.Nifti1Image(np.ones((5, 5, 2), np.float32), affine), files[3])
    with pytest.raises(ValueError, match=r"NIfTI shapes disagree: .*ti3.nii.gz is \(5, 5, 2\)"):
        read_nifti_series(files, prot)
    rc = fit_cli.main(["--model", "ir", "--nifti", *files, "--ti", *["100"] * 10, "--tr", "4500",
                       "--out", str(tmp_path / "o")])
    assert rc == 2 and "NIfTI shapes disagree" in capsys.readouterr().err
    files, prot, _, affine = _write_ir_niftis(tmp_path)
    bad = np.ones((12, 10, 2), np.float32)
    bad[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(bad, affine), files[0])
    with pytest.raises(ValueError, match="ti0.nii.gz: 1 voxels are NaN/Inf"):
        read_nifti_series(files, prot)


def test_nifti_count_must_match_protocol(tmp_path):
    files, prot, _, _ = _write_ir_niftis(tmp_path)
    with pytest.raises(ValueError, match="hold 9 images but the protocol has 10"):
        read_nifti_series(files[:9], prot)
    with pytest.raises(SystemExit):
        fit_cli.main(["--model", "ir", "--nifti", *files, "--out", str(tmp_path / "o")])  # no --ti


def test_nifti_ir_needs_tr(tmp_path, capsys):
    """The ir model's k depends on TR: without --tr the CLI refuses (it used to assume 10000 ms)."""
    files, _, _, _ = _write_ir_niftis(tmp_path)
    with pytest.raises(SystemExit):
        fit_cli.main(["--model", "ir", "--nifti", *files, "--ti", *["100"] * 10,
                      "--out", str(tmp_path / "o")])
    assert "needs --tr" in capsys.readouterr().err


def test_write_nifti_is_atomic(tmp_path):
    path = tmp_path / "a.nii.gz"
    write_nifti(path, np.zeros((3, 3, 3), np.float32), np.eye(4))
    with pytest.raises(Exception):
        write_nifti(path, np.zeros((3, 3, 3), dtype=object), np.eye(4))
    assert nib.load(path).shape == (3, 3, 3)  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_protocol_create_broadcasts():
    p = Protocol.create("ir", tr_ms=4500, ti_ms=[10, 20, 30])
    assert len(p) == 3 and p.kinds == ("ir",) * 3
