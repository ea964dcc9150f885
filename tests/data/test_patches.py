"""3D patches: Gaussian fusion (exact for the identity, no seams), and training patches whose
thick-slice targets are what the kernel makes of their input."""

import numpy as np
import pytest

from qmri_jax.data import patches
from qmri_jax.physics.thick_slices import downsample_slices


def test_fusion_of_the_identity_reproduces_the_input_exactly():
    vol = np.random.default_rng(0).normal(size=(21, 17, 13, 2)).astype(np.float32)
    out = patches.fuse_patches(lambda x: x, vol, (8, 8, 8))["out"]
    np.testing.assert_allclose(out, vol, rtol=1e-6, atol=1e-6)
    small = patches.fuse_patches(lambda x: x, vol[:6], (8, 8, 8))["out"]  # reflection-padded
    np.testing.assert_allclose(small, vol[:6], rtol=1e-6, atol=1e-6)


def test_fused_output_has_no_seams():
    x = np.linspace(0, 1, 40)
    vol = (x[:, None, None] + 0.5 * x[None, :, None] + 0.0 * x[None, None, :24])[..., None]
    vol = np.broadcast_to(vol, (40, 40, 24, 1)).astype(np.float32)

    def biased(p):  # a network whose output depends on the patch it sees: a per-patch offset
        return p + 0.3 * p.mean(axis=(1, 2, 3, 4), keepdims=True)

    patch, stride = (12, 12, 12), (4, 4, 4)
    fused = patches.fuse_patches(biased, vol, patch, stride)["out"][..., 0]
    starts = patches.patch_starts(40, 12, 4)
    jumps = np.abs(np.diff(fused, axis=0))  # between x and x + 1
    border = np.zeros(39, bool)
    for s in starts:
        for b in (s - 1, s + 11):  # pairs that straddle a patch's edge
            if 0 <= b < 39:
                border[b] = True
    assert jumps[border].max() <= jumps[~border].max() * 1.0001
    # tiling without overlap (the seams the fusion avoids) does jump at the borders
    tiled = np.concatenate([biased(vol[None, s:s + 10])[0] for s in range(0, 40, 10)])[..., 0]
    tj = np.abs(np.diff(tiled, axis=0))
    assert tj[[9, 19, 29]].max() > 3 * tj[np.r_[0:9, 10:19]].max()


def test_joint_fusion_of_a_thick_slice_output_is_on_its_own_grid():
    vol = np.random.default_rng(2).normal(size=(16, 12, 24, 1)).astype(np.float32)

    def fn(p):
        return {"mean": p, "thick": np.asarray(downsample_slices(p, (0.25,) * 4, 4))}

    out = patches.fuse_patches(fn, vol, (8, 8, 8), (4, 4, 4), scales={"thick": (1, 1, 0.25)})
    np.testing.assert_allclose(out["mean"], vol, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["thick"], vol.reshape(16, 12, 6, 4, 1).mean(3), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="whole voxel"):
        patches.fuse_patches(fn, vol, (8, 8, 8), (4, 4, 3), scales={"thick": (1, 1, 0.25)})


@pytest.mark.parametrize("mode", ["high_to_low", "low_to_low"])
def test_training_patches_pair_the_input_with_the_thick_slices_it_explains(mode):
    rng = np.random.default_rng(3)
    kernel, offset, f = (1 / 6, 1 / 3, 1 / 3, 1 / 6), 0, 4
    ge = rng.random((2, 20, 18, 32)).astype(np.float32)
    tse_lr = np.asarray(downsample_slices(ge[..., None], kernel, f, offset))[..., 0]
    ge_lr = ge.reshape(2, 20, 18, 8, 4).mean(-1)
    brain = np.zeros(ge.shape, bool)
    brain[:, 4:16, 4:14, 4:28] = True
    if mode == "low_to_low":  # a target that is a known function of the thick-slice input
        tse_lr = 2.0 * ge_lr
    vols = {"ge": ge, "ge_lr": ge_lr, "tse_lr": tse_lr, "brain": brain,
            "brain_lr": brain.reshape(2, 20, 18, 8, 4).mean(-1) >= 0.5}
    p = patches.sample_translation_patches(rng, vols, 12, (8, 8, 16), f, mode, len(kernel),
                                           offset, flip=True)
    n = patches.lr_slices_per_patch(16, f, 4) if mode == "high_to_low" else 4
    assert p["target"].shape == (12, 8, 8, n, 1) and p["mask"].shape == (12, 8, 8, n)
    for i in range(12):
        if mode == "high_to_low":
            assert 0 <= p["offset"][i] < f
            lr = np.asarray(downsample_slices(p["input"][i], kernel, f, int(p["offset"][i]), n))
        else:
            assert p["input"].shape[3] == n and p["offset"][i] == 0
            lr = 2.0 * p["input"][i]
        np.testing.assert_allclose(lr, p["target"][i], rtol=1e-5, atol=1e-6)
    assert p["mask"].sum() > 0
