"""Temporal-consistency figures of a styled video against its original (pure numpy / OpenCV).

Conventions: frames are ``uint8[H, W, 3]`` RGB, compared as floats in ``[0, 1]``; label maps are
integer ``[H, W]`` (``k`` = part ``k``, negative = background).

* **Warping error** (Lai et al. 2018): for each frame ``t > 0``, the squared RGB difference
  (summed over channels, as their reference code does) between styled frame ``t`` and styled frame
  ``t-1`` warped onto ``t`` by the *original* video's flow, averaged over the pixels that flow
  trusts (forward–backward consistent, off motion boundaries). The flow comes from
  :data:`METRIC_FLOW` (Farneback), not the stabilizer's DIS, so a stabilizer cannot grade itself.
  The same figure on the original video is the floor.
* **Style strength**: mean absolute difference between styled and original frames; stabilization
  must not win by washing the style out.
* **SSIM to naive**: mean SSIM (grayscale, Gaussian window 11 / σ 1.5, Wang et al. 2004) between each
  stabilized frame and the naive per-frame styled frame; low values mean ghosting or drift.
* **Per part** (when label maps are given): the warping error and style strength over each part's
  pixels, so a flickering wheel is not averaged away by a calm background.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from nstray.video.flow import FlowEstimator, reliable_mask, warp

__all__ = ["METRIC_FLOW", "MetricError", "FrameFlow", "WarpingError", "ssim", "VideoMetrics", "Meter", "measure"]

METRIC_FLOW = "farneback"


class MetricError(ValueError):
    """Inputs the metrics cannot compare (sizes, counts); the message says which."""


@dataclass
class FrameFlow:
    """The original video's flow from frame ``t`` to ``t-1`` and the pixels it trusts (for frames ``t > 0``)."""

    flow: np.ndarray  # float32 [H, W, 2], t -> t-1
    reliable: np.ndarray  # bool [H, W]


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0


