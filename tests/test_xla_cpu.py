"""The XLA:CPU flag set at import: when it is added, when it is left alone, and that it is live."""

import importlib.metadata
import os

from qmri_jax import xla_cpu


def _verified():
    return importlib.metadata.version("jaxlib").startswith(xla_cpu.VERIFIED_JAXLIB)


def test_configure_appends_and_respects_user_and_opt_out(monkeypatch):
    # Pretend a verified jaxlib so the logic is checked whatever jaxlib is installed.
    monkeypatch.setattr(importlib.metadata, "version", lambda name: xla_cpu.VERIFIED_JAXLIB[0] + "9")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    assert xla_cpu.configure(env) == "applied"
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                        xla_cpu.YNN_FLAG]
    env = {}
    assert xla_cpu.configure(env) == "applied" and env["XLA_FLAGS"] == xla_cpu.YNN_FLAG
    own = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_dot"}
    assert xla_cpu.configure(own) == "user-set"
    assert own["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    off = {"QMRI_JAX_XLA_CPU_TUNING": "0"}
    assert xla_cpu.configure(off) == "opt-out" and "XLA_FLAGS" not in off


def test_unverified_jaxlib_never_gets_the_flag(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0.0")
    env = {"XLA_FLAGS": "--foo"}
    assert xla_cpu.configure(env) == "jaxlib 99.0.0 not verified"
    assert env["XLA_FLAGS"] == "--foo"


def test_flag_is_live_in_this_process():
    """conftest sets XLA_FLAGS before anything imports jax; importing qmri_jax appended the flag,
    and XLA accepted it (this process compiled and ran with it)."""
    import jax.numpy as jnp

    import qmri_jax
    status = qmri_jax.XLA_CPU_TUNING
    if os.environ.get("QMRI_JAX_XLA_CPU_TUNING") == "0":
        assert status == "opt-out" and not xla_cpu.applied()
    elif not _verified():
        assert status.endswith("not verified") and not xla_cpu.applied()
    elif status == "user-set":  # the user's own value of the flag stays, ours is not appended
        assert "xla_cpu_experimental_ynn_fusion_type" in os.environ["XLA_FLAGS"]
    else:
        assert status == "applied" and xla_cpu.applied()
    assert float(jnp.ones(3).sum()) == 3.0
