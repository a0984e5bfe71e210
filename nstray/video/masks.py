"""Part label maps through time: keyframe propagation, temporal reconciliation, stability (pure numpy / OpenCV).

Conventions: a label map is int32 ``[H, W]`` (−1 = background, ``k`` = part/track ``k``; the same
``k`` is the same part on every frame of a video); ``n_labels`` is the number of parts ``K``.
Flows follow :mod:`nstray.video.flow` (``flow_ab`` brings ``b`` onto ``a``'s grid).

* **Keyframe propagation** (:func:`propagate`): masks known on some frames are carried to the frames
  between along the flow — forward from the keyframe before, backward from the keyframe after — as
  soft one-hot maps (bilinear warps of per-label probabilities, so edges do not staircase), blended
  by distance: a frame ``d₁`` after keyframe ``a`` and ``d₂`` before keyframe ``b`` takes weight
  ``d₂/(d₁+d₂)`` from ``a``'s side; then argmax. Past the last keyframe only the forward side exists.
* **Reconciliation** (:class:`Reconciler`): per-frame masks (annotated or segmented per frame)
  jitter by a pixel or two at part edges. Where the flow is reliable, each pixel's label is a vote
  between the frame's own label and the previous reconciled labels carried along the flow (a soft
  running average of one-hot maps); elsewhere the frame's own label — so lasting changes (a part
  appearing, a large motion) come through within a frame or two, edge jitter does not.
* **Stability** (:func:`stability`): IoU per label between a frame's label map and the previous one
  warped by the flow — 1.0 is a part whose mask moves exactly with the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from nstray.video.flow import FlowEstimator, reliable_mask, warp

__all__ = ["MaskPropagationError", "warp_labels", "propagate", "Reconciler", "stability", "mean_stability",
           "propagate_stream"]


class MaskPropagationError(ValueError):
    """Bad input to propagation (no keyframe, sizes); the message says which."""


def _onehot(lm: np.ndarray, n_labels: int) -> np.ndarray:
    """float32 [H, W, K+1]: channel 0 is background, channel k+1 is label k."""
    return (np.arange(-1, n_labels, dtype=np.int32)[None, None, :] == lm[..., None]).astype(np.float32)


def _warp_soft(p: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Warp a [H, W, C] probability map channel-block by channel-block (cv2.remap takes at most 4 channels)."""
    return np.concatenate([np.atleast_3d(warp(np.ascontiguousarray(p[..., i:i + 4]), flow))
                           for i in range(0, p.shape[2], 4)], axis=2)


