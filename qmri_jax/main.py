"""Entry point: ``python -m qmri_jax.main --config=configs/<name>.py --workdir=DIR [--mode=...]``.

Dispatch only; the work lives in library modules.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py[:preset]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (created).")
flags.DEFINE_string("mode", None, "Job to run (default: config.mode). Available: fit.")
flags.mark_flags_as_required(["config", "workdir"])

_MODES = ("fit",)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    mode = FLAGS.mode or FLAGS.config.mode
    if mode not in _MODES:
        raise app.UsageError(f"--mode={mode}: available modes are {_MODES}")
    if mode == "fit":
        from qmri_jax import fit_job
        fit_job.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
