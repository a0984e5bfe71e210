"""Faults the dataset job survives, on real Ray and a real S3 server, each checked for exactly-once outputs:

- a stylizer actor's process killed mid-job: Ray restarts it and redoes its batch;
- the S3 server (SeaweedFS) stopped for seconds mid-job and restarted: bounded retries with backoff ride it out;
- the driver killed mid-job (SIGKILL) and the job rerun: it finishes the rest, and the final output set is
  the one an uninterrupted run makes; no half-written image is ever visible under its final key.

"Exactly once": one manifest row per (image, variant) across every part file of the run, one output object
per (image, variant) and nothing else under ``images/``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nstray import storage
from nstray.data import synth
from nstray.pipeline import outputs, run_job

N_IMAGES = 12
VARIANTS = 2
SIZE = (160, 120)
PLAN = {
    "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 12}},
    "parts": {"wheel": {"style": ["a", "b"]}, "body": {"style": "a"}, "window": {"style": "b"},
              "hood": {"style": "b"}, "background": {"style": "none"}},
}
EXPECTED = {(i, v) for i in range(1, N_IMAGES + 1) for v in range(VARIANTS)}
REPO = Path(__file__).resolve().parents[1]


def config(annotations: str, images: str, output: str, **resources) -> dict:
    return {"input": {"annotations": str(annotations), "images": str(images)}, "output": str(output),
            "variants": VARIANTS, "seed": 3, "plan": PLAN, "contact_sheet": 0,
            "resources": {"actors": 2, "batch_size": 1, **resources}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synth.SynthDataset:
    return synth.generate(tmp_path_factory.mktemp("faults"), N_IMAGES, seed=21, width=SIZE[0], height=SIZE[1])


def manifest_rows(output: str) -> list[dict]:
    """Every row of every manifest part (not the latest-row view), local or S3."""
    rows = []
    for uri in storage.list_files(storage.join(output, outputs.MANIFEST_DIR)):
        if uri.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
    return rows


def assert_exactly_once(output: str, image_keys: set[str]) -> None:
    rows = manifest_rows(output)
    keys = [(r["image_id"], r["variant"]) for r in rows]
    assert sorted(keys) == sorted(EXPECTED), "each output must be recorded exactly once"
    assert {r["status"] for r in rows} == {"done"}
    assert image_keys == {f"images/{i}/{v}.png" for i, v in EXPECTED}


def local_images(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file()}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Background(threading.Thread):
    """Runs ``fn`` in a thread and re-raises its exception on ``result()``."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.error, self.value = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def result(self, timeout: float = 120):
        self.join(timeout)
        if self.error is not None:
            raise self.error
        return self.value


# ---------------------------------------------------------------- an actor killed mid-job


def _alive_stylizer_actors(since_ms: int) -> list[dict]:
    import ray
    from ray._private.state import state

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    table = state.actor_table(None, job_id=job, actor_state_name="ALIVE")
    return [a for a in table.values() if "MapWorker" in a["ActorClassName"] and a["StartTime"] >= since_ms]


def test_a_killed_actor_is_replaced_and_its_work_redone(ray_cluster, dataset, tmp_path):
    out = tmp_path / "styled"
    since = int(time.time() * 1000)
    killed: list[int] = []

    def kill_one_actor_mid_job() -> None:
        wait_for(lambda: len(local_images(out)) >= 3 if (out / "images").is_dir() else False, 240,
                 "the first outputs")
        actors = _alive_stylizer_actors(since)
        assert actors, "no live stylizer actor found"
        os.kill(actors[0]["Pid"], signal.SIGKILL)
        killed.append(actors[0]["Pid"])

    killer = Background(kill_one_actor_mid_job)
    summary = run_job(config(dataset.annotations, dataset.images_dir, out))
    killer.result()
    assert killed and len(local_images(out)) == len(EXPECTED)
    assert (summary.done, summary.failed) == (len(EXPECTED), 0)
    assert_exactly_once(str(out), local_images(out))
    assert not list(out.rglob("*.partial"))  # a write the kill interrupted left no temporary file behind
    report = json.loads((out / "job_report.json").read_text())
    assert report["actors"]["restarts"] >= 1 and report["actors"]["restarts_seen_by_ray"] >= 1
    for key in local_images(out):  # every output whole
        Image.open(out / key).load()


