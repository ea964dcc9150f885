"""The exact per-voxel IR posterior: against a brute-force dense 3D grid, against importance
sampling from the prior, and with left-out samples equal to the posterior of the protocol without
them."""

import numpy as np
import pytest
from scipy.special import i0e

from qmri_jax.fitting.models import get_model
from qmri_jax.fitting.posterior import GridPrior, ir_posterior, posterior_nodes
from qmri_jax.physics.protocol import get_protocol

PROT = get_protocol("nist_vir")
TI = np.array([im["ti_ms"] for im in PROT.to_dict()["images"]])
TR = PROT.to_dict()["images"][0]["tr_ms"]
SIGMA = 0.05
PRIOR = GridPrior()
# (T1 ms, k, PD): white matter, a long T1 near the prior's edge, a short one near k's bound
TRUTH = np.array([[850.0, 0.95, 0.7], [3200.0, 1.05, 1.0], [150.0, 0.82, 0.5]])


def _signal(t1, k, pd):
    """The magnitude IR signal (numpy, float64), parameters broadcast against TI on the last axis."""
    return np.abs(pd * (1 - (1 + k) * np.exp(-TI / t1) + k * np.exp(-TR / t1)))


def _loglik(y, nu):
    """Rician log-likelihood summed over the last axis, up to terms constant in ``nu``."""
    z = y * nu / SIGMA ** 2
    return np.sum(np.log(i0e(z)) - (y - nu) ** 2 / (2 * SIGMA ** 2), axis=-1)


@pytest.fixture(scope="module")
def curves():
    rng = np.random.default_rng(3)
    clean = _signal(TRUTH[:, :1], TRUTH[:, 1:2], TRUTH[:, 2:3])
    model = np.abs(np.asarray(get_model("ir").signal(
        {"T1": TRUTH[:, 0], "k": TRUTH[:, 1], "PD": TRUTH[:, 2]}, PROT)))
    np.testing.assert_allclose(model, clean, rtol=1e-5)  # the same model as the fit's
    return np.hypot(clean + SIGMA * rng.standard_normal(clean.shape),
                    SIGMA * rng.standard_normal(clean.shape))


@pytest.fixture(scope="module")
def exact(curves):
    return ir_posterior(curves, PROT, SIGMA, PRIOR)


def _trapezoid(n):
    t = np.ones(n)
    t[[0, -1]] = 0.5
    return t


def _moments(x, w):
    m = np.sum(w * x)
    return m, np.sqrt(np.sum(w * (x - m) ** 2))


def test_matches_a_brute_force_dense_grid(curves, exact):
    lt = np.linspace(np.log(PRIOR.t1_ms[0]), np.log(PRIOR.t1_ms[1]), 240)
    kk = np.linspace(*PRIOR.k, 61)
    pd = np.linspace(*PRIOR.pd, 451)
    t1g, kg = np.exp(lt)[:, None, None], kk[None, :, None]
    basis = _signal(t1g, kg, 1.0)  # [T, K, N]
    trap = _trapezoid(240)[:, None, None] * _trapezoid(61)[None, :, None] * _trapezoid(451)
    for v, y in enumerate(curves):
        ll = np.stack([_loglik(y, p * basis) for p in pd], axis=-1)  # [T, K, P]
        w = np.exp(ll - ll.max()) * trap
        w /= w.sum()
        for name, x in (("T1", np.exp(lt)[:, None, None]), ("k", kk[None, :, None]),
                        ("PD", pd[None, None, :])):
            mean, sd = _moments(np.broadcast_to(x, w.shape), w)
            assert exact[name]["mean"][v] == pytest.approx(mean, rel=5e-3), (v, name)
            assert exact[name]["sd"][v] == pytest.approx(sd, rel=0.03), (v, name)
            xs = np.broadcast_to(x, w.shape).ravel()
            order = np.argsort(xs)
            c = np.cumsum(w.ravel()[order])
            lo, hi = xs[order][np.searchsorted(c, 0.025)], xs[order][np.searchsorted(c, 0.975)]
            assert exact[name]["low"][v] == pytest.approx(lo, rel=0.02, abs=0.15 * sd), (v, name)
            assert exact[name]["high"][v] == pytest.approx(hi, rel=0.02, abs=0.15 * sd), (v, name)


def test_matches_importance_sampling_from_the_prior(curves, exact):
    rng = np.random.default_rng(0)
    n = 1_000_000
    t1 = np.exp(rng.uniform(np.log(PRIOR.t1_ms[0]), np.log(PRIOR.t1_ms[1]), n))
    k = rng.uniform(*PRIOR.k, n)
    pd = rng.uniform(*PRIOR.pd, n)
    basis = _signal(t1[:, None], k[:, None], 1.0)
    for v, y in enumerate(curves):
        ll = _loglik(y, pd[:, None] * basis)
        w = np.exp(ll - ll.max())
        w /= w.sum()
        ess = 1.0 / np.sum(w ** 2)
        assert ess > 500, (v, ess)
        for name, x in (("T1", t1), ("k", k), ("PD", pd)):
            mean, sd = _moments(x, w)
            se = sd / np.sqrt(ess)
            assert abs(exact[name]["mean"][v] - mean) < 4 * se + 1e-3 * abs(mean), (v, name)
            assert exact[name]["sd"][v] == pytest.approx(sd, rel=4 / np.sqrt(ess) + 0.02), \
                (v, name)


def test_left_out_samples_equal_the_protocol_without_them(curves):
    valid = np.ones(curves.shape, bool)
    valid[:, :3] = False  # e.g. clipped early-TI samples
    coarse = GridPrior(num_t1=32, num_k=12, num_pd=12, coarse_t1=48, coarse_k=9)
    with_mask = ir_posterior(curves * np.where(valid, 1.0, 7.0), PROT, SIGMA, coarse, valid=valid)
    keep = list(range(3, len(PROT)))
    sub = ir_posterior(curves[:, keep], PROT.subset(keep), SIGMA, coarse)
    for name in ("T1", "k", "PD"):
        for key in ("mean", "sd", "low", "high"):
            np.testing.assert_allclose(with_mask[name][key], sub[name][key], rtol=1e-4)


def test_nodes_are_normalised_and_the_truth_is_inside_the_intervals(curves, exact):
    nodes = posterior_nodes(curves, PROT, SIGMA, PRIOR)  # the nodes ir_posterior sums over
    np.testing.assert_allclose(nodes["weight"].sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    for v in range(len(curves)):
        mean_t1 = np.sum(nodes["weight"][v] * nodes["T1"][v])
        assert mean_t1 == pytest.approx(exact["T1"]["mean"][v], rel=1e-4)
        for i, name in enumerate(("T1", "k", "PD")):
            assert exact[name]["low"][v] - exact[name]["sd"][v] < TRUTH[v, i] < \
                exact[name]["high"][v] + exact[name]["sd"][v], (v, name)
    with pytest.raises(ValueError, match=r"expected \[V, 10\]"):
        ir_posterior(curves[:, :4], PROT, SIGMA)
    with pytest.raises(ValueError, match="GridPrior.k"):
        GridPrior(k=(1.2, 0.8))
