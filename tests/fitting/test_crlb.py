import jax
import numpy as np
from scipy import integrate, special, stats

from qmri_jax.fitting.crlb import rician_information


def _fisher_by_quadrature(a):
    """Information of one Rician sample (sigma 1) about nu = a, relative to a Gaussian sample:
    E[(m I1/I0(m a))^2] - a^2 under the Rice density (scipy.stats.rice, adaptive quadrature)."""
    def integrand(m):
        r = special.i1e(m * a) / special.i0e(m * a)
        return stats.rice.pdf(m, a) * (m * r) ** 2
    value, _ = integrate.quad(integrand, 0.0, a + 15.0, limit=200, epsabs=1e-12)
    return value - a * a


def test_rician_information_matches_quadrature():
    snr = np.array([0.0, 0.3, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 25.0])
    ref = np.array([_fisher_by_quadrature(a) for a in snr])
    got = np.asarray(jax.jit(rician_information)(snr.astype(np.float32)))
    np.testing.assert_allclose(got, ref, atol=5e-5)
    np.testing.assert_allclose(got[3], 0.52, atol=0.01)  # the documented SNR-1 value
    # Beyond the quadrature range: 1 - 1/(2 snr^2), and finite (1) at infinity; never negative.
    far = np.asarray(rician_information(np.array([100.0, 1e4, np.inf], np.float32)))
    np.testing.assert_allclose(far, [1 - 0.5e-4, 1.0, 1.0], atol=1e-5)
    grid = np.asarray(rician_information(np.linspace(0, 50, 5001, dtype=np.float32)))
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    assert np.all(np.diff(grid) > -1e-6)  # non-decreasing up to float32 rounding
