"""The broken-input corpus: `nstray datasets validate` names every broken record and nothing else (local and S3)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from cocofixtures import ann, box_poly, coco, forged_png, image_bytes, image_entry, upload_dir, write_dataset
from nstray.cli import main

MAX_PIXELS = 1_000_000  # passed as --max-pixels; the "too large" records exceed it


def _exif_rotated_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG stored at ``size`` with EXIF orientation 6 (viewers show it rotated 90°)."""
    im = Image.open(io.BytesIO(image_bytes("RGB", size)))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def build_corpus(root: Path) -> tuple[Path, Path, set[int], set[int]]:
    """Good records in every odd mode + one record per kind of breakage. Returns paths, good ids, bad ids."""
    W, H = 32, 24
    files: dict[str, bytes] = {}
    images: list[dict] = []
    anns: list[dict] = []
    next_ann = [1000]

    def add(image_id: int, name: str, payload: bytes | None, parts: list[dict] | None = None, **entry) -> None:
        images.append({**image_entry(image_id, name, W, H), **entry})
        if payload is not None:
            files[name] = payload
        for p in parts if parts is not None else [{}]:
            next_ann[0] += 1
            anns.append(ann(next_ann[0], image_id, **p))

    # ---- good records: every pixel mode, non-ASCII names, RLE, box-only, EXIF ignored
    good = {
        1: ("car_001.png", image_bytes("RGB", (W, H))),
        2: ("gray.png", image_bytes("L", (W, H))),
        3: ("rgba.png", image_bytes("RGBA", (W, H))),
        4: ("cmyk.jpg", image_bytes("CMYK", (W, H), fmt="JPEG")),
        5: ("depth16.png", image_bytes("I;16", (W, H))),
        6: ("palette.png", image_bytes("P", (W, H))),
        7: ("voiture_été/フロント ドア.png", image_bytes("RGB", (W, H))),
        8: ("la.png", image_bytes("LA", (W, H))),
        9: ("cmyk.tif", image_bytes("CMYK", (W, H), fmt="TIFF")),
        10: ("exif6.jpg", _exif_rotated_jpeg((W, H))),  # declared = stored size: valid, EXIF ignored
    }
    for image_id, (name, payload) in good.items():
        add(image_id, name, payload)
    add(11, "boxonly.png", image_bytes("RGB", (W, H)), [{"segmentation": []}, {"segmentation": None, "bbox": [0, 0, 5, 5]}])
    add(12, "rle.png", image_bytes("RGB", (W, H)), [
        {"segmentation": {"size": [H, W], "counts": [100, 20, W * H - 120]}, "iscrowd": 1},
        {"segmentation": {"size": [H, W], "counts": _compressed_counts(H, W)}},  # compressed RLE string
        {"segmentation": [box_poly(1, 1, 4, 4), box_poly(20, 10, 5, 5)]},  # two polygons in one part
    ])
    good_ids = set(good) | {11, 12}

    # ---- broken records, one per kind
    png = image_bytes("RGB", (W, H))
    jpg = image_bytes("RGB", (64, 64), fmt="JPEG")
    outside = root / "ds" / "outside.png"  # a real image that "../outside.png" would reach: must not be read
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(png)
    add(101, "empty.png", b"")
    add(102, "truncated.png", png[: len(png) // 2])
    add(103, "notimage.jpg", b"this is a text file, not a JPEG\n" * 4)
    add(104, "missing.png", None)
    add(105, "../outside.png", None)
    add(106, str(outside), None)  # absolute path to a real image
    add(107, "..\\outside.png", None)
    add(108, "oddpoly.png", png, [{"segmentation": [[1, 1, 10, 1, 10, 10, 5]]}])
    add(109, "twopoints.png", png, [{"segmentation": [[1, 1, 10, 10]]}])  # pycocotools would read this as a box
    add(110, "nanbox.png", png, [{"bbox": [1.0, math.nan, 4.0, 4.0], "segmentation": []}])
    add(111, "negbox.png", png, [{"bbox": [1.0, 1.0, -4.0, 4.0], "segmentation": []}])
    add(112, "outbox.png", png, [{"bbox": [20.0, 10.0, 30.0, 5.0], "segmentation": []}])
    add(113, "infbox.png", png, [{"bbox": [1.0, 1.0, math.inf, 4.0], "segmentation": []}])
    add(114, "unknowncat.png", png, [{"category_id": 99}])
    anns.append(ann(5000, 999))  # annotation whose image id does not exist
    add(116, "dup_a.png", png)
    add(116, "dup_b.png", png)
    add(117, "rlesize.png", png, [{"segmentation": {"size": [H + 1, W], "counts": [(H + 1) * W]}}])
    add(118, "wrongsize.png", image_bytes("RGB", (40, 30)))
    add(119, "bomb.png", forged_png(100_000, 100_000))  # Pillow's own bomb guard, header only
    add(120, "big.png", forged_png(2000, 1000), width=2000, height=1000)  # above --max-pixels, header only
    add(121, "rlesum.png", png, [{"segmentation": {"size": [H, W], "counts": [10, 5]}}])  # short RLE
    add(122, "truncated.jpg", jpg[: len(jpg) // 2], width=64, height=64)
    add(123, "nowidth.png", png, width=None)
    add(124, "flatpoly.png", png, [{"segmentation": [1, 1, 10, 1, 10, 10]}])  # not a list of polygons
    add(125, "exifswap.jpg", _exif_rotated_jpeg((H, W)))  # stored 24x32, declared 32x24, orientation 6
    add(126, "badrle.png", png, [{"segmentation": {"size": [H, W], "counts": "#$%"}}])
    bad_ids = {101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 999, 116, 117, 118, 119,
               120, 121, 122, 123, 124, 125, 126}
    annotations, images_dir = write_dataset(root / "ds", coco(images, anns), files)
    return annotations, images_dir, good_ids, bad_ids


def _compressed_counts(h: int, w: int) -> str:
    import numpy as np
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[5:15, 3:9] = 1
    return mask_utils.encode(m)["counts"].decode("ascii")


def _run_validate(annotations: str, images: str) -> dict:
    result = CliRunner().invoke(main, ["datasets", "validate", annotations, "--images", images, "--json",
                                       "--max-pixels", str(MAX_PIXELS)])
    assert result.exit_code == 1, result.output
    return json.loads(result.output)


def _check(report: dict, good_ids: set[int], bad_ids: set[int]) -> None:
    named = {r["image_id"] for r in report["bad_records"]}
    assert named == bad_ids, f"missed {bad_ids - named}, wrongly named {named - bad_ids}"
    assert report["counts"]["usable_images"] == len(good_ids)
    assert report["ok"] is False
    for rec in report["bad_records"]:
        for p in rec["problems"]:
            assert p["problem"] and p["fix"], rec
    by_id: dict[int, list[str]] = {}
    for rec in report["bad_records"]:
        by_id.setdefault(rec["image_id"], []).extend(p["problem"] for p in rec["problems"])
    expect = {
        101: "empty", 102: "truncated", 103: "not an image", 104: "cannot be read", 105: "'..'",
        106: "absolute", 107: "backslash", 108: "7 coordinates", 109: "4 coordinates", 110: "NaN",
        111: "negative", 112: "past the image edge", 113: "infinite", 114: "unknown category id 99",
        999: "not in images", 116: "used by 2", 117: "does not match the image", 118: "differs from the file",
        119: "too large", 120: "above the limit", 121: "covers 15 pixels", 122: "truncated", 123: "width",
        124: "not a list of polygons", 125: "differs from the file", 126: "invalid character",
    }
    for image_id, needle in expect.items():
        assert any(needle in p for p in by_id[image_id]), (image_id, by_id[image_id])
    # the EXIF-rotated file gets the specific hint; both duplicates are named
    exif = next(r for r in report["bad_records"] if r["image_id"] == 125)
    assert "EXIF orientation 6" in exif["problems"][0]["fix"]
    assert {r["file_name"] for r in report["bad_records"] if r["image_id"] == 116} == {"dup_a.png", "dup_b.png"}


def test_corpus_local(tmp_path, monkeypatch):
    from nstray import storage

    annotations, images, good_ids, bad_ids = build_corpus(tmp_path)
    read: list[str] = []
    real_read = storage.read_bytes

    def recording_read(uri, **kw):
        read.append(str(uri))
        return real_read(uri, **kw)

    monkeypatch.setattr(storage, "read_bytes", recording_read)
    _check(_run_validate(str(annotations), str(images)), good_ids, bad_ids)
    assert not [u for u in read if "outside" in u], "a file_name escaping the root was read"
    assert len(read) == len(set(read))  # every file (annotations, images) read once


def test_corpus_text_output_one_line_per_bad_record(tmp_path):
    annotations, images, good_ids, bad_ids = build_corpus(tmp_path)
    result = CliRunner().invoke(main, ["datasets", "validate", str(annotations), "--images", str(images),
                                       "--max-pixels", str(MAX_PIXELS)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    bad_lines = [line for line in lines if line.startswith("BAD image ")]
    assert len(bad_lines) == len(bad_ids) + 1  # id 116 is two records (two files)
    assert {int(line.split()[2]) for line in bad_lines} == bad_ids
    assert all("fix:" in line for line in bad_lines)
    assert lines[-1].startswith(f"{len(bad_ids) + 1} bad records") and f"{len(good_ids)} of " in lines[-1]


def test_corpus_s3(tmp_path, s3_bucket):
    annotations, images, good_ids, bad_ids = build_corpus(tmp_path)
    prefix = s3_bucket + "/corpus"
    upload_dir(annotations.parent, prefix)
    _check(_run_validate(prefix + "/annotations.json", prefix + "/images"), good_ids, bad_ids)


def test_good_odd_modes_alone_pass(tmp_path):
    """The good half of the corpus on its own: exit 0, every record usable."""
    annotations, images, good_ids, _ = build_corpus(tmp_path)
    data = json.loads(annotations.read_text(encoding="utf-8"))
    data["images"] = [im for im in data["images"] if im["id"] in good_ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in good_ids]
    annotations.write_text(json.dumps(data), encoding="utf-8")
    result = CliRunner().invoke(main, ["datasets", "validate", str(annotations), "--images", str(images)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK: all {len(good_ids)} images usable")
