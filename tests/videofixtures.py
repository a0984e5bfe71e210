"""Small generated videos for the video tests (made on the fly; no downloads)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # as tests/conftest.py finds it

VIDEOS = SHARED / "data" / "videos"


def moving_frames(n: int, w: int = 64, h: int = 48, seed: int = 0) -> list[np.ndarray]:
    """A textured scene sliding right by 2 px per frame (smooth texture: flow estimators can follow it)."""
    import cv2

    rng = np.random.default_rng(seed)
    world = cv2.GaussianBlur(rng.integers(0, 256, (h, w + 2 * n + 8, 3), dtype=np.uint8), (0, 0), 2.0)
    world = cv2.normalize(world, None, 0, 255, cv2.NORM_MINMAX)
    return [np.ascontiguousarray(world[:, 2 * (n - t):2 * (n - t) + w]) for t in range(n)]


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    from nstray.video.io import VideoWriter

    h, w = frames[0].shape[:2]
    with VideoWriter(path, w, h, Fraction(fps), crf=10, preset="ultrafast") as wr:
        for f in frames:
            wr.write(f)
    return path


def coco_frames(ytvis: dict, with_track_ids: bool = True) -> dict:
    """YouTube-VIS → COCO with frames as images (``video_id`` / ``frame_id``), as CVAT-like tools export."""
    images, anns = [], []
    for v in ytvis["videos"]:
        for f, name in enumerate(v["file_names"]):
            images.append({"id": v["id"] * 1000 + f, "video_id": v["id"], "frame_id": f, "file_name": name,
                           "width": v["width"], "height": v["height"]})
    for a in ytvis["annotations"]:
        for f, (seg, box) in enumerate(zip(a["segmentations"], a["bboxes"])):
            if seg is None and box is None:
                continue
            ann = {"id": len(anns) + 1, "image_id": a["video_id"] * 1000 + f, "category_id": a["category_id"],
                   "segmentation": seg if seg is not None else [], "bbox": box, "iscrowd": 0}
            if with_track_ids:
                ann["attributes"] = {"track_id": a["id"]}
            anns.append(ann)
    return {"images": images, "annotations": anns, "categories": ytvis["categories"],
            "videos": [{"id": v["id"]} for v in ytvis["videos"]]}

