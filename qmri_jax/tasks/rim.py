"""Recurrent inference machine task: the RIM (:class:`qmri_jax.models.RIM`), a learned iterative
solver that sees the gradient of the data term through the signal model of the training protocol,
trained like a regression network (``config.train.loss``, default ``nmae``).

The RIM's protocol and output maps are the data's (``config.data.protocol``, ``config.targets``);
``config.model`` gives ``features`` and ``num_iterations``.
"""

from __future__ import annotations

from qmri_jax.models import create_model
from qmri_jax.tasks.regression import RegressionTask

__all__ = ["RimTask"]


class RimTask(RegressionTask):
    """:class:`~qmri_jax.tasks.regression.RegressionTask` with the RIM built from the data's
    protocol and targets."""

    def __init__(self, config):
        m = config.model
        if m.get("name", "rim") != "rim":
            raise ValueError(f"config.task='rim' trains the RIM; config.model.name is "
                             f"{m.name!r} (use config.task='regression' for other networks)")
        model = create_model("rim", out_scale=tuple(config.target_scale),
                             protocol=config.data.protocol, targets=tuple(config.targets),
                             features=int(m.get("features", 32)),
                             num_iterations=int(m.get("num_iterations", 6)))
        super().__init__(config, model=model)
