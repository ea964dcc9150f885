"""PatchGAN: output grid, class logits, and the receptive field formula against the gradient
footprint of one output logit."""

import jax
import jax.numpy as jnp
import numpy as np

from qmri_jax.models import MODELS, PatchGAN
from qmri_jax.models.patchgan import receptive_field


def test_receptive_field_matches_the_gradient_footprint():
    for strided, extra in ((2, 1), (3, 0), (3, 2)):
        net = PatchGAN(num_classes=3, features=(2,) * strided, extra_convs=extra, noise_std=0.0)
        x = jnp.zeros((1, 96, 96, 1))
        params = net.init(jax.random.key(0), x)
        out = net.apply(params, x)
        assert out.shape == (1, 96 // 2**strided, 96 // 2**strided, 3)
        c = out.shape[1] // 2
        g = jax.grad(lambda v: net.apply(params, v)[0, c, c].sum())(
            jax.random.normal(jax.random.key(1), x.shape))[0, :, :, 0]
        rows = np.nonzero(np.abs(np.asarray(g)).sum(1) > 0)[0]
        assert rows.max() - rows.min() + 1 == receptive_field(strided, extra)


def test_paper_discriminator_sees_190_pixels_and_gives_an_8x8_map():
    assert receptive_field(5, 2) == 191
    assert MODELS["patchgan"] is PatchGAN
    net = PatchGAN(num_classes=6, features=(4, 4, 4, 4, 4), extra_convs=2)
    x = jnp.ones((2, 256, 256, 1))
    variables = net.init({"params": jax.random.key(0), "noise": jax.random.key(1)}, x)
    a = net.apply(variables, x, train=True, rngs={"noise": jax.random.key(2)})
    b = net.apply(variables, x, train=True, rngs={"noise": jax.random.key(3)})
    assert a.shape == (2, 8, 8, 6)
    assert not np.allclose(np.asarray(a), np.asarray(b))  # input noise in training only
    np.testing.assert_array_equal(np.asarray(net.apply(variables, x)),
                                  np.asarray(net.apply(variables, x)))
