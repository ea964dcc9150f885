"""Sweep definitions: axis products, deterministic names, overrides as the command line parses
them, checks of bad sweeps, the shipped sweep files."""

import os

import numpy as np
import pytest
from ml_collections import config_flags

from qmri_jax.sweeps import Sweep, explicit, folds, grid, load_sweep, repeats, values, zip_axes
from qmri_jax.sweeps.spec import format_value

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_product_of_axes_in_order_with_points_and_repeats():
    s = Sweep(name="s", config="configs/unet.py",
              axes=[grid({"model.name": ["unet", "uresnet"], "train.learning_rate": [1e-3, 1e-4]}),
                    repeats(3)], fixed={"train.num_steps": 10})
    trials = s.trials()
    assert len(trials) == 2 * 2 * 3
    assert trials[0].name == "name=unet_learning_rate=0.001_seed=0"
    assert trials[-1].name == "name=uresnet_learning_rate=0.0001_seed=2"
    assert trials[4].point == {"model.name": "unet", "train.learning_rate": 1e-4}
    assert trials[4].repeat == {"seed": 1}
    assert trials[4].overrides == {"train.num_steps": 10, "model.name": "unet",
                                   "train.learning_rate": 1e-4, "seed": 1}
    assert [t.name for t in s.trials()] == [t.name for t in trials]  # deterministic
    assert len({t.name for t in trials}) == len(trials)


def test_zip_values_explicit_and_folds():
    z = zip_axes({"model.name": ["unet", "resnet"], "model.features": [(4, 8), 16]})
    assert z.points == ({"model.name": "unet", "model.features": (4, 8)},
                        {"model.name": "resnet", "model.features": 16})
    with pytest.raises(ValueError, match="differ in length"):
        zip_axes({"a": [1, 2], "b": [1]})
    s = Sweep(name="cv", config="c.py", axes=[values("train.loss", ["mae"]),
                                               explicit([{"data.snr": 30.0}, {"data.snr": 50.0}]),
                                               folds(3)])
    trials = s.trials()
    assert len(trials) == 6
    assert trials[0].repeat == {"data.cv_folds": 3, "data.cv_fold": 0}
    assert trials[0].name == "loss=mae_snr=30_cv_folds=3_cv_fold=0"
    # Same last component twice: the whole key names it.
    s2 = Sweep(name="x", config="c.py", axes=[grid({"data.seed": [1], "seed": [2]})])
    assert s2.trials()[0].name == "data.seed=1_seed=2"


def test_bad_sweeps_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="is on axes 0 and 1"):
        Sweep(name="s", config="c.py", axes=[values("seed", [0]), repeats(2)])
    with pytest.raises(ValueError, match="both fixed and on axis"):
        Sweep(name="s", config="c.py", axes=[repeats(2)], fixed={"seed": 3})
    with pytest.raises(ValueError, match="not a key of a point axis"):
        Sweep(name="s", config="c.py", axes=[repeats(2)], compare="seed")
    with pytest.raises(ValueError, match="sweep name"):
        Sweep(name="a b", config="c.py", axes=[repeats(1)])
    with pytest.raises(ValueError, match="expected k >= 2"):
        folds(1)


def test_values_are_formatted_as_ml_collections_parses_them(tmp_path, monkeypatch):
    from absl import flags

    path = tmp_path / "c.py"
    path.write_text("import ml_collections\n\ndef get_config():\n    return "
                    "ml_collections.ConfigDict({'f': (16, 32), 'one': (4,), 'lr': 1e-3, "
                    "'b': False, 's': 'mae', 'n': 3, 'names': ()})\n")
    new = {"f": (4, 8), "one": (7,), "lr": 1e-4, "b": True, "s": "nmse", "n": 5,
           "names": ("T1w", "T2w")}
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("cfg", flag_values=fv)
    argv = ["prog", f"--cfg={path}", *(f"--cfg.{k}={format_value(v)}" for k, v in new.items())]
    monkeypatch.setattr("sys.argv", argv)  # ml_collections reads the overrides from sys.argv
    fv(argv)
    assert fv.cfg.to_dict() == new
    assert format_value((4, 8)) == "(4,8)" and format_value((4,)) == "(4,)"


def test_shipped_thesis_grid_full_and_cpu():
    full, path = load_sweep(os.path.join(REPO, "configs/sweeps/thesis_grid.py"))
    assert len(full.trials()) == 3 * 6 * 3 * 3
    assert full.resolve_config(path).endswith("configs/unet.py:paper")
    cpu, _ = load_sweep(os.path.join(REPO, "configs/sweeps/thesis_grid.py:cpu"))
    trials = cpu.trials()
    assert len(trials) == 12 and {t.point["model.name"] for t in trials} == {
        "unet", "uresnet", "uattennet"}
    with pytest.raises(ValueError, match="unknown preset"):
        load_sweep(os.path.join(REPO, "configs/sweeps/thesis_grid.py:gpu"))


def test_shipped_thesis_inputs_names_and_overrides():
    cpu, _ = load_sweep(os.path.join(REPO, "configs/sweeps/thesis_inputs.py:cpu"))
    trials = cpu.trials()
    assert [t.name for t in trials[::2]] == ["inputs=T1w+T2w+PDw+FLAIR_seed=0",
                                             "inputs=T1w+T2w+PDw_seed=0", "inputs=T1w+T2w_seed=0",
                                             "inputs=T1w_seed=0"]
    assert format_value(trials[-1].overrides["data.inputs"]) == "('T1w',)"


def test_shipped_qiu_cv_folds_and_faithful_config():
    from configs import unet_qiu

    cpu, path = load_sweep(os.path.join(REPO, "configs/sweeps/qiu_cv.py:cpu"))
    trials = cpu.trials()
    assert [t.overrides["data.cv_fold"] for t in trials] == list(range(6))
    assert all(t.overrides["data.cv_folds"] == 6 for t in trials)
    inputs, _ = load_sweep(os.path.join(REPO, "configs/sweeps/qiu_cv.py:inputs"))
    assert len(inputs.trials()) == 4 * 6 and inputs.compare == "data.inputs"
    for preset in ("qiu", "qiu_cpu"):
        cfg = unet_qiu.get_config(preset)
        assert len(cfg.model.features) == 5 and cfg.model.up_kernel == 2  # 4 down-samplings
        assert cfg.data.normalisation == "p95_slice" and tuple(cfg.target_scale) == (3000, 3000)
        assert tuple(cfg.targets) == ("T1", "T2")
        # Flat for 60% of the steps, then exp(-0.02) per epoch: exp(-4) over the last 200 epochs.
        n = cfg.train.num_steps
        assert cfg.train.decay_after == n - 2 * n // 5
        assert cfg.train.decay_rate ** (n - cfg.train.decay_after) == pytest.approx(np.exp(-4.0))
    assert unet_qiu.get_config("qiu").train.learning_rate == 1e-4
