"""GPU utilisation per actor in job_report.json: the nvidia-smi sampler and how the report keeps it.

No GPU here: the sampler runs a stand-in ``nvidia-smi`` (a script on PATH that prints readings as
the real one does with ``--format=csv,noheader,nounits``); the report side is pure Python.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from nstray.pipeline.gpu_usage import GpuUtilization, visible_gpu
from nstray.pipeline.report import RunStats, stage_lines
from nstray.pipeline.stages import WorkerTag, worker_info


def _fake_smi(tmp_path: Path, readings: list[str], rc: int = 0) -> str:
    """An executable that prints the next reading per call (the last one again when they run out) and logs its args."""
    state = tmp_path / "calls"
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import os, sys, pathlib\n"
        f"state = pathlib.Path({str(state)!r})\n"
        "n = int(state.read_text()) if state.exists() else 0\n"
        "tmp = state.with_suffix('.tmp')\n"
        "tmp.write_text(str(n + 1))\n"
        "os.replace(tmp, state)  # atomic: the test polls this file while the sampler runs\n"
        f"readings = {readings!r}\n"
        "print(readings[min(n, len(readings) - 1)])\n"
        f"pathlib.Path({str(tmp_path / 'args')!r}).write_text(' '.join(sys.argv[1:]))\n"
        f"sys.exit({rc})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_sampler_averages_readings_of_the_actors_gpu(tmp_path):
    smi = _fake_smi(tmp_path, ["40", "60", "80"])
    usage = GpuUtilization("3", interval=0.05, command=smi)
    assert usage.start()
    deadline = time.monotonic() + 20
    while int((tmp_path / "calls").read_text()) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    usage.stop()  # joins the sampler: every reading taken is in the mean
    n = int((tmp_path / "calls").read_text())
    assert n >= 3
    # 40, 60, then 80 for every later reading
    assert usage.mean() == round((40 + 60 + 80 * (n - 2)) / n, 1)
    assert (tmp_path / "args").read_text() == "--query-gpu=utilization.gpu --format=csv,noheader,nounits -i 3"


def test_no_reading_no_figure(tmp_path):
    assert not GpuUtilization("0", command=str(tmp_path / "no-such-nvidia-smi")).start()
    failing = GpuUtilization("0", command=_fake_smi(tmp_path, ["No devices were found"], rc=6))
    assert not failing.start() and failing.mean() is None
    (tmp_path / "na").mkdir()
    garbled = GpuUtilization("0", command=_fake_smi(tmp_path / "na", ["[N/A]"]))
    assert garbled.read() is None


def test_visible_gpu_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert visible_gpu(0) == "5" and visible_gpu(1) == "7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a2b")
    assert visible_gpu(0) == "GPU-1a2b"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu(0) == "0"


def test_a_cpu_actor_tags_rows_without_gpu_util():
    tag = WorkerTag("cpu")
    assert tag.usage is None and json.loads(tag.json()) == worker_info("cpu")


def _rows(worker: dict, n: int) -> list[dict]:
    return [{"status": "done", "image_id": i, "stylize_s": 0.01, "worker": json.dumps(worker, sort_keys=True)}
            for i in range(n)]


def test_report_keeps_each_gpu_actors_latest_utilisation():
    stats = RunStats()
    a = {"actor": "a", "pid": 1, "device": "cuda"}
    b = {"actor": "b", "pid": 2, "device": "cuda"}
    c = {"actor": "c", "pid": 3, "device": "cpu"}
    stats.add(_rows(a, 1))  # before the sampler's first mean: the plain worker JSON, the same actor
    stats.add(_rows({**a, "gpu_util": 20.0}, 3))
    stats.add(_rows({**b, "gpu_util": 50.0}, 2))
    stats.add(_rows(c, 3))
    stats.add(_rows({**a, "gpu_util": 35.5}, 4))  # a's mean over a longer time: the figure to keep
    report = stats.report(run_id="r", output="o", pipeline_seconds=1.0, seconds=1.0, skipped=0)
    workers = {w["actor"]: w for w in report["actors"]["workers"]}
    assert {k: w["outputs"] for k, w in workers.items()} == {"a": 8, "b": 2, "c": 3}  # one entry per actor
    assert workers["a"]["gpu_utilization"] == 35.5 and workers["b"]["gpu_utilization"] == 50.0
    assert "gpu_utilization" not in workers["c"] and "gpu_util" not in workers["a"]
    assert report["actors"]["gpu_utilization_mean"] == 42.8
    assert report["actors"]["devices"] == {"cuda": 2, "cpu": 1}
    assert any(line.startswith("GPU utilisation (nvidia-smi, while the actors ran): 43% mean over 2 GPU actor(s)")
               for line in stage_lines(report))
