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


def test_tanh_scaling_closed_form_round_trip_and_background():
    """``2 tanh(x / x0) - 1``: 0 (background) at -1, x0 at 2 tanh(1) - 1, exact inverse."""
    names = ("T1", "PD", "B")
    t = jnp.asarray([[20.0, 0.05, 1.5], [2000.0, 1.0, 2.0], [5000.0, 1.4, 2.1]])
    x = units.scale_maps(t, jnp.ones((3,)), names, "tanh")
    assert float(x.min()) > -1 and float(x.max()) < 1
    np.testing.assert_allclose(x[1], 2 * np.tanh([1.0, 1.0, 1.0]) - 1, rtol=1e-6)
    np.testing.assert_allclose(units.unscale_maps(x, names, "tanh"), t, rtol=2e-4)
    np.testing.assert_array_equal(units.scale_maps(t, jnp.zeros((3,)), names, "tanh"), -1.0)
    np.testing.assert_allclose(units.unscale_maps(-jnp.ones((1, 3)), names, "tanh"), 0.0)
    # A draw past 1 is held, not NaN or infinite.
    assert np.all(np.isfinite(units.unscale_maps(jnp.full((1, 3), 3.0), names, "tanh")))
    with pytest.raises(ValueError, match="map scaling 'log'"):
        units.scale_maps(t, jnp.ones((3,)), names, "log")
    with pytest.raises(ValueError, match="'B1' has no tanh"):
        units.scale_maps(t, jnp.ones((3,)), ("T1", "PD", "B1"), "tanh")
