"""Process settings that make CPU inference fast by default, applied once when ``nstray`` is imported.

PyTorch's CPU allocator has no cache: every big intermediate of a forward pass is a fresh
``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB) with ``mmap`` and gives
freed heap tops back to the OS, so each forward page-faults its big feature maps in again, which
costs more than the convolutions on small or virtualised machines. ``mallopt(M_MMAP_MAX, 0)`` and
a high ``M_TRIM_THRESHOLD`` make glibc keep freed memory for reuse (an arena, as onnxruntime has):
the process keeps its peak resident size, as a long-lived worker does anyway.

OpenMP worker threads wait for the next parallel region by spinning, then sleep. A forward pass
is hundreds of parallel regions a few microseconds apart: threads that sleep at once
(``OMP_WAIT_POLICY=PASSIVE``) pay a futex wake-up on every one (about 25% of a 512² multi-style
forward on 2 cores), threads that spin long (libgomp's default 300,000 spins, about 10 ms of a
core after the last op; ``ACTIVE``: forever) take the cores that other work needs (other
processes, Ray tasks, a job's decode/encode threads). ``GOMP_SPINCOUNT=10000`` spins for well
under a millisecond: the regions of one forward pass find their threads awake, and an idle
process sleeps. libgomp (PyTorch's OpenMP on Linux) reads it only when torch loads, so it is set
here only if torch is not imported yet (the ``nstray`` command imports this package first).
Measured by ``benchmarks/feedforward.py`` (``--tuning off`` for the plain process).

Both are skipped where the user decided: ``NSTRAY_CPU_TUNING=off`` turns this module off; a set
``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_``, or a set ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT``,
is left as it is. Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["CPU_ENV", "applied", "configure", "retain_freed_memory"]

# the same settings as environment variables, for child processes (Ray workers) that start their own Python
CPU_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647", "GOMP_SPINCOUNT": "10000"}

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1

applied: dict[str, bool] = {"malloc": False, "omp_spin": False}


def retain_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (no mmap for big blocks, no trimming); False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def configure() -> dict[str, bool]:
    """Apply the fast CPU settings unless the user chose otherwise (see the module docstring); idempotent."""
    if os.environ.get("NSTRAY_CPU_TUNING", "").lower() in {"off", "0", "false", "no"}:
        return applied
    if not applied["malloc"] and not any(k in os.environ for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")):
        applied["malloc"] = retain_freed_memory()
    if not any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")) and "torch" not in sys.modules:
        os.environ["GOMP_SPINCOUNT"] = CPU_ENV["GOMP_SPINCOUNT"]
        applied["omp_spin"] = True
    return applied
