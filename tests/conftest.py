"""Test setup: four fake CPU devices (for sharding tests), shared paths and fixtures."""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the session (a fresh folder, removed at exit): the tests build the same
# tiny networks, train steps and samplers many times, and XLA:CPU takes 5-15 s for each.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _CACHE = tempfile.mkdtemp(prefix="qmri_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QMRI_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir():
    """``../shared`` beside the checkout; tests that need it skip with a reason where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set QMRI_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def nist_dir(shared_dir):
    path = shared_dir / "nist_phantom" / "A"
    if not path.is_dir():
        pytest.skip(f"NIST phantom scans not found at {path}")
    return path