class WarpingError:
    """Accumulates the warping error of one video over frame pairs, overall and per label."""

    def __init__(self) -> None:
        self.per_frame: list[float] = []
        self._part_sum: dict[int, float] = {}
        self._part_n: dict[int, int] = {}

    def add(self, prev: np.ndarray, cur: np.ndarray, flow: FrameFlow, labels: np.ndarray | None = None) -> float:
        """Add the pair (``prev``, ``cur``) of styled frames; returns this pair's error."""
        if prev.shape != cur.shape or cur.shape[:2] != flow.flow.shape[:2]:
            raise MetricError(f"frame sizes differ: {list(prev.shape)}, {list(cur.shape)}, flow "
                              f"{list(flow.flow.shape[:2])}")
        d2 = ((_f(cur) - warp(_f(prev), flow.flow)) ** 2).sum(-1)
        m = flow.reliable
        err = float(d2[m].mean()) if m.any() else 0.0
        self.per_frame.append(err)
        if labels is not None:
            for k in np.unique(labels):
                sel = m & (labels == k)
                if sel.any():
                    self._part_sum[int(k)] = self._part_sum.get(int(k), 0.0) + float(d2[sel].sum())
                    self._part_n[int(k)] = self._part_n.get(int(k), 0) + int(sel.sum())
        return err

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_frame)) if self.per_frame else 0.0

    def per_label(self) -> dict[int, float]:
        return {k: self._part_sum[k] / self._part_n[k] for k in sorted(self._part_n)}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two ``uint8[H, W, 3]`` frames on their luma (Gaussian window 11, σ 1.5; Wang et al. 2004)."""
    if a.shape != b.shape:
        raise MetricError(f"SSIM needs equal sizes, got {list(a.shape)} and {list(b.shape)}")
    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


@dataclass
class VideoMetrics:
    """All figures of one styled video (see the module docstring); ``parts`` keyed by category name."""

    frames: int
    warping_error: float
    source_warping_error: float
    style_strength: float
    ssim_to_naive: float | None = None
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    per_frame_warping_error: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"frames": self.frames, "warping_error": self.warping_error,
                "source_warping_error": self.source_warping_error, "style_strength": self.style_strength,
                "ssim_to_naive": self.ssim_to_naive, "parts": self.parts,
                "per_frame_warping_error": self.per_frame_warping_error}


class Meter:
    """Streamed figures of several styled versions of one original video, sharing one flow per frame pair.

    ``names``: the styled versions (e.g. ``naive``, ``stabilized``); ``reference``: the one the others'
    SSIM is taken against (the naive per-frame result), or None. Feed frames in order with :meth:`add`.
    """

    def __init__(self, names: Sequence[str], *, reference: str | None = None, categories: Sequence[str] = (),
                 estimator: str = METRIC_FLOW) -> None:
        self.names = list(names)
        self.reference = reference
        self.categories = list(categories)
        self._est = FlowEstimator(estimator)
        self._src = WarpingError()
        self._err = {n: WarpingError() for n in self.names}
        self._strength = {n: 0.0 for n in self.names}
        self._part_strength: dict[str, dict[int, list[float]]] = {n: {} for n in self.names}
        self._ssim: dict[str, list[float]] = {n: [] for n in self.names}
        self._prev: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        self.frames = 0

    def add(self, original: np.ndarray, styled: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
        """One frame: the original and each named styled version (same size); optional label map."""
        for name, s in styled.items():
            if s.shape != original.shape:
                raise MetricError(f"frame {self.frames}: original is {list(original.shape)} but {name} is "
                                  f"{list(s.shape)}; compare videos of the same size")
        lab = None if labels is None else np.where(np.asarray(labels) < 0, -1, np.asarray(labels))
        if self._prev is not None:
            prev_o, prev_s = self._prev
            fwd, bwd = self._est.both(original, prev_o)
            ff = FrameFlow(fwd, reliable_mask(fwd, bwd))
            self._src.add(prev_o, original, ff)
            for name in self.names:
                self._err[name].add(prev_s[name], styled[name], ff, lab)
        ref = styled.get(self.reference) if self.reference else None
        for name in self.names:
            diff = np.abs(_f(styled[name]) - _f(original)).mean(-1)
            self._strength[name] += float(diff.mean())
            if lab is not None:
                for k in np.unique(lab):
                    self._part_strength[name].setdefault(int(k), []).append(float(diff[lab == k].mean()))
            if ref is not None:
                self._ssim[name].append(ssim(styled[name], ref))
        self._prev = (original, dict(styled))
        self.frames += 1

    def _name(self, k: int) -> str:
        return "background" if k < 0 else (self.categories[k] if k < len(self.categories) else f"label {k}")

    def result(self) -> dict[str, VideoMetrics]:
        """The figures of each named version."""
        if self.frames == 0:
            raise MetricError("no frames to measure")
        out = {}
        for name in self.names:
            parts: dict[str, dict[str, list[float]]] = {}
            for k, err in self._err[name].per_label().items():
                parts.setdefault(self._name(k), {}).setdefault("warping_error", []).append(err)
            for k, vals in self._part_strength[name].items():
                parts.setdefault(self._name(k), {}).setdefault("style_strength", []).extend(vals)
            out[name] = VideoMetrics(
                frames=self.frames, warping_error=self._err[name].mean, source_warping_error=self._src.mean,
                style_strength=self._strength[name] / self.frames,
                ssim_to_naive=float(np.mean(self._ssim[name])) if self._ssim[name] else None,
                parts={p: {m: float(np.mean(v)) for m, v in d.items()} for p, d in sorted(parts.items())},
                per_frame_warping_error=self._err[name].per_frame)
        return out


def measure(original: Iterable[np.ndarray], styled: Iterable[np.ndarray], *,
            naive: Iterable[np.ndarray] | None = None, labels: Iterable[np.ndarray] | None = None,
            categories: Sequence[str] = (), estimator: str = METRIC_FLOW) -> VideoMetrics:
    """Measure ``styled`` against ``original`` (same length and size; streamed, two frames held at a time).

    ``naive``: the per-frame styled result, for SSIM. ``labels``: per-frame label maps, with
    ``categories`` naming each label (negative labels are ``background``), for per-part figures.
    """
    meter = Meter(["styled", "naive"] if naive is not None else ["styled"],
                  reference="naive" if naive is not None else None, categories=categories, estimator=estimator)
    naive_it = iter(naive) if naive is not None else None
    label_it = iter(labels) if labels is not None else None
    for o, s in zip(original, styled, strict=True):
        frames = {"styled": s}
        if naive_it is not None:
            frames["naive"] = next(naive_it)
        meter.add(o, frames, None if label_it is None else next(label_it))
    return meter.result()["styled"]