def warp_labels(lm: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """A label map carried along ``flow`` (nearest neighbour: labels are not averaged)."""
    return warp(lm.astype(np.float32), flow, interpolation=cv2.INTER_NEAREST).astype(np.int32)


def propagate(frames: Sequence[np.ndarray], keyframes: dict[int, np.ndarray], n_labels: int, *,
              flow: str = "dis-medium") -> list[np.ndarray]:
    """Label maps for every frame of ``frames`` from label maps on ``keyframes`` (frame index → label map).

    Holds the frames given; callers stream a long video keyframe gap by keyframe gap.
    """
    if not keyframes:
        raise MaskPropagationError("no keyframe has masks; annotate at least one frame")
    n = len(frames)
    for i, lm in keyframes.items():
        if not 0 <= i < n:
            raise MaskPropagationError(f"keyframe {i} is out of range (the video has {n} frames)")
        if lm.shape != frames[i].shape[:2]:
            raise MaskPropagationError(f"keyframe {i}'s label map is {list(lm.shape)}, the frame "
                                       f"{list(frames[i].shape[:2])}")
    est = FlowEstimator(flow)
    keys = sorted(keyframes)
    fwd_p: list[np.ndarray | None] = [None] * n
    bwd_p: list[np.ndarray | None] = [None] * n
    for i in range(n):  # forward sweep: from the last keyframe at or before i
        if i in keyframes:
            fwd_p[i] = _onehot(keyframes[i], n_labels)
        elif i > 0 and fwd_p[i - 1] is not None:
            fwd_p[i] = _warp_soft(fwd_p[i - 1], est(frames[i], frames[i - 1]))
    for i in range(n - 1, -1, -1):  # backward sweep: from the next keyframe at or after i
        if i in keyframes:
            bwd_p[i] = fwd_p[i]
        elif i + 1 < n and bwd_p[i + 1] is not None:
            bwd_p[i] = _warp_soft(bwd_p[i + 1], est(frames[i], frames[i + 1]))
    out = []
    for i in range(n):
        if i in keyframes:
            out.append(keyframes[i].astype(np.int32))
            continue
        before = max((k for k in keys if k < i), default=None)
        after = min((k for k in keys if k > i), default=None)
        if before is None:
            p = bwd_p[i]
        elif after is None:
            p = fwd_p[i]
        else:
            d1, d2 = i - before, after - i
            p = (d2 * fwd_p[i] + d1 * bwd_p[i]) / (d1 + d2)
        out.append(p.argmax(-1).astype(np.int32) - 1)
    return out


class Reconciler:
    """Per-frame label maps reconciled in time (see the module docstring); feed frames in order.

    Keeps a soft label map ``P`` (one probability per label and pixel): where the flow to the previous
    frame is reliable, ``P = memory · warp(P_prev) + (1 − memory) · onehot(own labels)``, elsewhere the
    frame's own labels; the output is its argmax. A label flipping back and forth by a pixel at an edge
    is outvoted; a lasting change wins within a couple of frames.
    """

    def __init__(self, *, memory: float = 0.8, flow: str = "dis-medium") -> None:
        if not 0.0 <= memory < 1.0:
            raise MaskPropagationError(f"memory must be in [0, 1), got {memory}")
        self.memory = float(memory)
        self._est = FlowEstimator(flow)
        self.reset()

    def reset(self) -> None:
        self._frame: np.ndarray | None = None
        self._p: np.ndarray | None = None

    def __call__(self, frame: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The reconciled label map of ``frame`` given its own ``labels``."""
        n = int(labels.max()) + 1 if labels.size else 0
        if self._p is not None:
            n = max(n, self._p.shape[2] - 1)
        own = _onehot(labels.astype(np.int32), n)
        if self._frame is None or self._frame.shape != frame.shape:
            p = own
        else:
            prev = self._p
            if prev.shape[2] < n + 1:  # a label seen for the first time
                prev = np.concatenate([prev, np.zeros(prev.shape[:2] + (n + 1 - prev.shape[2],), np.float32)], 2)
            fwd, bwd = self._est.both(frame, self._frame)
            ok = reliable_mask(fwd, bwd)[..., None]
            p = np.where(ok, self.memory * _warp_soft(prev, fwd) + (1.0 - self.memory) * own, own)
        self._frame, self._p = frame, p
        return p.argmax(-1).astype(np.int32) - 1


def stability(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray, valid: np.ndarray | None = None) -> dict[int, float]:
    """IoU per label (−1 excluded) between ``cur`` and ``prev`` warped onto it by ``flow`` (``cur`` → ``prev``).

    ``valid``: pixels to count (e.g. the flow's reliable mask); labels absent from both are left out.
    """
    carried = warp_labels(prev, flow)
    v = np.ones(cur.shape, bool) if valid is None else valid
    out = {}
    for k in np.union1d(np.unique(cur[v]), np.unique(carried[v])):
        if k < 0:
            continue
        a, b = (cur == k) & v, (carried == k) & v
        union = int((a | b).sum())
        if union:
            out[int(k)] = float((a & b).sum()) / union
    return out


def mean_stability(per_frame: Sequence[dict[int, float]], categories: Sequence[str]) -> dict[str, float]:
    """Mean IoU per category over frames (from :func:`stability` results), plus ``all`` over every label."""
    acc: dict[str, list[float]] = {}
    for d in per_frame:
        for k, iou in d.items():
            acc.setdefault(categories[k] if k < len(categories) else f"label {k}", []).append(iou)
            acc.setdefault("all", []).append(iou)
    return {k: float(np.mean(v)) for k, v in sorted(acc.items())}


def propagate_stream(frames: Iterable[np.ndarray], keyframe_labels: Callable[[int], np.ndarray | None],
                     n_labels: int, *, flow: str = "dis-medium") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(frame, label map)`` for each of ``frames``, labels from ``keyframe_labels(i)`` where it gives them and
    propagated (:func:`propagate`) elsewhere. Holds only the frames between two keyframes."""
    buf: list[np.ndarray] = []
    keys: dict[int, np.ndarray] = {}  # buffer index -> label map
    for i, frame in enumerate(frames):
        lm = keyframe_labels(i)
        buf.append(frame)
        if lm is None:
            continue
        keys[len(buf) - 1] = lm
        labels = propagate(buf, keys, n_labels, flow=flow)
        yield from zip(buf[:-1], labels[:-1])
        buf, keys = [frame], {0: lm}  # the keyframe opens the next gap
    if buf:
        if not keys:
            raise MaskPropagationError("no frame has masks; annotate at least one frame")
        yield from zip(buf, propagate(buf, keys, n_labels, flow=flow))
