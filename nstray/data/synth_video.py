"""Synthetic labeled driving videos: procedural cars moving past a panning camera, exact per-frame masks.

``generate_video(out_dir, frames, seed)`` reuses the car renderer of :mod:`nstray.data.synth` and writes:

- ``video.mp4`` (H.264, :data:`FPS` fps),
- ``annotations.json``: YouTube-VIS style (:mod:`nstray.data.video_annotations`), one annotation per
  part instance (track), with a compressed RLE per frame (``null`` where the part is out of view or
  fully hidden) and a box per frame,
- ``frames/*.png`` only when ``write_frames`` (lossless frames for exact comparisons).

Each car is painted once as a sprite (its own owner map), then every frame pastes the sprites at
their positions (cars move at their own integer speeds, the camera pans over a background wider than
the frame), far cars first so nearer cars occlude them. So every mask is exactly the visible pixels of
its part on that frame, and a part's texture moves with it. A little sensor grain is drawn fresh
each frame, as real footage has. Deterministic for a seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nstray.data.synth import CATEGORIES, _CAT_ID, _Canvas, _CarPainter, _background, _car_spec, _encode_rle, _fractal_noise

__all__ = ["SynthVideo", "generate_video", "render_video", "FPS"]

FPS = 10
PAN_PX = 2  # camera pan per frame


@dataclass(frozen=True)
class SynthVideo:
    """Where a generated video lives."""

    root: Path
    video: Path
    annotations: Path


@dataclass
class _Sprite:
    rgb: np.ndarray  # float32 [h, w, 3]
    owner: np.ndarray  # int32 [h, w]: local instance, -1 = transparent
    categories: list[str]  # per local instance
    x0: float  # world x of the sprite's left edge at frame 0
    y0: int
    speed: int  # px per frame (world)


def _sprites(rng: np.random.Generator, width: int, height: int, horizon: float, world_w: int) -> list[_Sprite]:
    out = []
    n = int(rng.choice([2, 3], p=[0.6, 0.4]))
    for i in range(n):
        near = float(np.clip((i + rng.uniform(0.3, 1.0)) / n, 0.15, 1.0))  # later cars stand nearer
        scale = float((0.22 + 0.38 * near) * width)  # and look bigger
        gy = float(np.clip(horizon + (height - horizon) * (0.25 + 0.7 * near), 0.45 * scale, height - 2))
        kind = str(rng.choice(["sedan", "hatchback", "suv", "coupe", "pickup", "van"]))
        spec = _car_spec(rng, kind)
        sw, margin = int(scale * 1.3) + 8, int(scale * 0.15) + 4
        canvas = _Canvas(np.zeros((height, sw, 3), np.float32))
        noise = _fractal_noise(rng, height, sw)
        _CarPainter(canvas, rng, spec, float(margin), gy, scale, bool(rng.random() < 0.5), i, noise).draw()
        speed = int(rng.choice([-4, -3, 3, 4, 5])) if i else int(rng.choice([-2, 2, 3]))
        x0 = float(rng.uniform(0.05, 0.6) * (world_w - sw))
        out.append(_Sprite(canvas.rgb, canvas.owner, [inst.category for inst in canvas.instances], x0, 0, speed))
    out.sort(key=lambda s: int((s.owner >= 0).any(axis=1).nonzero()[0].max()))  # far (higher ground) first
    return out


def render_video(frames: int, seed: int, width: int = 320, height: int = 192):
    """Yield ``(rgb uint8 [H, W, 3], owner int32 [H, W] (track id, -1 none))`` per frame, and set the tracks'
    categories on the generator's return (``StopIteration.value``)."""
    rng = np.random.default_rng([seed, 7])
    world_w = width + PAN_PX * frames + 2
    noise = _fractal_noise(rng, height, world_w)
    bg, horizon, _ = _background(rng, height, world_w, noise)
    sprites = _sprites(rng, width, height, horizon, world_w)
    offsets = np.cumsum([0] + [len(s.categories) for s in sprites])
    categories = [c for s in sprites for c in s.categories]
    for t in range(frames):
        cam = PAN_PX * t
        rgb = bg[:, cam:cam + width].copy()
        owner = np.full((height, width), -1, np.int32)
        for s, off in zip(sprites, offsets):
            x = int(round(s.x0 + s.speed * t)) - cam
            sh, sw = s.owner.shape
            a0, a1 = max(0, x), min(width, x + sw)
            if a1 <= a0:
                continue
            local = s.owner[:, a0 - x:a1 - x]
            m = local >= 0
            rgb[:, a0:a1][m] = s.rgb[:, a0 - x:a1 - x][m]
            owner[:, a0:a1][m] = local[m] + off
        grain = (rng.random((height, width, 1), dtype=np.float32) - 0.5) * 0.045
        yield np.clip((rgb + grain) * 255.0 + 0.5, 0, 255).astype(np.uint8), owner
    return categories


def generate_video(out_dir: str | Path, frames: int, seed: int = 0, width: int = 320, height: int = 192,
                   *, write_frames: bool = False) -> SynthVideo:
    """Write a synthetic labeled video (MP4 + YouTube-VIS JSON) under ``out_dir``; see the module docstring."""
    from PIL import Image

    from nstray.video.io import VideoWriter

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if width < 64 or height < 64:
        raise ValueError(f"video frames must be at least 64x64, got {width}x{height}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if write_frames:
        (root / "frames").mkdir(exist_ok=True)
    segs: dict[int, list] = {}
    boxes: dict[int, list] = {}
    areas: dict[int, dict[int, int]] = {}
    gen = render_video(frames, seed, width, height)
    with VideoWriter(root / "video.mp4", width, height, fps=FPS) as writer:
        t = 0
        while True:
            try:
                rgb, owner = next(gen)
            except StopIteration as stop:
                categories = stop.value
                break
            writer.write(rgb)
            if write_frames:
                Image.fromarray(rgb).save(root / "frames" / f"{t:05d}.png", compress_level=1)
            for k in np.unique(owner):
                if k < 0:
                    continue
                m = owner == k
                ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
                segs.setdefault(int(k), [None] * frames)[t] = _encode_rle(m)
                areas.setdefault(int(k), {})[t] = int(m.sum())
                boxes.setdefault(int(k), [None] * frames)[t] = [float(xs[0]), float(ys[0]),
                                                                 float(xs[-1] + 1 - xs[0]), float(ys[-1] + 1 - ys[0])]
            t += 1
    anns = [{"id": k + 1, "video_id": 1, "category_id": _CAT_ID[categories[k]], "iscrowd": 0,
             "segmentations": segs[k], "bboxes": boxes[k],
             "areas": [None if b is None else float(areas[k][t]) for t, b in enumerate(boxes[k])]}
            for k in sorted(segs)]
    doc = {"info": {"description": "nstray synthetic labeled video", "generator": {"seed": seed, "frames": frames,
                                                                                  "width": width, "height": height}},
           "videos": [{"id": 1, "width": width, "height": height, "length": frames,
                       "file_names": [f"frames/{t:05d}.png" for t in range(frames)]}],
           "categories": CATEGORIES, "annotations": anns}
    ann_path = root / "annotations.json"
    ann_path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return SynthVideo(root=root, video=root / "video.mp4", annotations=ann_path)
