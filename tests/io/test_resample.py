"""Resampling between grids through their affines: exact for fields linear in world space, NaN
outside the source volume, errors that name the argument."""

import numpy as np
import pytest

from qmri_jax.io import resample_to_grid


def _rotation(deg):
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_linear_field_is_reproduced_on_an_oblique_thin_slice():
    # Source: a 3D volume of 1 x 1 x 3 mm voxels holding two fields linear in world (x, y, z).
    src = np.eye(4)
    src[:3, :3] = np.diag([1.0, 1.0, 3.0])
    src[:3, 3] = [-20.0, -16.0, -30.0]
    shape = (40, 32, 20)
    ijk = np.indices(shape).reshape(3, -1)
    world = src[:3, :3] @ ijk + src[:3, 3:]
    field = np.stack([0.5 * world[0] - 0.2 * world[1] + 0.1 * world[2] + 7.0,
                      world[2]], -1).reshape(*shape, 2)
    # Target: one slice of 0.8 mm pixels, rotated 10 degrees in-plane, tilted, between source
    # slices.
    tgt = np.eye(4)
    tgt[:3, :3] = _rotation(10.0) @ np.diag([0.8, 0.8, 6.0])
    tgt[2, 1] = 0.05
    tgt[:3, 3] = [-8.0, -6.0, 1.3]
    out = resample_to_grid(field, src, tgt, (16, 12, 1))
    tw = tgt[:3, :3] @ np.indices((16, 12, 1)).reshape(3, -1) + tgt[:3, 3:]
    expect = np.stack([0.5 * tw[0] - 0.2 * tw[1] + 0.1 * tw[2] + 7.0, tw[2]], -1)
    np.testing.assert_allclose(out.reshape(-1, 2), expect, atol=1e-4)
    # A 3D input gives a 3D output with the same values.
    np.testing.assert_allclose(resample_to_grid(field[..., 0], src, tgt, (16, 12, 1)),
                               out[..., 0], atol=1e-6)


def test_outside_the_source_is_nan_and_the_same_grid_is_the_identity():
    rng = np.random.default_rng(0)
    vol = rng.random((6, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(resample_to_grid(vol, np.eye(4), np.eye(4), vol.shape), vol)
    shifted = np.eye(4)
    shifted[0, 3] = 3.0  # target voxel i sits at source voxel i + 3
    out = resample_to_grid(vol, np.eye(4), shifted, vol.shape)
    np.testing.assert_array_equal(out[:3], vol[3:])
    assert np.all(np.isnan(out[3:]))


def test_bad_arguments_are_named():
    vol = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="target_affine must be 4 x 4"):
        resample_to_grid(vol, np.eye(4), np.eye(3), (4, 4, 4))
    with pytest.raises(ValueError, match="volume must be"):
        resample_to_grid(np.zeros((4, 4)), np.eye(4), np.eye(4), (4, 4, 1))
