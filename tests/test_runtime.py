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
import json, os, sys
import nstray
import torch
from nstray._runtime import applied

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss_kib()
t = torch.ones(96 * 2**20 // 4)  # 96 MiB, above glibc's largest mmap threshold
del t
print(json.dumps({"applied": applied, "omp": os.environ.get("OMP_WAIT_POLICY"),
                  "kept_mib": (rss_kib() - before) / 1024}))
"""


def _probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "NSTRAY_CPU_TUNING")}
    base["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux")
def test_import_applies_fast_settings_and_freed_memory_is_kept():
    r = _probe()
    assert r["applied"] == {"malloc": True, "omp_wait_policy": True}
    assert r["omp"] == "PASSIVE"
    assert r["kept_mib"] > 64  # the freed 96 MiB stays in the process for the next forward pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc are Linux")
def test_off_switch_and_users_own_settings_are_respected():
    off = _probe(NSTRAY_CPU_TUNING="off")
    assert off["applied"] == {"malloc": False, "omp_wait_policy": False}
    assert off["omp"] is None
    assert off["kept_mib"] < 32  # glibc's default: a big block is an mmap, given back when freed
    own = _probe(OMP_WAIT_POLICY="ACTIVE", MALLOC_MMAP_MAX_="65536")
    assert own["applied"] == {"malloc": False, "omp_wait_policy": False}
    assert own["omp"] == "ACTIVE"


def test_cpu_actor_env_is_the_same_settings():
    from nstray._runtime import CPU_ENV
    from nstray.pipeline.skeleton import _CPU_ACTOR_ENV

    assert _CPU_ACTOR_ENV is CPU_ENV
    assert CPU_ENV == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647", "OMP_WAIT_POLICY": "PASSIVE"}
