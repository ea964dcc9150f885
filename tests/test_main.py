"""The main job and the configs."""

import json
import subprocess
import sys

import pytest

from configs import fit as fit_config
from qmri_jax import fit_job


def test_fit_job_recovers_phantom(tmp_path):
    config = fit_config.get_config()
    config.phantom.size = 64
    metrics = fit_job.run(config, tmp_path)
    for name in ("config.json", "metrics.json", "maps.png", "maps/phantom_T1map.nii.gz",
                 "maps/phantom_desc-crlbsd_T1map.nii.gz"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["voxels"] == metrics["voxels"] > 0
    # sigma estimated from the background matches the simulated noise.
    assert abs(saved["sigma_used"] / saved["sigma_true"] - 1) < 0.1
    for row in saved["spheres"][:10]:  # 86-1884 ms, the protocol's fittable range
        assert abs(row["error_percent"]) < 3 * 100 * row["crlb_sd_ms"] / row["true_T1_ms"] + 1.0, row


def test_config_presets():
    assert fit_config.get_config("large").phantom.size == 256
    with pytest.raises(ValueError, match="unknown preset"):
        fit_config.get_config("nope")


def test_main_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "qmri_jax.main", "--config=configs/fit.py",
                          f"--workdir={tmp_path}", "--config.phantom.size=40"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "outputs:" in out.stdout and (tmp_path / "metrics.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "qmri_jax.main", "--config=configs/fit.py",
                          f"--workdir={tmp_path}", "--mode=nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "available modes" in bad.stderr
