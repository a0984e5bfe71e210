"""What a user sees from `nstray run`: nstray's own lines and summary, not Ray's INFO/WARNING/C++ log lines
(those only with `nstray --verbose`). Runs the real command in its own process on a new local Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from nstray.data import synth

RAY_NOISE = re.compile(r"\b(INFO|WARNING)\b.*(worker\.py|streaming_executor|authentication|__init__\.py)|core_worker\.cc|"
                       r"logging\.cc|Started a local Ray instance|"
                       # Ray Train's controller and workers
                       r"Requesting resources|worker group|Moving model to device|Checkpoint successfully created|"
                       r"Reporting training result|PlacementGroupCleaner")


def _own_cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NSTRAY_VERBOSE")}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nsq", dir="/tmp")  # a cluster of its own (short: unix sockets)
    return env


def test_nstray_run_prints_no_ray_log_lines(tmp_path):
    data = synth.generate(tmp_path / "data", 2, seed=1, width=64, height=48)
    cfg = {"input": {"annotations": str(data.annotations), "images": str(data.images_dir)},
           "output": str(tmp_path / "styled"), "contact_sheet": 0,
           "plan": {"styles": {"a": {"kind": "multistyle", "index": 2}}, "parts": {"body": {"style": "a"}}},
           "resources": {"actors": 1, "batch_size": 2}}
    (tmp_path / "job.yaml").write_text(json.dumps(cfg))
    env = _own_cluster_env()
    try:
        r = subprocess.run([sys.executable, "-m", "nstray.cli", "run", str(tmp_path / "job.yaml"), "--no-progress"],
                           capture_output=True, text=True, env=env, timeout=300)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done 2, skipped (already done) 0, failed 0" in r.stdout
    noise = [line for line in (r.stdout + r.stderr).splitlines() if RAY_NOISE.search(line)]
    assert noise == [], noise


def test_nstray_train_seg_prints_its_epochs_and_no_ray_log_lines(tmp_path):
    data = synth.generate(tmp_path / "data", 4, seed=2, width=64, height=48)
    env = _own_cluster_env()
    try:
        r = subprocess.run([sys.executable, "-m", "nstray.cli", "train-seg", "--data", str(data.annotations),
                            "--images", str(data.images_dir), "--out", str(tmp_path / "runs"), "--epochs", "1",
                            "--arch", "lraspp_mobilenet_v3_large",
                            "--size", "32", "--batch-size", "2", "--backbone-weights", "none", "--loader-workers", "0",
                            "--val-fraction", "0.25", "--precise-bn", "1"],
                           capture_output=True, text=True, env=env, timeout=300)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "epoch 1/1: loss" in out
    noise = [line for line in out.splitlines() if RAY_NOISE.search(line)]
    assert noise == [], noise
