"""The dataset job with input and output on a real S3 server (SeaweedFS): Ray workers read the images and
write the styled set through boto3 / pyarrow, images of different sizes share batches, and a rerun writes
no object (same keys, ETags, times)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nstray import storage
from nstray.data import synth
from nstray.pipeline import run_job
from test_pipeline import job_config

N_IMAGES = 4
VARIANTS = 2


def _listing(bucket: str, prefix: str) -> dict[str, tuple[str, object, int]]:
    """key → (ETag, LastModified, size) of every object under the prefix."""
    client = boto3.client("s3")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["LastModified"], obj["Size"])
    return out


@pytest.fixture
def s3_dataset(s3_bucket: str, tmp_path: Path) -> tuple[str, str]:
    """Two synthetic datasets of different image sizes, merged (sizes alternate, so batches mix them) and
    uploaded to ``<bucket>/coco/``; returns (annotations URI, images URI)."""
    wide = synth.generate(tmp_path / "wide", N_IMAGES // 2, seed=5, width=128, height=96)
    tall = synth.generate(tmp_path / "tall", N_IMAGES // 2, seed=6, width=96, height=128)
    merged: dict = {"images": [], "annotations": [], "categories": json.loads(wide.annotations.read_text())["categories"]}
    parts = []
    for offset, ds in ((0, wide), (100, tall)):
        coco = json.loads(ds.annotations.read_text())
        for img in coco["images"]:
            name = f"{ds.root.name}-{img['file_name']}"
            storage.write_bytes(f"{s3_bucket}/coco/images/{name}", (ds.images_dir / img["file_name"]).read_bytes())
            parts.append(dict(img, id=img["id"] + offset, file_name=name))
        merged["annotations"] += [dict(a, id=a["id"] + 1000 * offset, image_id=a["image_id"] + offset)
                                  for a in coco["annotations"]]
    merged["images"] = [img for pair in zip(parts[: N_IMAGES // 2], parts[N_IMAGES // 2:]) for img in pair]
    storage.write_bytes(f"{s3_bucket}/coco/annotations.json", json.dumps(merged).encode())
    return f"{s3_bucket}/coco/annotations.json", f"{s3_bucket}/coco/images"


def test_job_reads_and_writes_s3_and_a_rerun_writes_nothing(ray_cluster, s3_bucket, s3_dataset, tmp_path):
    ann, images = s3_dataset
    out = f"{s3_bucket}/styled/run-1"
    cfg = job_config(ann, images, out, variants=VARIANTS, format={"type": "jpg", "quality": 90})
    summary = run_job(cfg)
    assert (summary.done, summary.failed, summary.bad_records) == (N_IMAGES * VARIANTS, 0, 0)

    bucket = storage.parse(s3_bucket).bucket
    listing = _listing(bucket, "styled/run-1/")
    keys = set(listing)
    ids = [1, 2, 101, 102]
    expected = {f"styled/run-1/images/{i}/{v}.jpg" for i in ids for v in range(VARIANTS)}
    assert expected <= keys
    assert {"styled/run-1/annotations.json", "styled/run-1/errors.parquet", "styled/run-1/contact_sheet.png"} <= keys
    assert not [k for k in keys if k.endswith(".partial")]
    for key in expected:  # whole, decodable JPEGs of their source's size
        im = Image.open(io.BytesIO(storage.read_bytes(f"s3://{bucket}/{key}")))
        image_id = int(key.split("/")[3])
        assert im.format == "JPEG" and im.size == ((96, 128) if image_id > 100 else (128, 96))

    # the manifest and errors are Parquet on S3 that pyarrow reads through the same credentials
    fs, path = storage.pyarrow_filesystem(f"{out}/manifest")
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    assert sorted((r["image_id"], r["variant"]) for r in rows) == sorted((i, v) for i in ids for v in range(VARIANTS))
    assert {r["status"] for r in rows} == {"done"} and all(r["output_key"].endswith(".jpg") for r in rows)
    assert pq.read_table(io.BytesIO(storage.read_bytes(f"{out}/errors.parquet"))).num_rows == 0

    from pycocotools.coco import COCO

    local = tmp_path / "annotations.json"
    local.write_bytes(storage.read_bytes(f"{out}/annotations.json"))
    coco = COCO(str(local))
    assert len(coco.imgs) == N_IMAGES * VARIANTS
    assert {img["file_name"] for img in coco.imgs.values()} == {k[len("styled/run-1/"):] for k in expected}
    assert json.loads(local.read_text())["categories"] == json.loads(storage.read_bytes(ann))["categories"]
    assert {(i["width"], i["height"]) for i in coco.imgs.values()} == {(128, 96), (96, 128)}

    again = run_job(cfg)
    assert (again.done, again.skipped, again.written) == (0, N_IMAGES * VARIANTS, [])
    assert _listing(bucket, "styled/run-1/") == listing
