"""Temporal stabilization of per-frame styled video along optical flow (pure numpy / OpenCV; no weights).

A stream filter in two halves per frame, because the network runs in between::

    stab = Stabilizer(strength=0.8)
    for src in frames:
        x = stab.begin(src)          # flow on the original frames; the network's denoised input
        styled = network(x)
        out = stab.finish(styled)    # the styled frame made consistent with the previous output

Conventions: frames are ``uint8[H, W, 3]`` RGB; the optional label map is integer ``[H, W]``.

Choices (and why), each measured on the shared clips (``benchmarks/video.py``):

* **Flow on the originals**, never on styled frames (styled texture has no stable motion): DIS
  (:mod:`nstray.video.flow`), both directions; forward–backward consistency detects shot cuts (below).
* **Input denoising.** A feed-forward style network amplifies sensor and compression noise into
  flickering strokes. :meth:`Stabilizer.begin` hands the network a flow-guided temporal average of
  the source (the current frame blended with the warped previous *denoised* frame where the flow is
  reliable and the two agree to within the noise level ``noise``), so the network sees the same
  pixels where the scene did not change. This costs one warp and removes much flicker at its source.
* **Output blending where the source is still.** The styled frame is blended with the previous
  output warped onto it, with a per-pixel weight ``strength · reliable · exp(-(Δsrc/σ)²)``: hard
  where the source pixel did not change (any change of the styled pixel there is flicker), not at
  all where the source really changed (new content, lighting). *Reliable* is by default only "the
  flow stays inside the frame": on textureless road and sky DIS fails the forward–backward check
  while any flow there carries the same source pixels, and the stillness gate (``Δsrc``, after
  warping) already refuses pixels the flow got wrong; the forward–backward masks (``occlusions``,
  ``boundaries``) are options. On the lane-lines clip the check refused a quarter of the pixels,
  which held most of the remaining warping error.
* **Texture restoration.** Blending two textures that disagree lowers their contrast, and bilinear
  resampling blurs: the style washes out (style strength 78–85% of naive at strength 0.8). After the
  blend, the high frequencies (above a Gaussian of σ ``texture_sigma``) are scaled up per pixel
  towards the naive frame's local energy, by the fraction ``texture`` of what was lost (gain capped
  at 3). It raises the warping error (it restores some flicker), which is why it is a fraction.
  Sharper resampling (bicubic) was measured instead and raised the warping error more per point of
  strength.
* **Long-term consistency** (``long_term``, off by default). The output can also be pulled towards a
  *reference* output warped by the composed flow from the reference frame (one resampling, not a
  chain), refreshed every ``ref_every`` frames. Measured, it lowers the warping error a little and
  costs much SSIM to naive (drift towards the reference): 0.3 → 0.41–0.67, against 0.54–0.79 without.
* **Shot cuts reset** everything: a cut is a frame where less than ``cut_reliable`` of the pixels have
  a forward–backward consistent flow to the previous frame or their mean difference after warping exceeds ``cut_diff``.
* **One knob**, ``strength`` in ``[0, 1]``: 0 is naive per-frame styling (outputs bit-identical to the
  network's), 1 the strongest consistency. ``texture``, ``denoise`` and ``long_term`` are expert settings.
* **Parts**: with label maps, pixels whose part changed between frames (a part edge moved) are not
  blended across, so stabilization follows the part masks; pixels the plan leaves unstyled (the
  styled frame equals the source there) keep the source's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from nstray.video.flow import FlowEstimator, compose, consistency, leaves_frame, warp

__all__ = ["StabilizeError", "Stabilizer", "StabilizerStats", "DEFAULT_FLOW"]

DEFAULT_FLOW = "dis-medium"


class StabilizeError(ValueError):
    """Bad input to the stabilizer (sizes, dtypes, call order); the message says which."""


@dataclass
class StabilizerStats:
    """Counters for the closing summary: frames seen, cuts detected, mean reliable fraction."""

    frames: int = 0
    cuts: int = 0
    reliable_sum: float = 0.0

    @property
    def reliable(self) -> float:
        return self.reliable_sum / max(1, self.frames - 1 - self.cuts)


def _f(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) * (1.0 / 255.0)


def _channel_max(x: np.ndarray) -> np.ndarray:
    """``x.max(-1)`` of an ``[H, W, 3]`` array, ~30× faster than numpy's reduction over a 3-long last axis."""
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def _channel_sum(x: np.ndarray) -> np.ndarray:
    """``x.sum(-1)`` of an ``[H, W, 3]`` array (the same additions, in the same order), without the slow reduction."""
    return x[..., 0] + x[..., 1] + x[..., 2]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _wide_blur(x: np.ndarray, sigma: float, factor: int = 4) -> np.ndarray:
    """A Gaussian blur of a smooth field with a wide ``sigma``, at 1/``factor`` resolution: area-downsample,
    blur by the rest of ``sigma`` (less the box's own variance), upsample bilinearly. At σ = 24 px on a
    512x288 frame: 0.1 ms instead of the full-resolution 193-tap blur's 4.1, within 1% of it on average
    (tests/test_video_temporal.py; the texture energy it smooths has almost nothing at the frequencies
    the shortcut loses)."""
    if sigma < 2 * factor:
        return cv2.GaussianBlur(x, (0, 0), sigma)
    h, w = x.shape[:2]
    small = cv2.resize(x, (-(-w // factor), -(-h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), np.sqrt(sigma ** 2 - (factor * factor - 1) / 12.0) / factor)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class Stabilizer:
    """Flow-guided temporal stabilization of styled frames (see the module docstring).

    ``strength``: the consistency knob in ``[0, 1]``. ``flow``: the estimator (:data:`DEFAULT_FLOW`).
    ``noise``: the source noise level (``[0, 1]`` units) below which a pixel counts as unchanged.
    ``boundaries``: also distrust motion boundaries (False: occlusions only; the stillness gate still applies).
    ``occlusions``: distrust pixels that fail the forward–backward check (False: only pixels whose flow leaves
    the frame; the stillness gate alone judges the rest — on textureless road and sky DIS fails the check
    while any flow there carries the same source pixels).
    ``texture``: the fraction of the high-frequency texture energy lost in the blend that is restored,
    per pixel, towards the naive frame's local energy (0: none; ``texture_sigma``: the split's σ in px).
    ``gate_blur``: σ (px) of a Gaussian blur of the source change before the stillness gate.
    ``denoise``: weight of the input's temporal average (0: the network sees the raw frame).
    ``long_term``: pull towards the reference output; ``ref_every``: frames between reference refreshes.
    ``interpolation``: the OpenCV kernel that resamples the previous and the reference *outputs* (label maps
    and masks are always resampled nearest / bilinear). ``flow`` may also be an object with
    ``both(a, b)`` like :class:`~nstray.video.flow.FlowEstimator` (e.g. a cache of flows).
    Defaults are the measured best (``benchmarks/video_sweep.py``) on the three shared real clips at 512 px,
    40 frames, multi-style 19 (intel car-detection / lanelines / udacity vehicle-detection): warping error
    5.6% / 15.6% / 24.0% of naive, style strength 96.9% / 93.8% / 92.0% of naive, SSIM to naive 0.79 / 0.54 /
    0.62 (the previous defaults — strength 0.9, forward–backward reliability, long-term 0.6, no texture
    restoration — gave 3.3% / 35.9% / 27.2%, 83.8% / 89.0% / 89.1%, 0.46 / 0.55 / 0.52). Input denoising is
    off because it lowered SSIM to naive without lowering the warping error.
    """

    def __init__(self, strength: float = 0.8, *, flow: str | object = DEFAULT_FLOW, noise: float = 0.15,
                 denoise: float = 0.0, ref_every: int = 6, long_term: float = 0.0, gate_blur: float = 2.0,
                 boundaries: bool = False, cut_reliable: float = 0.2, cut_diff: float = 0.2,
                 interpolation: int = cv2.INTER_LINEAR, occlusions: bool = False, texture: float = 0.6,
                 texture_sigma: float = 6.0) -> None:
        if not 0.0 <= strength <= 1.0:
            raise StabilizeError(f"strength must be in [0, 1], got {strength}")
        self.strength = float(strength)
        self.denoise = float(denoise)
        self.long_term = float(long_term)
        self.noise = float(noise)
        self.gate_blur = float(gate_blur)
        self.boundaries = bool(boundaries)
        self.occlusions = bool(occlusions)
        self.texture, self.texture_sigma = float(texture), float(texture_sigma)
        self.ref_every = int(ref_every)
        self.cut_reliable, self.cut_diff = float(cut_reliable), float(cut_diff)
        self.interpolation = int(interpolation)
        active = strength > 0 or denoise > 0
        self._est = (FlowEstimator(flow) if isinstance(flow, str) else flow) if active else None
        self.stats = StabilizerStats()
        self.reset()

    def reset(self) -> None:
        """Forget the past (a shot cut, or a new video)."""
        self._src: np.ndarray | None = None  # previous original frame (uint8)
        self._den: np.ndarray | None = None  # previous denoised input (float; kept only when denoising)
        self._out: np.ndarray | None = None  # previous output (float)
        self._labels: np.ndarray | None = None
        self._ref_out: np.ndarray | None = None  # reference output (float) and the composed flow to it
        self._to_ref: np.ndarray | None = None
        self._ref_ok: np.ndarray | None = None
        self._ref_age = 0
        self._cur: tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None] | None = None

    # ------------------------------------------------------------------ per frame

    def begin(self, src: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Take the next original frame; return the (denoised) frame to give the style network."""
        if not isinstance(src, np.ndarray) or src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
            got = f"{src.dtype} {list(src.shape)}" if isinstance(src, np.ndarray) else type(src).__name__
            raise StabilizeError(f"a frame must be uint8 [H, W, 3], got {got}")
        if self._cur is not None:
            raise StabilizeError("begin() called twice without finish(); call finish(styled) for each frame")
        self.stats.frames += 1
        if self._src is not None and self._src.shape != src.shape:
            raise StabilizeError(f"frame size changed from {list(self._src.shape)} to {list(src.shape)}")
        if self._est is None or self._src is None:
            self._cur = (src, None, None, None)
            self._pending_labels = labels
            if self.denoise > 0:
                self._den = _f(src)
            return src
        fwd, bwd = self._est.both(src, self._src)  # current -> previous, previous -> current
        occluded, boundary = consistency(fwd, bwd)
        fb_ok = ~(occluded | boundary)  # the flow's own reliability: for cut detection and the stats
        s = _f(src)
        warped_src = warp(_f(self._src), fwd)
        still = _channel_max(np.abs(s - warped_src))
        if fb_ok.mean() < self.cut_reliable or float(still[fb_ok].mean() if fb_ok.any() else 1.0) > self.cut_diff:
            self.stats.cuts += 1
            frames, stats = self.stats.frames, self.stats
            self.reset()
            self.stats = stats
            self.stats.frames = frames
            self._cur = (src, None, None, None)
            self._pending_labels = labels
            self._den = s if self.denoise > 0 else None
            return src
        self.stats.reliable_sum += float(fb_ok.mean())
        if not self.occlusions:  # only pixels whose flow leaves the frame; the stillness gate judges the rest
            occluded = leaves_frame(fwd)
        ok = ~(occluded | boundary) if self.boundaries else ~occluded
        if labels is not None and self._labels is not None:
            ok = ok & (warp(self._labels.astype(np.float32), fwd, interpolation=cv2.INTER_NEAREST)
                       == labels.astype(np.float32))
        okf = ok.astype(np.float32)  # a bool array times a Python float would be float64 (and so all that follows)
        x = src  # without denoising the network sees the frame itself (so a caller's naive pass is the same one)
        if self.denoise > 0:  # input: temporal average where the flow is reliable and the source agrees within the noise
            wd = warp(self._den, fwd)
            agree = np.exp(-(_channel_max(np.abs(s - wd)) / self.noise) ** 2)
            a = (self.denoise * okf * agree)[..., None]
            self._den = s + a * (wd - s)
            x = _u8(self._den)
        if self.gate_blur > 0:  # resampling error is fine-grained, real change is not: judge stillness smoothed
            still = cv2.GaussianBlur(still, (0, 0), self.gate_blur)
        weight = self.strength * okf * np.exp(-(still / self.noise) ** 2)
        self._cur = (src, fwd, ok, weight)
        self._pending_labels = labels
        return x

    def _warp_out(self, image: np.ndarray, flow: np.ndarray) -> np.ndarray:
        out = warp(image, flow, interpolation=self.interpolation)
        return out if self.interpolation == cv2.INTER_LINEAR else np.clip(out, 0.0, 1.0, out=out)

    def _restore_texture(self, y: np.ndarray, naive: np.ndarray) -> np.ndarray:
        """``y`` with its high frequencies scaled up, per pixel, towards the naive frame's local energy."""
        sig = self.texture_sigma

        def split(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            low = cv2.GaussianBlur(z, (0, 0), sig)
            return low, z - low

        low, high = split(y)
        _, high_n = split(naive)
        win = 4.0 * sig
        e_y = _wide_blur(_channel_sum(high ** 2), win)
        e_n = _wide_blur(_channel_sum(high_n ** 2), win)
        gain = np.sqrt((e_n + 1e-6) / (e_y + 1e-6))
        gain = 1.0 + self.texture * (np.clip(gain, 1.0, 3.0) - 1.0)
        return np.clip(low + gain[..., None] * high, 0.0, 1.0)

    def finish(self, styled: np.ndarray) -> np.ndarray:
        """Take the network's output for the frame given to :meth:`begin`; return the stabilized frame."""
        if self._cur is None:
            raise StabilizeError("finish() called before begin(); call begin(frame) first")
        src, fwd, ok, weight = self._cur
        self._cur = None
        if styled.shape != src.shape or styled.dtype != np.uint8:
            raise StabilizeError(f"the styled frame is {styled.dtype} {list(styled.shape)}, expected uint8 "
                                 f"{list(src.shape)} like its source")
        y = _f(styled)
        if fwd is not None and self._out is not None:
            prev = self._warp_out(self._out, fwd)
            y = y + weight[..., None] * (prev - y)
            if self.long_term > 0 and self._ref_out is not None:
                self._to_ref = compose(fwd, self._to_ref)
                self._ref_ok = ok & (warp(self._ref_ok.astype(np.float32), fwd) > 0.99)
                ref = self._warp_out(self._ref_out, self._to_ref)
                lt = (self.long_term * self._ref_ok * (weight > 0.5 * self.strength))[..., None]
                y = y + lt * (ref - y)
        if self.texture > 0 and fwd is not None and self._est is not None:
            y = self._restore_texture(y, _f(styled))  # fed back too: the next blend starts from what is shown
        out = _u8(y) if self._est is not None else styled
        if fwd is not None:  # pixels the plan leaves unstyled stay the source's bytes
            same = styled == src
            untouched = same[..., 0] & same[..., 1] & same[..., 2]
            out[untouched] = styled[untouched]
            y[untouched] = _f(styled[untouched])
        if self._est is not None:
            self._out = y
            self._src = src
            self._labels = self._pending_labels
            self._ref_age += 1
            if self.long_term > 0 and (self._ref_out is None or self._ref_age >= self.ref_every):
                h, w = src.shape[:2]
                self._ref_out, self._ref_age = y, 0
                self._to_ref = np.zeros((h, w, 2), np.float32)
                self._ref_ok = np.ones((h, w), bool)
        return out
