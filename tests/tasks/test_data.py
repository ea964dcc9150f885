"""The tasks' data: ``config.data.inputs`` picks images by name, in the given order, and the
protocol a workdir records (``protocol.json``) is that subset."""

import numpy as np
import pytest

from configs import unet as unet_config
from qmri_jax.physics.protocol import get_protocol
from qmri_jax.tasks.data import (as_batch_arrays, input_index, input_protocol, load_data,
                                 select_inputs)


def test_inputs_select_channels_and_protocol_by_name():
    prot = get_protocol("four_contrast_brain")
    assert input_index(prot, ()) is None
    assert input_index(prot, ("FLAIR", "T1w")) == [3, 0]
    arrays = {"images": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "mask": np.ones((2, 3))}
    out = select_inputs(arrays, [3, 0])
    np.testing.assert_array_equal(out["images"], arrays["images"][..., [3, 0]])
    assert out["mask"] is arrays["mask"]
    with pytest.raises(ValueError, match=r"unknown \['T2\*w'\]"):
        input_index(prot, ("T1w", "T2*w"))
    with pytest.raises(ValueError, match="distinct"):
        input_index(prot, ("T1w", "T1w"))
    cfg = unet_config.get_config()
    with cfg.unlocked():
        cfg.data.inputs = ("T1w", "T2w")
    sub = input_protocol(cfg)
    assert sub.names == ("T1w", "T2w") and np.allclose(sub.tr_ms, [500, 4500])


def test_load_data_with_inputs_gives_the_subset_and_its_protocol(tmp_path):
    cfg = unet_config.get_config()
    with cfg.unlocked():
        cfg.data.update(num_subjects=3, slices_per_subject=1, resolution_mm=4,
                        data_dir=str(tmp_path), inputs=("PDw", "T1w"))
    data = load_data(cfg)
    with cfg.unlocked():
        cfg.data.inputs = ()
    full = load_data(cfg)
    np.testing.assert_array_equal(data["train"]["images"], full["train"]["images"][..., [2, 0]])
    assert [im["name"] for im in data["protocol"]["images"]] == ["PDw", "T1w"]
    assert data["protocol"]["images"][0]["tr_ms"] == 8000.0
    assert [im["name"] for im in full["protocol"]["images"]] == ["T1w", "T2w", "PDw", "FLAIR"]


def test_target_b_is_one_plus_k_in_the_brain_and_an_unknown_target_is_named():
    """The qMRI Diffusor's B target comes from the stored k: 1 + k in the brain, 0 outside."""
    brain = np.array([[True, False], [True, True]])
    k = np.array([[0.9, 0.0], [1.1, 0.95]], np.float32)
    arrays = {"images": np.ones((2, 2, 3), np.float32), "brain": brain, "k": k,
              "T1": np.full((2, 2), 800.0), "PD": np.full((2, 2), 0.7)}
    out = as_batch_arrays(arrays, ("T1", "PD", "B"))
    np.testing.assert_allclose(out["targets"][..., 2], np.where(brain, 1 + k, 0.0), rtol=1e-6)
    np.testing.assert_allclose(out["targets"][..., 0], 800.0)
    with pytest.raises(ValueError, match=r"no map 'T2'.*its maps: \['PD', 'T1', 'k'\]"):
        as_batch_arrays(arrays, ("T1", "T2"))
