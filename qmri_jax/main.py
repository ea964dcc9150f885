"""Entry point: ``python -m qmri_jax.main --config=configs/<name>.py --workdir=DIR [--mode=...]``.

Modes: ``fit`` (voxelwise fitting job), ``train`` (train, then evaluate on the test split),
``eval`` (evaluate the latest checkpoint), ``predict`` (maps from weighted NIfTI/DICOM inputs).
Dispatch only; the work lives in library modules. Overrides: ``--config.train.num_steps=100``.
SIGTERM / SIGUSR1 / SIGUSR2 (a cluster's preemption or time-out warning) make training checkpoint and exit
with code 75 (:mod:`qmri_jax.engine.preemption`); the same command then resumes.
"""

from __future__ import annotations

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:preset]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.DEFINE_string("mode", None, "Job to run (default: config.mode): fit, train, eval, predict.")
flags.mark_flags_as_required(["config", "workdir"])

_MODES = ("fit", "train", "eval", "predict")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mode = FLAGS.mode or FLAGS.config.mode
    if mode not in _MODES:
        raise app.UsageError(f"--mode={mode}: available modes are {_MODES}")
    if mode == "fit":
        from qmri_jax import fit_job
        fit_job.run(FLAGS.config, FLAGS.workdir)
        return
    from qmri_jax import predict, train  # noqa: F401 (imports set absl verbosity)
    from qmri_jax.engine import preemption, sharding
    if not FLAGS["verbosity"].present:  # Orbax and TFDS log every file operation at INFO
        logging.set_verbosity(logging.WARNING)
        for name in ("absl", "jax", "orbax", "tensorflow_datasets"):
            pylogging.getLogger(name).setLevel(pylogging.WARNING)
    sharding.initialize_distributed()
    preemption.install_handlers()
    if mode == "train":
        from qmri_jax import train
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        if preemption.stop_requested():
            raise preemption.Preempted(f"training stopped on request; checkpoint in "
                                       f"{FLAGS.workdir}/checkpoints: run again to resume")
    elif mode == "eval":
        from qmri_jax import predict
        predict.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
        from qmri_jax import predict
        predict.predict_files(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
