"""Timing shared by the bench scripts: a project callable and its peer in alternating rounds."""

from __future__ import annotations

import os
import platform
import statistics
import time


def once(fn):
    """Seconds one call of ``fn()`` takes (``fn`` waits for its own result)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(a, b, rounds, reps, warmup=True):
    """Times ``a`` and ``b`` in ``rounds`` alternating rounds of ``reps`` calls (a, b, a, b, ...),
    so that a load change on a shared machine hits both; with ``warmup`` each is called once first,
    untimed. Returns (median time of a, median time of b, per-round ratios b / a of the round
    medians); ``b`` may be None (its time is then nan and the ratios empty)."""
    if warmup:
        a()
        if b is not None:
            b()
    ta, tb, ratios = [], [], []
    for _ in range(rounds):
        ra = [once(a) for _ in range(reps)]
        ta += ra
        if b is not None:
            rb = [once(b) for _ in range(reps)]
            tb += rb
            ratios.append(statistics.median(rb) / statistics.median(ra))
    return statistics.median(ta), statistics.median(tb) if tb else float("nan"), ratios


def median_ratio(ratios):
    """The median of per-round ratios (nan without any)."""
    return statistics.median(ratios) if ratios else float("nan")


def host():
    """What the CPU side ran on, for the JSON line: the CPU model, its core count and its widest
    vector extension (the project/peer ratio depends on it: e.g. torch's oneDNN convolutions
    use AVX-512 where the CPU has it)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    vector = next((v for v in ("avx512f", "avx2", "avx", "neon", "asimd") if v in flags), "unknown")
    return {"cpu": model, "cores": os.cpu_count(), "vector": vector}
