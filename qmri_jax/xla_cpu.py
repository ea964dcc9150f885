"""XLA:CPU settings that this project's networks need to be fast on a CPU, applied at import.

jaxlib 0.10 hands every convolution on the CPU to YNNPACK (``ynn_fusion`` in a profile). For the
convolutions of these U-Nets that is the slow path: measured on the 2-core CI machine, the filter
gradient of a 3x3 conv on ``[8, 64, 64, 128] -> 128`` channels took 245 ms through YNNPACK and 60 ms
through XLA's Eigen convolution (the forward pass 51 vs 61 ms), and a whole training step of the
``bench/train_speed.py`` U-Net 380 vs 292 ms, of the ``bench/ddpm_speed.py`` DiffusionUNet 7.2 vs
5.2 s. So ``import qmri_jax`` appends

    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution

to ``XLA_FLAGS`` (YNNPACK keeps its other fusions, dots included). It only takes effect if JAX has
not created its CPU backend yet (import qmri_jax first, or set the flag yourself); the flag is
ignored by GPU and TPU compilations. It is left alone when:

* ``XLA_FLAGS`` already mentions ``xla_cpu_experimental_ynn_fusion_type`` (your setting wins);
* ``QMRI_JAX_XLA_CPU_TUNING=0`` is set (opt out);
* the installed jaxlib is not one where the flag was verified (:data:`VERIFIED_JAXLIB`): XLA
  aborts the process on a flag it does not know, so an unverified jaxlib is never given it.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings

__all__ = ["YNN_FLAG", "VERIFIED_JAXLIB", "configure", "applied"]

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
VERIFIED_JAXLIB = ("0.10.",)  # version prefixes where YNN_FLAG parses and was measured faster


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without this private helper: assume started
        return True


def configure(environ=None) -> str:
    """Append :data:`YNN_FLAG` to ``environ["XLA_FLAGS"]`` where it applies (see the module doc).

    Returns why: ``"applied"``, ``"user-set"``, ``"opt-out"``, ``"jaxlib <v> not verified"``,
    ``"no jaxlib"`` or ``"too late"`` (JAX's backend already exists: the flag is not added and a
    warning says how to get it).
    """
    env = os.environ if environ is None else environ
    if env.get("QMRI_JAX_XLA_CPU_TUNING", "1") == "0":
        return "opt-out"
    flags = env.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return "user-set"
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return "no jaxlib"
    if not version.startswith(VERIFIED_JAXLIB):
        return f"jaxlib {version} not verified"
    if environ is None and _backends_started():
        import jax
        if jax.default_backend() != "cpu":
            return "too late (not needed: backend is " + jax.default_backend() + ")"
        warnings.warn("qmri_jax was imported after JAX created its backends, so XLA:CPU still runs "
                      "convolutions through YNNPACK (up to 4x slower gradients here); import "
                      f"qmri_jax first or set XLA_FLAGS='{YNN_FLAG}'", RuntimeWarning, stacklevel=3)
        return "too late"
    env["XLA_FLAGS"] = f"{flags} {YNN_FLAG}".strip()
    return "applied"


def applied() -> bool:
    """Whether the current process's ``XLA_FLAGS`` carries :data:`YNN_FLAG`."""
    return YNN_FLAG in os.environ.get("XLA_FLAGS", "").split()
