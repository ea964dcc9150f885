"""experiments.diffusor_table: the qMRI Diffusor paper's 14-sphere phantom table on the real NIST
VIR scan (../shared/nist_phantom/A; skipped without it), from tiny models of the ``:diffusor``
presets trained here on the phantom's protocol with the paper's targets T1 / PD / B."""

import json
import pathlib

import numpy as np
import pytest

from configs import resnet as resnet_config
from experiments import diffusor_table
from qmri_jax import train
from qmri_jax.data import datasets
from tests.tiny import ddpm_config_tiny, split_arrays

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "nist_phantom" / "A"


def test_roi_stats_and_bias_summary_closed_form():
    labels = np.array([[1, 1, 2], [2, 0, 3]])
    values = np.array([[100.0, 110.0, 50.0], [70.0, 999.0, np.nan]])
    stats = diffusor_table.roi_stats(values, labels)
    assert stats[1] == (105.0, 5.0) and stats[2] == (60.0, 10.0)
    assert np.isnan(stats[3][0])  # no finite voxel: NaN, not 0
    ref = {("T1", 1): {"T1": 100.0}, ("T1", 2): {"T1": 50.0}, ("T1", 3): {"T1": 10.0}}
    s = diffusor_table.bias_summary(stats, ref, spheres=(1, 2, 3))
    np.testing.assert_allclose(s["bias_percent"][:2], [5.0, 20.0])
    assert s["max_abs_bias_percent"] == pytest.approx(20.0)
    assert s["median_abs_bias_percent"] == pytest.approx(12.5)
    assert s["missing"] == 1


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    if not (DATA / "dicom" / "vir").is_dir():
        pytest.skip(f"{DATA}: NIST phantom data not found (only CI and clones beside ../shared)")
    root = tmp_path_factory.mktemp("diffusor")
    ddpm = ddpm_config_tiny(3, preset="diffusor")
    with ddpm.unlocked():
        ddpm.ddpm.attention_levels = ()
        ddpm.ddpm.exact_voxels = 0
    resnet = resnet_config.get_config("diffusor")
    with resnet.unlocked():
        resnet.model.update(features=8, num_blocks=1)
        resnet.train.update(batch_size=4, num_steps=3, log_every=1, eval_every=2,
                            checkpoint_every=2, warmup_steps=1, progress_bar=False)
    out = {}
    for name, cfg in (("ddpm", ddpm), ("resnet", resnet)):
        with cfg.unlocked():
            cfg.data.protocol = "nist_vir"  # the phantom's scan, as the experiment's README says
            cfg.data.resolution_mm = 4  # the data below; the phantom is mapped at it
            cfg.eval.figures = False
        d = cfg.data
        dcfg = datasets.DataConfig(protocol=d.protocol, resolution_mm=4, num_subjects=4,
                                   slices_per_subject=2, snr=d.snr, k_spread=d.k_spread,
                                   normalisation=d.normalisation)
        wd = root / name
        # stopped at the last step: checkpoints, no test-split evaluation (not needed here)
        train.train_and_evaluate(cfg, str(wd), stop_at=cfg.train.num_steps, data=split_arrays(
            dcfg, (slice(None), slice(8, 40), slice(12, 44)), tuple(cfg.targets)))
        out[name] = wd
    return out


def test_table_has_all_14_spheres_for_each_method_beside_the_fit(workdirs, tmp_path):
    out = tmp_path / "out"
    assert diffusor_table.main(["--data", str(DATA), "--out", str(out), "--resnet",
                                str(workdirs["resnet"]), "--ddpm", str(workdirs["ddpm"])]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["sphere"] for r in res["spheres"]] == list(range(1, 15))
    for r in res["spheres"]:
        assert r["reference_unc_ms"] > 0 and r["judged"] == (r["sphere"] <= 10)
        for m in ("fit", "resnet", "ddpm"):
            assert np.isfinite(r[m]["mean_ms"]) and r[m]["sd_ms"] >= 0
        assert r["ddpm"]["posterior_sd_ms"] >= 0
    # The fit column is the phantom experiment's fit: within 4% on spheres 1-10.
    assert res["summary"]["fit"]["max_abs_bias_percent"] < 4.0
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| sphere | reference T1 (ms) | voxelwise fit | ResNet | DDPM")
    assert len(table) == 2 + 14 + 1 and table[-1].startswith("| max / median")
    assert (out / "diffusor_maps.png").stat().st_size > 10000
    with pytest.raises(SystemExit, match="at least one"):
        diffusor_table.run(DATA, tmp_path / "none", {})
