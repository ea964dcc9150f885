"""The batch loader: deterministic, sharded over the mesh, complete epochs, resumable by step."""

import jax
import numpy as np
import pytest

from qmri_jax.engine import loader


def test_loader_deterministic_sharded_and_complete():
    n = 10
    arrays = {"x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
              "subject": np.arange(n)}
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    ld = loader.Loader(arrays, batch_size=4, seed=3, mesh=mesh)
    assert ld.steps_per_epoch() == 2
    batches = list(ld.epoch(0))
    assert len(batches) == 2 and batches[0]["x"].shape == (4, 3)
    assert len(batches[0]["x"].sharding.device_set) == len(jax.devices())
    again = list(loader.Loader(arrays, batch_size=4, seed=3, mesh=mesh).epoch(0))
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(np.asarray(a["x"]), np.asarray(b["x"]))
    ids = np.concatenate([np.asarray(b["subject"]) for b in batches])
    assert len(set(ids.tolist())) == 8  # no repeats within an epoch
    e1 = np.concatenate([np.asarray(b["subject"]) for b in ld.epoch(1)])
    assert not np.array_equal(ids, e1)  # a new order each epoch
    np.testing.assert_array_equal(np.asarray(ld.batch_at(3)["x"]), np.asarray(list(ld.epoch(1))[1]["x"]))
    with pytest.raises(ValueError, match="divisible"):
        loader.Loader(arrays, batch_size=6, mesh=mesh)


def test_a_split_smaller_than_a_batch_is_repeated_to_fill_it():
    """One example, batches of 4 (the device count): the example four times, not a short batch."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    ld = loader.Loader({"x": np.array([[7.0]]), "y": np.array([[1.0], [2.0]])[:1]}, 4, mesh=mesh,
                       shuffle=False, keys=["x"], drop_remainder=False)
    assert ld.steps_per_epoch() == 1
    np.testing.assert_array_equal(ld.host_batch(0, 0)["x"], np.full((4, 1), 7.0))
    three = loader.Loader({"x": np.arange(3.0)[:, None]}, 8, mesh=mesh, shuffle=False,
                          drop_remainder=False)
    np.testing.assert_array_equal(three.host_batch(0, 0)["x"][:, 0], [0, 1, 2, 0, 1, 2, 0, 1])
