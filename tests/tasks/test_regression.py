"""The regression and RIM tasks: the protocol they implement, the loss in units of the typical
value, prediction in physical units, and the RIM built from the data's protocol and targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rim as rim_config
from qmri_jax import engine
from qmri_jax.models import RIM
from qmri_jax.tasks import RegressionTask, RimTask, Task, create_task
from tests.tiny import unet_config_tiny


def test_regression_task_loss_is_in_units_of_the_typical_value():
    cfg = unet_config_tiny()
    task = create_task(cfg)
    assert isinstance(task, RegressionTask) and isinstance(task, Task)
    assert task.size_multiple == 2  # a 2-level U-Net halves the image once
    images = jnp.ones((4, 8, 8, 4))
    state = engine.init_state(task, {"images": images[:1]}, 0)
    pred = task.predict(state, images, None)["mean"]
    assert pred.shape == (4, 8, 8, 3) and bool(jnp.all(pred > 0))
    # targets off by exactly one typical value everywhere: MAE of 1 in scaled units
    batch = {"images": images, "targets": pred + jnp.asarray(cfg.target_scale),
             "mask": jnp.ones((4, 8, 8))}
    assert float(task.eval_step(state, batch, None)["loss"]) == pytest.approx(1.0, rel=1e-5)
    with cfg.unlocked():
        cfg.target_scale = (1.0, 1.0)
    with pytest.raises(ValueError, match="one typical value per target"):
        RegressionTask(cfg)


def test_rim_task_takes_protocol_and_targets_from_the_data():
    cfg = rim_config.get_config()
    with cfg.unlocked():
        cfg.model.features, cfg.model.num_iterations = 4, 1
    task = create_task(cfg)
    assert isinstance(task, RimTask) and isinstance(task.model, RIM)
    assert task.model.protocol == cfg.data.protocol == "nist_vir"
    assert tuple(task.model.targets) == tuple(cfg.targets) and task.size_multiple == 1
    state = engine.init_state(task, {"images": jnp.ones((1, 8, 8, 10))}, 0)
    out = jax.jit(task.predict)(state, jnp.ones((2, 8, 8, 10)), None)["mean"]
    assert out.shape == (2, 8, 8, 3) and np.all(np.isfinite(np.asarray(out)))
    with cfg.unlocked():
        cfg.model.name = "unet"
    with pytest.raises(ValueError, match="config.task='rim' trains the RIM"):
        create_task(cfg)
    with cfg.unlocked():
        cfg.task = "no_such_task"
    with pytest.raises(ValueError, match="config.task='no_such_task': expected one of"):
        create_task(cfg)
