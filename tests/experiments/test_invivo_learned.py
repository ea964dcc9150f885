"""experiments.invivo_learned on the real in-vivo IR slice and 3D MTsat volumes (../shared/invivo;
skipped without it), with tiny models trained here on synthetic brains of the two protocols."""

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from experiments import invivo_learned
from qmri_jax import train
from qmri_jax.data import datasets
from tests.tiny import ddpm_config_tiny, split_arrays, unet_config_tiny

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "invivo"


def _tiny_workdirs(root):
    """A per-voxel DDPM (configs/ddpm.py:invivo_ir) and a U-Net (configs/unet.py:invivo_mtsat),
    each a few steps on 4 synthetic brains of its protocol."""
    ddpm = ddpm_config_tiny(3, preset="invivo_ir")
    unet = unet_config_tiny()
    preset = invivo_learned.preset_config("configs/unet.py", "invivo_mtsat")
    with unet.unlocked():
        unet.data.update(preset.data.to_dict())
        unet.targets, unet.target_scale = preset.targets, preset.target_scale
    out = {}
    for name, cfg, res, crop in (
            ("ddpm", ddpm, 4, (slice(None), slice(8, 40), slice(12, 44))),
            ("unet", unet, 2, (slice(None), slice(32, 64), slice(40, 72)))):
        with cfg.unlocked():
            cfg.eval.figures = False
        d = cfg.data
        dcfg = datasets.DataConfig(protocol=d.protocol, resolution_mm=res, num_subjects=4,
                                   slices_per_subject=2, snr=d.snr, k_spread=d.k_spread,
                                   normalisation=d.normalisation)
        wd = str(root / name)
        # stopped at the last step: checkpoints, no test-split evaluation (not needed here)
        train.train_and_evaluate(cfg, wd, stop_at=cfg.train.num_steps,
                                 data=split_arrays(dcfg, crop, tuple(cfg.targets)))
        out[name] = wd
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (DATA / "ir").is_dir() or not (DATA / "mtsat").is_dir():
        pytest.skip(f"{DATA}: in-vivo data not found (only CI and clones beside ../shared have it)")
    root = tmp_path_factory.mktemp("invivo_learned")
    wds = _tiny_workdirs(root)
    out = root / "out"
    assert invivo_learned.main(["--data", str(DATA), "--out", str(out), "--checkpoint",
                                wds["ddpm"], "--checkpoint", wds["unet"],
                                "--exact-voxels", "24"]) == 0
    return wds, out


def test_writes_maps_on_each_scan_grid_table_and_figure(run):
    _, out = run
    for series, name, folder in (("sub-01_IR", "sub-01_ir_desc-ddpm_T1map", "ir"),
                                 ("sub-01_PDw", "sub-01_mtsat_desc-unet_T1map", "mtsat")):
        ref = nib.load(DATA / folder / f"{series}.nii.gz")
        got = nib.load(out / "maps" / f"{name}.nii.gz")
        assert got.shape == ref.shape[:3]
        np.testing.assert_allclose(got.affine, ref.affine)
    res = json.loads((out / "results.json").read_text())
    for key in ("ir", "mtsat"):
        a = res[key]["agreement"]
        assert a["WM"]["voxels"] > 100 and a["GM"]["voxels"] > 100
        # The fits' tissue medians are the ones experiments.invivo reports for these scans.
        assert a["WM"]["fit_median_ms"] < a["GM"]["fit_median_ms"]
    assert 500 < res["ir"]["agreement"]["WM"]["fit_median_ms"] < 900
    ex = res["ir"]["exact"]
    assert ex["voxels"] == 24 and 0 <= ex["exact_mass_in_model_2sd"] <= 1
    # (a 3-step model's draws barely spread: its SD may round to 0 in float32 at the median voxel)
    assert np.isfinite(ex["sd_ratio_median"]) and ex["sd_ratio_median"] >= 0
    assert ex["prior"]["k"] == [0.5, 1.5] and 0 < ex["sigma_normalised"] < 0.2
    pm = res["ir"]["agreement_posterior_median"]  # the median of the draws, beside their mean
    assert pm["GM"]["voxels"] == res["ir"]["agreement"]["GM"]["voxels"]
    assert pm["GM"]["fit_median_ms"] == res["ir"]["agreement"]["GM"]["fit_median_ms"]
    table = (out / "table.md").read_text()
    assert "per-voxel DDPM" in table and "posterior median" in table and "U-Net" in table
    assert (out / "invivo_learned.png").stat().st_size > 10000


def test_a_workdir_of_another_protocol_is_refused(run, tmp_path):
    wds, _ = run
    wd = pathlib.Path(wds["ddpm"])
    prot = json.loads((wd / "protocol.json").read_text())
    prot["name"] = "nist_vir"
    bad = tmp_path / "w"
    bad.mkdir()
    (bad / "protocol.json").write_text(json.dumps(prot))
    with pytest.raises(SystemExit, match="needs one of"):
        invivo_learned.find_models([str(bad)], tmp_path, None)


def test_named_protocols_are_the_shipped_sidecars():
    """qmrlab_ir and qmrlab_mtsat (the presets' protocols) carry the sidecars' TR / TI / flip."""
    from qmri_jax.physics.protocol import get_protocol
    if not (DATA / "ir").is_dir():
        pytest.skip(f"{DATA}: in-vivo data not found")
    ir = json.loads((DATA / "ir" / "sub-01_IR.json").read_text())
    got = get_protocol("qmrlab_ir").to_dict()["images"]
    assert [im["ti_ms"] for im in got] == [float(t) for t in ir["InversionTime_ms"]]
    assert {im["tr_ms"] for im in got} == {float(ir["RepetitionTime_ms"])}
    got = get_protocol("qmrlab_mtsat").to_dict()["images"]
    for im, name in zip(got, ("PDw", "T1w")):
        side = json.loads((DATA / "mtsat" / f"sub-01_{name}.json").read_text())
        assert (im["name"], im["tr_ms"], im["flip_deg"]) == (
            name, float(side["RepetitionTime_ms"]), float(side["FlipAngle_deg"]))
