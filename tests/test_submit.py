"""`nstray submit` against a real Ray head started here (`ray start --head`, its own temp dir and ports):
the Jobs API runs jobs/stylize_dataset.py with the project as working dir and the config shipped along,
the CLI follows the logs and exits with the job's status, and the outputs are all there."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from nstray.data import synth
from test_pipeline import PLAN

BIN = Path(sys.executable).parent
N_IMAGES = 3


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _pids_of(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (this head's temp dir), never anything else."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(int(entry.name))
    return found


def _stop_head(temp_dir: str) -> None:
    """Stop only the head started in ``temp_dir`` (``ray stop`` would stop every Ray on the machine)."""
    for sig, wait in ((signal.SIGTERM, 4.0), (signal.SIGKILL, 5.0)):
        pids = _pids_of(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _pids_of(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with the dashboard / Jobs API on free ports; yields the dashboard URL and the env it runs with."""
    temp_dir = tempfile.mkdtemp(prefix="nsr", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    port, dash, agent, agent_grpc, metrics, rt_env, client, node_mgr, obj_mgr = _free_ports(9)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
           f"--ray-client-server-port={client}", f"--node-manager-port={node_mgr}",
           f"--object-manager-port={obj_mgr}", "--disable-usage-stats"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"ray start failed:\n{started.stdout}\n{started.stderr}"
        url = f"http://127.0.0.1:{dash}"
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield url, env
    finally:
        _stop_head(temp_dir)


def test_submit_runs_the_job_on_the_head_and_follows_its_logs(ray_head, tmp_path):
    url, env = ray_head
    data = synth.generate(tmp_path / "data", N_IMAGES, seed=2, width=128, height=96)
    out = tmp_path / "styled"
    config = tmp_path / "job.yaml"  # outside the project: shipped to the cluster as a tiny package
    config.write_text(yaml.safe_dump({
        "input": {"annotations": "data/annotations.json", "images": "data/images"},  # relative to the config
        "output": "styled", "variants": 1, "seed": 3, "plan": PLAN,
        "resources": {"actors": 1, "batch_size": 2},
    }))
    result = subprocess.run([str(BIN / "nstray"), "submit", str(config), "--address", url],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs
    assert "SUCCEEDED" in logs and f"styled {N_IMAGES} output(s)" in logs  # the job's own summary, followed
    for i in range(1, N_IMAGES + 1):
        assert (out / "images" / str(i) / "0.png").is_file()
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == N_IMAGES and (out / "contact_sheet.png").is_file()
    assert data.annotations.is_file()


def test_submit_fails_fast_on_a_bad_config(ray_head, tmp_path):
    url, env = ray_head
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"input": {"annotations": "a.json", "images": "i"}, "output": "o", "plan": PLAN,
                                   "resources": {"actors": 0}}))
    result = subprocess.run([str(BIN / "nstray"), "submit", str(bad), "--address", url], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "resources.actors: must be ≥ 1" in result.stderr  # before any submission


def test_submit_runs_a_video_job_with_its_own_entrypoint(ray_head, tmp_path):
    from nstray.data.synth_video import generate_video
    from nstray.video.io import probe

    url, env = ray_head
    made = generate_video(tmp_path / "gen", 12, seed=4, width=64, height=64)
    (tmp_path / "videos").mkdir()
    made.video.rename(tmp_path / "videos" / "drive.mp4")
    config = tmp_path / "video.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "video", "input": {"videos": "videos"}, "output": "styled", "plan": PLAN,
        "resources": {"actors": 1}, "video": {"chunk_frames": 6, "overlap_frames": 2},
    }))
    result = subprocess.run([str(BIN / "nstray"), "submit", str(config), "--address", url],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs
    assert "SUCCEEDED" in logs and "joined 1 video(s)" in logs  # jobs/stylize_video.py's own summary
    assert probe(tmp_path / "styled" / "videos" / "drive" / "0.mp4").frames == 12
