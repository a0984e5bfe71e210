"""Data safety of the dataset job (issue 10), on real files, a real S3 server and real Ray:

- the job never writes where it reads: an output equal to the dataset root, or inside the images folder, is
  refused before any work, locally and on S3, and the input stays byte-identical;
- resume verifies what it trusts: a deleted and a truncated output are redone by a plain rerun, a corrupted
  one (same size) by ``--verify``; a format change leaves one manifest row per output and no old-extension file;
- one job per output: a second job refuses naming the holder; a dead holder's lease is taken over;
- a symlink in the images folder pointing outside it is reported as outside and never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from nstray import storage
from nstray.cli import main as cli_main
from nstray.data import synth
from nstray.data.coco import validate
from nstray.pipeline import outputs, run_job
from nstray.pipeline.lease import LEASE_FILE, LeaseHeld, acquire
from nstray.pipeline.safety import OutputOverlapsInput
from test_faults import manifest_rows

PLAN = {
    "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 12}},
    "parts": {"wheel": {"style": ["a", "b"]}, "body": {"style": "a"}, "background": {"style": "none"}},
}
N_IMAGES = 4


def job(annotations, images, output, **over) -> dict:
    cfg = {"input": {"annotations": str(annotations), "images": str(images)}, "output": str(output),
           "variants": 1, "seed": 5, "plan": PLAN, "contact_sheet": 0,
           "resources": {"actors": 1, "batch_size": 2}}
    cfg.update(over)
    return cfg


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synth.SynthDataset:
    return synth.generate(tmp_path_factory.mktemp("safety"), N_IMAGES, seed=3, width=96, height=72)


# ---------------------------------------------------------------- inputs are read-only


@pytest.mark.parametrize("where", ["root", "images", "images/sub", "annotations"])
def test_an_output_overlapping_the_input_is_refused_and_the_input_untouched(dataset, tmp_path, where):
    root = tmp_path / "ds"
    shutil.copytree(dataset.root, root)
    before = tree_digest(root)
    output = {"root": root, "images": root / "images", "images/sub": root / "images" / "styled",
              "annotations": root / "annotations.json"}[where]
    with pytest.raises(OutputOverlapsInput) as err:
        run_job(job(root / "annotations.json", root / "images", output))
    msg = str(err.value)
    assert str(output) in msg and ("input.annotations" in msg or "input.images" in msg) and "fix:" in msg
    assert tree_digest(root) == before  # byte-identical, and nothing added


def test_an_output_reached_through_a_symlink_is_refused(dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset.root, root)
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(OutputOverlapsInput):
        run_job(job(root / "annotations.json", root / "images", tmp_path / "link"))


def test_the_cli_refusal_is_a_clean_error(dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset.root, root)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps(job(root / "annotations.json", root / "images", root)))
    result = CliRunner().invoke(cli_main, ["run", str(cfg), "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "refusing to run" in result.output and str(root) in result.output


def test_an_s3_output_equal_to_the_dataset_prefix_is_refused(s3_bucket, dataset):
    client = storage.s3_client()
    bucket = storage.parse(s3_bucket).bucket
    for p in sorted(dataset.root.rglob("*")):
        if p.is_file():
            client.put_object(Bucket=bucket, Key=f"data/{p.relative_to(dataset.root)}", Body=p.read_bytes())
    ann = f"{s3_bucket}/data/annotations.json"
    before = storage.read_bytes(ann)
    for output in (f"{s3_bucket}/data", f"{s3_bucket}/data/", f"{s3_bucket}/data/images/out"):
        with pytest.raises(OutputOverlapsInput):
            run_job(job(ann, f"{s3_bucket}/data/images", output))
    assert storage.read_bytes(ann) == before
    assert not any(u.endswith(LEASE_FILE) for u in storage.list_files(s3_bucket))
    # a prefix that merely starts with the same letters is another location
    from nstray.pipeline.safety import check_output, job_inputs

    check_output(f"{s3_bucket}/data-styled", job_inputs(ann, f"{s3_bucket}/data/images"))


# ---------------------------------------------------------------- verified resume


def test_missing_truncated_and_corrupted_outputs_are_redone(ray_cluster, dataset, tmp_path):
    out = tmp_path / "out"
    cfg = job(dataset.annotations, dataset.images_dir, out)
    first = run_job(cfg)
    assert first.done == N_IMAGES and first.failed == 0
    rows = {r["image_id"]: r for r in outputs.read_manifest(str(out)).to_pylist()}
    for r in rows.values():
        data = (out / r["output_key"]).read_bytes()
        assert r["size"] == len(data) and r["sha256"] == hashlib.sha256(data).hexdigest()
    original = {i: (out / r["output_key"]).read_bytes() for i, r in rows.items()}

    (out / rows[1]["output_key"]).unlink()
    (out / rows[2]["output_key"]).write_bytes(original[2][:100])
    second = run_job(cfg)
    assert (second.redone, second.done, second.skipped) == (2, 2, N_IMAGES - 2)
    for i in (1, 2):
        assert (out / rows[i]["output_key"]).read_bytes() == original[i]  # the same pixels, the same bytes
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(img["file_name"] for img in coco["images"]) == sorted(r["output_key"] for r in rows.values())

    corrupted = bytearray(original[3])
    corrupted[len(corrupted) // 2] ^= 0xFF  # same size: only a checksum finds it
    (out / rows[3]["output_key"]).write_bytes(bytes(corrupted))
    assert run_job(cfg).redone == 0  # a plain rerun trusts the listing's sizes
    verified = run_job(cfg, verify=True)
    assert (verified.redone, verified.done) == (1, 1)
    assert (out / rows[3]["output_key"]).read_bytes() == original[3]
    finished = run_job(cfg, verify=True)
    assert (finished.redone, finished.done, finished.written) == (0, 0, [])
    # every rerun superseded rows: the manifest keeps one row per output
    keys = [(r["image_id"], r["variant"]) for r in manifest_rows(str(out))]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == N_IMAGES


def test_a_format_change_supersedes_rows_and_old_files(ray_cluster, dataset, tmp_path):
    out = tmp_path / "out"
    run_job(job(dataset.annotations, dataset.images_dir, out))
    (out / "images" / "999").mkdir()
    (out / "images" / "999" / "0.png").write_bytes(b"not ours")  # not an output of this job: left alone
    changed = run_job(job(dataset.annotations, dataset.images_dir, out, format={"type": "jpg", "quality": 90}))
    assert changed.done == N_IMAGES and changed.removed == N_IMAGES and changed.unexpected == 1
    files = sorted(str(p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file())
    assert files == sorted([f"images/{i}/0.jpg" for i in range(1, N_IMAGES + 1)] + ["images/999/0.png"])
    rows = manifest_rows(str(out))
    assert len(rows) == N_IMAGES and {r["output_key"].rsplit(".", 1)[1] for r in rows} == {"jpg"}
    assert len({r["fingerprint"] for r in rows}) == 1
    for p in (out / "images").glob("[0-9]/0.jpg"):
        assert Image.open(p).format == "JPEG"


# ---------------------------------------------------------------- one job per output


def test_a_second_job_on_a_held_output_refuses_naming_the_holder(ray_cluster, dataset, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from nstray.pipeline.lease import acquire; "
         "acquire(sys.argv[1], 'run-of-the-other-job'); print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld) as err:
            run_job(job(dataset.annotations, dataset.images_dir, out))
        msg = str(err.value)
        assert "run-of-the-other-job" in msg and socket.gethostname() in msg and str(holder.pid) in msg
        assert not (out / "manifest").exists()  # it did no work
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: on this host its lease is taken over at once
    summary = run_job(job(dataset.annotations, dataset.images_dir, out))
    assert summary.done == N_IMAGES and not (out / LEASE_FILE).exists()


def test_two_concurrent_jobs_one_proceeds_the_other_refuses(ray_cluster, dataset, tmp_path):
    import ray

    out = tmp_path / "out"
    (tmp_path / "job.yaml").write_text(json.dumps(job(dataset.annotations, dataset.images_dir, out)))
    driver = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "stylize_dataset.py"),
         str(tmp_path / "job.yaml"), "--no-progress", "--address", ray.get_runtime_context().gcs_address],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        while not (out / LEASE_FILE).exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (out / LEASE_FILE).exists(), "the first job never took the lease"
        with pytest.raises(LeaseHeld, match=str(driver.pid)):
            run_job(job(dataset.annotations, dataset.images_dir, out))
        assert driver.wait(300) == 0, driver.stdout.read().decode()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    keys = [(r["image_id"], r["variant"]) for r in manifest_rows(str(out))]
    assert sorted(keys) == [(i, 0) for i in range(1, N_IMAGES + 1)]  # one row per output
    assert not (out / LEASE_FILE).exists()  # released


def test_a_stale_lease_is_taken_over_and_a_live_one_is_not(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    old = {"holder": "old-run", "host": "another-host", "pid": 1, "started_at": "x", "heartbeat": time.time() - 1000}
    storage.write_bytes(storage.join(out, LEASE_FILE), json.dumps(old).encode())
    monkeypatch.setenv("NSTRAY_LEASE_STALE_SECONDS", "5000")
    with pytest.raises(LeaseHeld, match="old-run"):
        acquire(out, "new-run")
    monkeypatch.setenv("NSTRAY_LEASE_STALE_SECONDS", "60")
    lease = acquire(out, "new-run")
    try:
        assert json.loads(storage.read_bytes(storage.join(out, LEASE_FILE)))["holder"] == "new-run"
    finally:
        lease.release()
    assert not Path(out, LEASE_FILE).exists()


def test_the_lease_is_exclusive_on_s3_and_heartbeats(s3_bucket, monkeypatch):
    monkeypatch.setenv("NSTRAY_LEASE_HEARTBEAT_SECONDS", "0.2")
    out = f"{s3_bucket}/styled"
    lease = acquire(out, "first")
    try:
        with pytest.raises(LeaseHeld, match="first"):
            acquire(out, "second")
        beat = json.loads(storage.read_bytes(storage.join(out, LEASE_FILE)))["heartbeat"]
        time.sleep(1.0)
        assert json.loads(storage.read_bytes(storage.join(out, LEASE_FILE)))["heartbeat"] > beat
    finally:
        lease.release()
    assert not storage.exists(storage.join(out, LEASE_FILE))
    acquire(out, "second").release()


# ---------------------------------------------------------------- symlinks


@pytest.fixture
def linked_dataset(dataset, tmp_path) -> tuple[Path, Path]:
    """A copy of the dataset whose image 2 is a symlink to a secret text file outside the images root."""
    root = tmp_path / "ds"
    shutil.copytree(dataset.root, root)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:SECRET-CONTENT:/root:/bin/bash\n" * 4)
    coco = json.loads((root / "annotations.json").read_text())
    name = next(img["file_name"] for img in coco["images"] if img["id"] == 2)
    (root / "images" / name).unlink()
    (root / "images" / name).symlink_to(secret)
    return root, secret


def test_a_symlink_out_of_the_images_root_is_reported_and_never_read(ray_cluster, linked_dataset, tmp_path):
    root, secret = linked_dataset
    report = validate(str(root / "annotations.json"), str(root / "images"))
    problems = [e for e in report.errors if e.image_id == 2]
    assert problems and "outside the images root" in problems[0].problem
    assert "SECRET" not in json.dumps(report.to_dict()) and "root:x" not in json.dumps(report.to_dict())

    out = tmp_path / "out"
    summary = run_job(job(root / "annotations.json", root / "images", out))
    assert summary.done == N_IMAGES - 1 and summary.bad_records == 1
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [e["image_id"] for e in errors] == [2] and "outside the images root" in errors[0]["reason"]
    for f in (out / "errors.parquet", out / "job_report.json"):
        assert b"SECRET" not in f.read_bytes() and b"root:x" not in f.read_bytes()


def test_the_read_stage_refuses_a_link_out_of_the_root_even_if_planning_missed_it(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_bytes(b"SECRET")
    (tmp_path / "root" / "a.png").symlink_to(tmp_path / "secret")
    with pytest.raises(storage.StorageError, match="outside the images root"):
        storage.read_bytes(tmp_path / "root" / "a.png", within=tmp_path / "root")
    (tmp_path / "root" / "b.png").symlink_to(tmp_path / "root" / "a.png")  # a chain ending outside
    with pytest.raises(storage.StorageError, match="outside the images root"):
        storage.read_bytes(tmp_path / "root" / "b.png", within=tmp_path / "root")


def test_a_non_image_is_described_without_echoing_its_bytes():
    from nstray.data.images import ImageDecodeError, decode_image

    with pytest.raises(ImageDecodeError) as err:
        decode_image(b"root:x:0:0:root:/root:/bin/bash\n", name="passwd.png")
    assert "root:x" not in str(err.value) and "starts with text" in str(err.value)
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bytes([0xDE, 0xAD, 0xBE, 0xEF]) + b"secret-payload", name="x.png")
    assert "secret" not in str(err.value) and "deadbeef" in str(err.value)
