"""Map units and the [-1, 1] scaling of maps (physics.units)."""

import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax.physics import units


def test_scaling_round_trip_and_range():
    names = ("T1", "PD", "k")
    t = jnp.asarray([[20.0, 0.5, 0.9], [3000.0, 1.0, 1.0], [150.0, 0.7, 1.15]])
    x = units.scale_maps(t, jnp.ones((3,)), names)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    np.testing.assert_allclose(units.unscale_maps(x, names), t, rtol=1e-5)
    bg = units.scale_maps(t, jnp.zeros((3,)), names)
    np.testing.assert_array_equal(bg, -1.0)


def test_scaling_closed_form_and_labels():
    # log scaling: the geometric mean of the range maps to 0; linear: the midpoint.
    lo, hi = units.SCALING["T1"][1:]
    assert float(units.to_unit_range(jnp.sqrt(lo * hi), "T1")) == pytest.approx(0.0, abs=1e-6)
    assert float(units.to_unit_range(jnp.asarray(0.75), "PD")) == pytest.approx(0.0, abs=1e-6)
    assert float(units.from_unit_range(jnp.asarray(5.0), "PD")) == pytest.approx(1.5)  # held
    assert [units.unit_label(n) for n in ("T1", "PD", "k", "B", "nope")] == ["ms", "a.u.", "",
                                                                            "", ""]
    with pytest.raises(ValueError, match="'T2s' has no"):
        units.to_unit_range(jnp.ones(()), "T2s")