# ---------------------------------------------------------------- S3 down for seconds mid-job


def test_an_s3_outage_mid_job_is_ridden_out(ray_cluster, s3_server, s3_bucket, dataset, monkeypatch):
    monkeypatch.setenv("NSTRAY_S3_MAX_ATTEMPTS", "10")  # the defaults; the test session lowers them
    monkeypatch.setenv("NSTRAY_S3_RETRY_SECONDS", "60")
    coco = json.loads(Path(dataset.annotations).read_text())
    for img in coco["images"]:
        storage.write_bytes(f"{s3_bucket}/in/images/{img['file_name']}",
                            (dataset.images_dir / img["file_name"]).read_bytes())
    storage.write_bytes(f"{s3_bucket}/in/annotations.json", json.dumps(coco).encode())
    out = f"{s3_bucket}/styled"
    bucket = storage.parse(s3_bucket).bucket
    client = boto3.client("s3")

    def listing() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="styled/images/")
        return {o["Key"].removeprefix("styled/") for p in pages for o in p.get("Contents", [])}

    outage: dict[str, float] = {}

    def stop_and_restart_s3() -> None:
        wait_for(lambda: len(listing()) >= 2, 240, "the first outputs on S3")
        outage["outputs_at_stop"] = len(listing())
        t0 = time.monotonic()
        s3_server.stop()
        time.sleep(4)
        s3_server.start()
        outage["seconds"] = time.monotonic() - t0
        outage["outputs_before"] = len(listing())

    chaos = Background(stop_and_restart_s3)
    # one actor: the job is still running when the server goes down, even on a fast machine
    summary = run_job(config(f"{s3_bucket}/in/annotations.json", f"{s3_bucket}/in/images", out, actors=1))
    chaos.result()
    assert outage["seconds"] >= 4 and outage["outputs_before"] < len(EXPECTED), outage
    assert (summary.done, summary.failed, summary.error_rows) == (len(EXPECTED), 0, 0)
    images = listing()
    assert_exactly_once(out, images)
    for key in images:
        Image.open(io.BytesIO(storage.read_bytes(f"{out}/{key}"))).load()


# ---------------------------------------------------------------- the driver killed mid-job, then rerun


def test_a_killed_driver_reruns_to_the_uninterrupted_output_set(ray_cluster, dataset, tmp_path):
    import ray

    cfg_kill = config(dataset.annotations, dataset.images_dir, tmp_path / "resumed")
    (tmp_path / "job.yaml").write_text(json.dumps(cfg_kill))
    out = tmp_path / "resumed"
    env = dict(os.environ, NSTRAY_MANIFEST_FLUSH_SECONDS="0.5", PYTHONUNBUFFERED="1")
    driver = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "stylize_dataset.py"), str(tmp_path / "job.yaml"), "--no-progress",
         "--address", ray.get_runtime_context().gcs_address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: driver.poll() is not None or any((out / "manifest").glob("part-*.parquet")), 300,
                 "the driver's first manifest part")
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    recorded = {(r["image_id"], r["variant"]) for r in manifest_rows(str(out)) if r["status"] == "done"}
    assert 0 < len(recorded) < len(EXPECTED)
    for key in local_images(out):  # what is under a final key is whole, even right after the kill
        if not Path(key).name.startswith("."):
            Image.open(out / key).load()

    resumed = run_job(cfg_kill)
    assert resumed.skipped >= len(recorded) and resumed.done + resumed.skipped == len(EXPECTED)
    assert resumed.failed == 0 and not list(out.rglob("*.partial"))

    reference = run_job(config(dataset.annotations, dataset.images_dir, tmp_path / "uninterrupted"))
    ref = tmp_path / "uninterrupted"
    assert reference.done == len(EXPECTED)
    assert local_images(out) == local_images(ref) == {f"images/{i}/{v}.png" for i, v in EXPECTED}
    for key in local_images(ref):
        a, b = (np.asarray(Image.open(root / key).convert("RGB")).astype(int) for root in (out, ref))
        assert np.abs(a - b).max() <= 2, key  # batching may differ: float rounding at most
    latest = {(r["image_id"], r["variant"]): r for r in outputs.read_manifest(str(out)).to_pylist()}
    ref_latest = {(r["image_id"], r["variant"]): r for r in outputs.read_manifest(str(ref)).to_pylist()}
    assert set(latest) == set(ref_latest) == EXPECTED
    assert all(latest[k]["styles"] == ref_latest[k]["styles"] and latest[k]["status"] == "done" for k in EXPECTED)
    coco, ref_coco = (json.loads((root / "annotations.json").read_text()) for root in (out, ref))
    assert [(i["file_name"], i["nstray"]["styles"]) for i in coco["images"]] == \
        [(i["file_name"], i["nstray"]["styles"]) for i in ref_coco["images"]]
    assert len(coco["annotations"]) == len(ref_coco["annotations"])


