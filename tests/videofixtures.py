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
