"""Sweeps of any config: definitions (:mod:`~qmri_jax.sweeps.spec`), one trial's run
(:mod:`~qmri_jax.sweeps.runner`), the local and SLURM backends (:mod:`~qmri_jax.sweeps.backends`)
and the results tables (:mod:`~qmri_jax.sweeps.collect`). The command line is
``python -m qmri_jax.sweep`` (:mod:`qmri_jax.sweep`); ``docs/sweeps.md`` explains it."""

from qmri_jax.sweeps.spec import (Axis, Sweep, Trial, explicit, folds, grid, load_sweep, repeats,
                                  values, zip_axes)

__all__ = ["Axis", "Sweep", "Trial", "grid", "zip_axes", "values", "explicit", "repeats", "folds",
           "load_sweep"]