# ---------------------------------------------------------------- S3 throttling (503 SlowDown)


def test_throttling_is_retried_with_backoff_up_to_a_bound(s3_server, s3_bucket, monkeypatch):
    from s3proxy import ThrottlingProxy

    uri = f"{s3_bucket}/obj.bin"
    storage.write_bytes(uri, b"x" * 1000)
    path = "/" + storage.parse(uri).bucket + "/obj.bin"
    monkeypatch.setenv("NSTRAY_S3_MAX_ATTEMPTS", "5")
    with ThrottlingProxy(s3_server.endpoint, lambda method, p, n: p == path and n <= 3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        assert storage.read_bytes(uri) == b"x" * 1000  # three 503 SlowDown, then the object
        assert proxy.throttled[path] == 3
    monkeypatch.setenv("NSTRAY_S3_MAX_ATTEMPTS", "3")
    with ThrottlingProxy(s3_server.endpoint, lambda method, p, n: p == path) as proxy:  # it never ends
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        with pytest.raises(storage.StorageError, match=f"cannot read {uri}: S3 error SlowDown"):
            storage.read_bytes(uri)
        assert proxy.throttled[path] == 3  # bounded: exactly NSTRAY_S3_MAX_ATTEMPTS tries


def test_a_record_throttled_for_good_fails_alone_with_its_reason(ray_cluster, s3_server, s3_bucket, dataset,
                                                                  monkeypatch):
    from s3proxy import ThrottlingProxy

    coco = json.loads(Path(dataset.annotations).read_text())
    images = coco["images"][:6]
    coco = dict(coco, images=images, annotations=[a for a in coco["annotations"]
                                                  if a["image_id"] in {i["id"] for i in images}])
    for img in images:
        storage.write_bytes(f"{s3_bucket}/in/images/{img['file_name']}",
                            (dataset.images_dir / img["file_name"]).read_bytes())
    storage.write_bytes(f"{s3_bucket}/in/annotations.json", json.dumps(coco).encode())
    victim = images[2]
    bucket = storage.parse(s3_bucket).bucket

    def rule(method: str, path: str, n: int) -> bool:
        if not path.startswith(f"/{bucket}/in/images/") or method != "GET":
            return False
        return path.endswith("/" + victim["file_name"]) or n == 1  # the victim always; every other image once

    out = f"{s3_bucket}/styled"
    with ThrottlingProxy(s3_server.endpoint, rule) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)  # the driver's, forwarded to every worker
        summary = run_job(dict(config(f"{s3_bucket}/in/annotations.json", f"{s3_bucket}/in/images", out),
                               variants=1))
    assert (summary.done, summary.failed) == (5, 1)
    assert all(proxy.throttled[f"/{bucket}/in/images/{i['file_name']}"] >= 1 for i in images)
    errors = pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/errors.parquet"))).to_pylist()
    assert [(e["image_id"], e["stage"]) for e in errors] == [(victim["id"], "read")]
    assert "SlowDown" in errors[0]["reason"] and errors[0]["fix"]
    report = summary.report
    assert report["errors"]["by_stage"] == {"read": 1}
    assert any("SlowDown" in reason for reason in report["errors"]["by_reason"])
