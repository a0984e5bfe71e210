"""Small helpers to build COCO datasets in tests: tiny images in every mode, COCO dicts, broken files."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CATEGORIES = [
    {"id": 1, "name": "door", "supercategory": "part"},
    {"id": 2, "name": "wheel", "supercategory": "part"},
    {"id": 3, "name": "mirror", "supercategory": "part"},
    {"id": 4, "name": "glass", "supercategory": "part"},
]


def image_bytes(mode: str = "RGB", size: tuple[int, int] = (32, 24), fmt: str = "PNG", **save: Any) -> bytes:
    """An encoded image of ``size`` (w, h) in PIL ``mode`` with a gradient, so pixels are not all equal."""
    w, h = size
    ramp = (np.arange(w * h, dtype=np.int64).reshape(h, w) * 7) % 256
    if mode == "I;16":
        im = Image.fromarray((ramp * 257).astype(np.uint16))
    elif mode == "RGB":
        im = Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=2).astype(np.uint8))
    else:
        im = Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=2).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header, no real pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def box_poly(x: float, y: float, w: float, h: float) -> list[float]:
    """A rectangle as a COCO polygon."""
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def ann(ann_id: int, image_id: int, category_id: int = 1, *, bbox: list[float] | None = None,
        segmentation: Any = "box", iscrowd: int = 0, area: float | None = None) -> dict:
    """One COCO annotation; ``segmentation="box"`` makes a polygon equal to the bbox."""
    bbox = bbox if bbox is not None else [2.0, 2.0, 10.0, 8.0]
    seg = [box_poly(*bbox)] if segmentation == "box" else segmentation
    out = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
           "segmentation": seg, "iscrowd": iscrowd}
    out["area"] = area if area is not None else float(bbox[2] * bbox[3])
    return out


def image_entry(image_id: int, file_name: str, width: int = 32, height: int = 24) -> dict:
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}


def coco(images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories if categories is not None else CATEGORIES}


def write_dataset(root: Path, data: dict, files: dict[str, bytes]) -> tuple[Path, Path]:
    """Write ``files`` (relative name → bytes) under ``root/images`` and ``data`` as ``root/annotations.json``."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return annotations, images


def upload_dir(local: Path, prefix: str) -> None:
    """Copy every file under ``local`` to the S3 ``prefix`` (same relative names)."""
    from nstray import storage

    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.write_bytes(storage.join(prefix, path.relative_to(local).as_posix()), path.read_bytes())
