"""Thick slices: the strided kernel with offsets against explicit slice averaging, and the spin-echo
slice sensitivity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmri_jax.physics.thick_slices import (downsample_slices, slice_taps, spin_echo_slice_kernel,
                                           valid_slices)


def _explicit(x, kernel, factor, offset, n):
    """Thick slice j = sum_t kernel[t] x[..., mirror(factor j + offset + t), :] by loops."""
    z = x.shape[-2]
    out = np.zeros(x.shape[:-2] + (n, x.shape[-1]))
    for j in range(n):
        for t, w in enumerate(kernel):
            i = factor * j + offset + t
            while i < 0 or i >= z:  # half-sample symmetric mirror
                i = -i - 1 if i < 0 else 2 * z - 1 - i
            out[..., j, :] += w * x[..., i, :]
    return out


@pytest.mark.parametrize("kernel,offset", [((0.25,) * 4, 0), ((1 / 6, 1 / 3, 1 / 3, 1 / 6), 0),
                                           ((0.5, 0.5, 0, 0), 2), ((0.1, 0.2, 0.4, 0.2, 0.1), -1),
                                           ((0.05, 0.15, 0.3, 0.3, 0.15, 0.05), -3)])
def test_kernel_with_offsets_equals_explicit_slice_averaging(kernel, offset):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 18, 2)).astype(np.float32)
    got = np.asarray(downsample_slices(jnp.asarray(x), kernel, 4, offset, num_slices=5))
    np.testing.assert_allclose(got, _explicit(x, kernel, 4, offset, 5), rtol=1e-5, atol=1e-6)


def test_box_kernel_is_block_averaging_and_offsets_may_be_traced_per_example():
    x = np.random.default_rng(1).normal(size=(3, 2, 2, 16, 1)).astype(np.float32)
    box = np.asarray(downsample_slices(jnp.asarray(x), (0.25,) * 4, 4))
    np.testing.assert_allclose(box, x.reshape(3, 2, 2, 4, 4, 1).mean(4), rtol=1e-5, atol=1e-6)
    offsets = jnp.asarray([0, 1, 3])
    fn = jax.jit(jax.vmap(lambda v, o: downsample_slices(v, (0.5, 0.5), 4, o, 3)))
    got = np.asarray(fn(jnp.asarray(x), offsets))
    for b, o in enumerate([0, 1, 3]):
        np.testing.assert_allclose(got[b], _explicit(x[b], (0.5, 0.5), 4, o, 3), rtol=1e-5)


def test_valid_slices_are_those_without_mirrored_taps():
    ok = np.asarray(valid_slices(6, 20, 6, 4, -1))
    taps = np.asarray(4 * np.arange(6)[:, None] - 1 + np.arange(6)[None, :])
    np.testing.assert_array_equal(ok, (taps.min(1) >= 0) & (taps.max(1) < 20))
    mirrored = np.asarray(slice_taps(2, 5, 3, 4, -2))  # taps -2..0 and 2..4
    np.testing.assert_array_equal(mirrored, [[1, 0, 0], [2, 3, 4]])


def test_spin_echo_slice_sensitivity_is_a_smooth_slice_of_the_nominal_thickness():
    k, off = spin_echo_slice_kernel(4, reach=0.5)
    assert off == -2 and k.shape == (8,)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(k, k[::-1], atol=1e-6)  # symmetric about the slice centre
    inside = k[2:6].sum()  # the nominal slice (thin slices 4j .. 4j + 3)
    assert 0.8 < inside < 0.99  # most of the signal, but tails reach the neighbours (not a box)
    assert k[1] > 0.05 * k.max()
