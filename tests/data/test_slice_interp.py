"""Thin slices from thick ones: cubic interpolation and back-projection onto acquired thick slices."""

import numpy as np
import pytest

from qmri_jax.data.slice_interp import consistent_thin_slices, cubic_thin_slices, kernel_centre
from qmri_jax.physics.thick_slices import downsample_slices

KERNEL = np.array([0.1, 0.2, 0.3, 0.4], np.float32)  # asymmetric: its centre is 2.0, not 1.5


def _thick(x, kernel=KERNEL, factor=4, offset=0):
    k = np.asarray(kernel, np.float32) / np.sum(kernel)
    return np.asarray(downsample_slices(x[..., None], k, factor, offset))[..., 0]


def test_kernel_centre_is_the_weighted_tap_position():
    assert kernel_centre(KERNEL) == pytest.approx(2.0)
    assert kernel_centre([1, 2, 2, 1], offset=0) == pytest.approx(1.5)
    assert kernel_centre([0, 1, 0], offset=-1) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="non-negative"):
        kernel_centre([1, -1])


def test_cubic_interpolation_reproduces_a_cubic_in_z_between_the_centres():
    z = np.arange(32, dtype=np.float64)
    centres = 4 * np.arange(8) + 1.5
    thick = np.broadcast_to(0.5 + 0.1 * centres, (2, 3, 8))  # linear: natural splines are exact
    out = cubic_thin_slices(thick, 4)
    np.testing.assert_allclose(out[0, 0], 0.5 + 0.1 * z, atol=1e-5)


def test_an_error_linear_in_z_is_removed_exactly():
    """The kernel's taps stay inside the volume (offset 0, 4 taps, stride 4), so the thick slices
    of ``a + b z`` are ``a + b (4 j + centre)`` and the natural spline through them is the line:
    one step leaves the truth, whatever the kernel's centre."""
    rng = np.random.default_rng(0)
    truth = rng.random((5, 6, 32)).astype(np.float32)
    z = np.arange(32, dtype=np.float32)
    error = rng.normal(size=(5, 6, 1)) + rng.normal(size=(5, 6, 1)) * 0.05 * z
    out = consistent_thin_slices(truth + error, _thick(truth), KERNEL, 4)
    np.testing.assert_allclose(out, truth, atol=2e-5)
    # the symmetric kernel's centre differs (1.5): the same step with the wrong centre is not exact
    wrong = consistent_thin_slices(truth + error, _thick(truth), [1, 1, 1, 1], 4)
    assert np.abs(wrong - truth).max() > 1e-2


def test_a_consistent_estimate_is_unchanged_and_iterations_shrink_the_residual():
    rng = np.random.default_rng(1)
    truth = rng.random((4, 4, 24)).astype(np.float32)
    thick = _thick(truth)
    np.testing.assert_allclose(consistent_thin_slices(truth, thick, KERNEL, 4), truth, atol=1e-6)
    start = truth + rng.normal(size=truth.shape).astype(np.float32) * 0.3
    np.testing.assert_array_equal(consistent_thin_slices(start, thick, KERNEL, 4, iterations=0),
                                  start)
    res = [np.abs(_thick(consistent_thin_slices(start, thick, KERNEL, 4, iterations=n))
                  - thick).mean() for n in (0, 1, 3, 10)]
    assert res[0] > 0.05 and all(a > b for a, b in zip(res, res[1:])) and res[-1] < 0.1 * res[0]


def test_mismatched_shapes_name_what_was_expected():
    with pytest.raises(ValueError, match=r"expected thick \[X, Y, Z // 4\]"):
        consistent_thin_slices(np.zeros((4, 4, 16)), np.zeros((4, 4, 3)), KERNEL, 4)
    with pytest.raises(ValueError, match="iterations=-1"):
        consistent_thin_slices(np.zeros((4, 4, 16)), np.zeros((4, 4, 4)), KERNEL, 4,
                               iterations=-1)
