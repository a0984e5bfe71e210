"""Process settings that make CPU inference fast by default, applied once when ``nstray`` is imported.

PyTorch's CPU allocator has no cache: every big intermediate of a forward pass is a fresh
``malloc``. glibc serves blocks above its mmap threshold (at most 32 MiB) with ``mmap`` and gives
freed heap tops back to the OS, so each forward page-faults its big feature maps in again, which
costs more than the convolutions on small or virtualised machines. ``mallopt(M_MMAP_MAX, 0)`` and
a high ``M_TRIM_THRESHOLD`` make glibc keep freed memory for reuse (an arena, as onnxruntime has):
the process keeps its peak resident size, as a long-lived worker does anyway.

OpenMP worker threads spin after each parallel region by default; on a machine shared with other
work (other processes, Ray tasks, the decode/encode threads of a job) the spinning steals the
cores that work needs. ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep; OpenMP reads it only when
torch loads, so it is set here only if torch is not imported yet (the ``nstray`` command imports
this package first).

Both are skipped where the user decided: ``NSTRAY_CPU_TUNING=off`` turns this module off, a set
``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``OMP_WAIT_POLICY`` is left as it is. Nothing
here imports torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["CPU_ENV", "applied", "configure", "retain_freed_memory"]

# the same settings as environment variables, for child processes (Ray workers) that start their own Python
CPU_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647", "OMP_WAIT_POLICY": "PASSIVE"}

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1

applied: dict[str, bool] = {"malloc": False, "omp_wait_policy": False}


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
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        applied["omp_wait_policy"] = True
    return applied
