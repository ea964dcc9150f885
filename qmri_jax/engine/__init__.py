"""The training engine: state and update, optimisers, the loop, checkpoints, sharding, batches.

It imports no task, model or diffusion code: a task (:mod:`qmri_jax.tasks`) hands it pure steps and
a state pytree. Modules: :mod:`~qmri_jax.engine.state`, :mod:`~qmri_jax.engine.optim`,
:mod:`~qmri_jax.engine.loop`, :mod:`~qmri_jax.engine.checkpoint`,
:mod:`~qmri_jax.engine.sharding`, :mod:`~qmri_jax.engine.loader`,
:mod:`~qmri_jax.engine.metrics_log`.
"""

from qmri_jax.engine.loop import LoopConfig, NonFiniteError, evaluate_split, init_state, train
from qmri_jax.engine.optim import create_optimizer
from qmri_jax.engine.state import (TrainState, apply_gradients, compiled_init, create_state,
                                   eval_params)

__all__ = ["LoopConfig", "NonFiniteError", "train", "init_state", "evaluate_split",
           "create_optimizer", "TrainState", "create_state", "apply_gradients", "compiled_init",
           "eval_params"]
