"""Style one video frame by frame: decode → part labels → network → stabilize → encode, streamed.

The one video loop, shared by ``nstray video``, ``benchmarks/video.py`` and the Ray video job's chunks
(:mod:`nstray.pipeline.video_job`). It holds a few frames at a time (more only between two keyframes when masks are
propagated) and times each stage.

Labels per frame come from a :class:`~nstray.data.video_annotations.VideoMasks` (or none: the whole
frame is ``background``): every annotated frame's own masks reconciled in time, or — in keyframe mode —
masks on the annotated frames propagated along the flow to the others. The style choice is keyed by
the video, so each part keeps its style across the whole video.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from nstray.video.masks import Reconciler, propagate_stream
from nstray.video.stabilize import Stabilizer

__all__ = ["StyledFrame", "StageTimes", "label_frames", "style_frames"]


@dataclass
class StyledFrame:
    """One frame through the loop: the original, its labels, the naive per-frame result (when kept), the output."""

    index: int
    pts: int | None
    original: np.ndarray
    labels: np.ndarray | None
    naive: np.ndarray | None
    output: np.ndarray


@dataclass
class StageTimes:
    """Seconds spent per stage (decode, labels, style, stabilize) over ``frames`` frames."""

    seconds: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in ("decode", "labels", "style",
                                                                                "stabilize")})
    frames: int = 0

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def fps(self) -> dict[str, float]:
        return {k: (self.frames / v if v > 0 else float("inf")) for k, v in self.seconds.items()}


def _timed(it: Iterable, times: StageTimes, stage: str, inner: str | None = None) -> Iterator:
    """``it`` with the time of each ``next`` added to ``stage`` (less what the ``inner`` stage took meanwhile)."""
    it = iter(it)
    while True:
        t, before = time.perf_counter(), times.seconds.get(inner, 0.0) if inner else 0.0
        try:
            x = next(it)
        except StopIteration:
            return
        nested = (times.seconds.get(inner, 0.0) - before) if inner else 0.0
        times.add(stage, time.perf_counter() - t - nested)
        yield x


def label_frames(frames: Iterable, masks, *, keyframes: bool = False, reconcile: bool = True,
                 flow: str = "dis-medium") -> Iterator[tuple[object, np.ndarray | None]]:
    """``(frame, label map or None)`` per decoded frame (``frame.rgb`` the pixels; ``frame.index`` its number).

    ``masks``: a :class:`~nstray.data.video_annotations.VideoMasks` or None (no labels). ``keyframes``:
    propagate the annotated frames' masks to the others; else each frame's own, reconciled in time.
    """
    if masks is None:
        for f in frames:
            yield f, None
        return
    from nstray.data.video_annotations import fit_labels

    def own(f) -> np.ndarray | None:
        lm = masks.frame_labels(f.index)
        return None if lm is None else fit_labels(lm, f.rgb.shape[:2], f"video {masks.video.video_id} frame {f.index}")

    if keyframes:
        annotated = set(masks.video.annotated_frames())
        by_index: dict[int, object] = {}

        def pixels() -> Iterator[np.ndarray]:
            for n, f in enumerate(frames):  # keyed by decode order, as propagate_stream counts (a chunk's
                by_index[n] = f  # frames may start past frame 0)
                yield f.rgb

        def key(i: int) -> np.ndarray | None:
            f = by_index[i]
            return own(f) if f.index in annotated else None

        for i, (_, lm) in enumerate(propagate_stream(pixels(), key, len(masks.categories), flow=flow)):
            yield by_index.pop(i), lm
        return
    rec = Reconciler(flow=flow) if reconcile else None
    for f in frames:
        lm = own(f)
        if lm is None:
            lm = np.full(f.rgb.shape[:2], -1, np.int32)
        yield f, (rec(f.rgb, lm) if rec is not None else lm)


def style_frames(frames: Iterable, network: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
                 stabilizer: Stabilizer | None, *, masks=None, keyframes: bool = False, reconcile: bool = True,
                 keep_naive: bool = False, times: StageTimes | None = None) -> Iterator[StyledFrame]:
    """Style decoded ``frames`` (objects with ``index``, ``pts``, ``rgb``, e.g. :class:`~nstray.video.io.Frame`).

    ``network(image, labels)`` styles one frame (``labels`` None: whole frame). ``stabilizer``: None for
    naive per-frame styling. ``keep_naive``: also return the naive per-frame result (free unless the
    stabilizer denoises the network's input, which costs a second pass).
    """
    times = times if times is not None else StageTimes()
    flow = "dis-medium"
    for frame, labels in _timed(label_frames(_timed(frames, times, "decode"), masks, keyframes=keyframes,
                                             reconcile=reconcile, flow=flow), times, "labels", "decode"):
        src = frame.rgb
        t0 = time.perf_counter()
        x = stabilizer.begin(src, labels) if stabilizer is not None else src
        t1 = time.perf_counter()
        styled = network(x, labels)
        naive = None
        if keep_naive:
            naive = styled if x is src else network(src, labels)
        t2 = time.perf_counter()
        out = stabilizer.finish(styled) if stabilizer is not None else styled
        t3 = time.perf_counter()
        times.add("stabilize", (t1 - t0) + (t3 - t2))
        times.add("style", t2 - t1)
        times.frames += 1
        yield StyledFrame(frame.index, frame.pts, src, labels, naive, out)
