"""Fitting defects found in review (issue 28); each test failed on the old code."""

import numpy as np
import pytest

from qmri_jax import physics
from qmri_jax.fitting import SolverOptions, fit_voxels, get_model

TI = [35.0, 75.0, 100.0, 125.0, 150.0, 250.0, 1000.0, 1500.0, 2000.0, 3000.0]


@pytest.mark.parametrize("name", ["ir", "ir3", "ir_fse"])
def test_signed_ir_is_fitted_as_signed(name):
    """Phase-corrected (signed) IR data are fitted with the signed model: noiseless T1 300-2500 ms
    come back exact (the old code fitted the magnitude model: 791/1597/3579/5 ms)."""
    model = get_model(name)
    prot = physics.Protocol.create("ir_signed", tr_ms=4500.0, ti_ms=TI, te_ms=0.0, name="signed")
    t1 = np.array([300.0, 800.0, 1500.0, 2500.0])
    truth = {"ir": {"PD": np.ones(4), "T1": t1, "k": np.full(4, 0.95)},
             "ir3": {"a": np.ones(4), "T1": t1, "b": np.full(4, 1.9)},
             "ir_fse": {"PD": np.ones(4), "T1": t1, "B": np.full(4, 1.9)}}[name]
    y = np.asarray(model.signal(truth, prot))
    assert (y < 0).any()  # the data really are signed
    res = fit_voxels(model, prot, y)
    np.testing.assert_allclose(res.params["T1"], t1, rtol=1e-3)
    assert res.converged.all()
    with pytest.raises(ValueError, match="magnitude"):
        fit_voxels(model, prot, y, sigma=0.01, options=SolverOptions(loss="rician"))
