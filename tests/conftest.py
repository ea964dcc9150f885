"""Test setup: four fake CPU devices (for sharding tests), shared paths and fixtures."""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
