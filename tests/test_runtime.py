"""nstray's process settings at import (nstray/_runtime.py): fast CPU inference with no environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# run in a fresh interpreter: the settings apply once per process, before torch loads
_PROBE = r"""
import json, os, resource, sys, time
import nstray
import torch
from nstray._runtime import applied

def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

# OpenMP threads after a parallel op: how much CPU the process burns while it has nothing to do
torch.set_num_threads(2)
x, w = torch.rand(1, 32, 128, 128), torch.rand(32, 32, 3, 3)
burnt = 0.0
for _ in range(5):
    torch.nn.functional.conv2d(x, w)
    c0 = cpu_s()
    time.sleep(0.1)
    burnt += cpu_s() - c0

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss_kib()
t = torch.ones(96 * 2**20 // 4)  # 96 MiB, above glibc's largest mmap threshold
del t
print(json.dumps({"applied": applied, "omp": os.environ.get("OMP_WAIT_POLICY"),
                  "spin": os.environ.get("GOMP_SPINCOUNT"), "kept_mib": (rss_kib() - before) / 1024,
                  "idle_cpu_ms": burnt / 5 * 1e3}))
"""


def _probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                         "NSTRAY_CPU_TUNING")}
    base["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux")
def test_import_applies_fast_settings_and_freed_memory_is_kept():
    r = _probe()
    assert r["applied"] == {"malloc": True, "omp_spin": True}
    assert r["spin"] == "10000" and r["omp"] is None
    assert r["kept_mib"] > 64  # the freed 96 MiB stays in the process for the next forward pass
    # OpenMP threads spin briefly, then sleep: an idle 100 ms costs ~0 CPU (spinning forever: ~100 ms)
    assert r["idle_cpu_ms"] < 4, r  # measured 0.9 ms; libgomp's default spin: 8.7 ms


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and getrusage are Linux")
def test_idle_cpu_probe_sees_threads_that_spin():
    """The probe above can fail: with OpenMP threads told to spin, the idle 100 ms burn a core."""
    r = _probe(OMP_WAIT_POLICY="ACTIVE")
    assert r["applied"]["omp_spin"] is False
    assert r["idle_cpu_ms"] > 50, r


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux")
def test_off_switch_and_users_own_settings_are_respected():
    off = _probe(NSTRAY_CPU_TUNING="off")
    assert off["applied"] == {"malloc": False, "omp_spin": False}
    assert off["omp"] is None and off["spin"] is None
    assert off["kept_mib"] < 32  # glibc's default: a big block is an mmap, given back when freed
    own = _probe(OMP_WAIT_POLICY="ACTIVE", MALLOC_MMAP_MAX_="65536")
    assert own["applied"] == {"malloc": False, "omp_spin": False}
    assert own["omp"] == "ACTIVE" and own["spin"] is None
    assert _probe(GOMP_SPINCOUNT="123")["spin"] == "123"


def test_cpu_actor_env_is_the_same_settings():
    from nstray._runtime import CPU_ENV
    from nstray.pipeline.skeleton import _CPU_ACTOR_ENV

    assert _CPU_ACTOR_ENV is CPU_ENV
    assert CPU_ENV == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647", "GOMP_SPINCOUNT": "10000"}
