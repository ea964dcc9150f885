"""Numerical edge cases found in review (issue 28, item 6); each failed on the old code."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from qmri_jax import physics
from qmri_jax.physics import signals


def test_decay_propagates_nan_relaxation_times():
    """A NaN T1/T2 is missing data, not full relaxation: the value and its gradient stay NaN."""
    assert np.isnan(float(signals.decay(10.0, jnp.nan)))
    assert np.isnan(float(jax.grad(signals.decay, argnums=1)(10.0, jnp.nan)))
    s = physics.spin_echo(1.0, jnp.nan, 80.0, 3000.0, 20.0)
    assert np.isnan(float(s))


def test_decay_gradient_finite_for_tiny_relaxation_times():
    """float32: tau down to 1e-30 ms gives exp(-t/tau) = 0 with a finite (zero) gradient."""
    tau = jnp.asarray([1e-30, 1e-25, 1e-20, 1e-12, 1e-3], jnp.float32)
    g = jax.vmap(jax.grad(signals.decay, argnums=1), in_axes=(None, 0))(jnp.float32(10.0), tau)
    assert bool(jnp.all(jnp.isfinite(g))), g
    np.testing.assert_allclose(signals.decay(10.0, tau), 0.0, atol=0)


def test_rician_nll_float32_at_very_high_snr():
    """The NLL difference between two model values keeps float32 precision at SNR 1e3-1e5."""
    sigma = 1.0
    for snr in (1e3, 1e4, 1e5):
        m, nu1, nu2 = snr, snr * (1 + 1e-4), snr * (1 - 2e-4)
        with jax.enable_x64(True):
            exact = (physics.rician_nll(jnp.float64(m), jnp.float64(nu1), 1.0)
                     - physics.rician_nll(jnp.float64(m), jnp.float64(nu2), 1.0))
        f32 = (physics.rician_nll(jnp.float32(m), jnp.float32(nu1), jnp.float32(sigma))
               - physics.rician_nll(jnp.float32(m), jnp.float32(nu2), jnp.float32(sigma)))
        np.testing.assert_allclose(float(f32), float(exact), rtol=1e-3, err_msg=str(snr))


def _rice_reference(nu):
    """float64 mean and SD of Rice(nu, 1): scipy up to nu = 10; beyond, where scipy overflows, the
    asymptotic series to one term more than the code uses (checked against mpmath at 50 digits)."""
    if nu <= 10:
        mean, var = stats.rice.stats(nu, moments="mv")
        return float(mean), float(np.sqrt(var))
    a = float(nu)
    return (a + 1 / (2 * a) + 1 / (8 * a**3) + 3 / (16 * a**5),
            np.sqrt(1 - 1 / (2 * a**2) - 1 / (2 * a**4)))


def test_rician_moments_float32_at_very_high_snr():
    for nu in (0.0, 0.5, 2.0, 10.0, 31.0, 100.0, 1e3, 1e4, 1e5):
        mean, sd = physics.rician_moments(jnp.float32(nu), jnp.float32(1.0))
        ref_mean, ref_sd = _rice_reference(nu)
        np.testing.assert_allclose(float(mean), ref_mean, rtol=1e-6, err_msg=str(nu))
        np.testing.assert_allclose(float(sd), ref_sd, rtol=2e-3, err_msg=str(nu))


def test_rician_objective_uses_the_magnitude_of_the_model():
    """The magnitude of nu + noise depends on |nu|: the solver's objective for a negative model
    value equals that of its absolute value, and equals sigma^2 times the NLL up to a constant."""
    y, sigma = jnp.float32(0.3), jnp.float32(0.1)
    nus = jnp.asarray([-0.4, -0.1, 0.05, 0.2, 0.4], jnp.float32)
    obj = physics.rician_objective(y, nus, sigma)
    np.testing.assert_allclose(obj[0], obj[-1], rtol=1e-6)
    nll = physics.rician_nll(y, jnp.abs(nus), sigma) * sigma**2
    np.testing.assert_allclose(obj - obj[2], nll - nll[2], rtol=1e-4, atol=1e-7)
    d = jax.vmap(jax.grad(physics.rician_objective, argnums=1), in_axes=(None, 0, None))(y, nus, sigma)
    dn = jax.vmap(jax.grad(lambda n: physics.rician_nll(y, jnp.abs(n), sigma) * sigma**2))(nus)
    np.testing.assert_allclose(d, dn, rtol=1e-4, atol=1e-6)
