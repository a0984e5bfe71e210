"""Optimization-based style transfer (Gatys et al. 2016) with per-part styles in one optimization.

:func:`optimize` turns the pixels of an image into the variable of an optimization: VGG features of
the result should match the content image's at the content layers and the style images' Gram
matrices at the style layers (plus an optional total-variation prior).

* **Per-part styles** (Gatys et al. 2017, spatial control): with ``masks[K, H, W]`` region ``k`` is
  styled by ``style[k]`` through masked (guided) Gram matrices (:class:`GuidedStyleLoss`), all in
  one optimization. Pixels outside every region get no style loss, only the content loss, so the
  background stays close to the content.
* **Reconstructions**: ``reconstruct="content"`` (content loss only) and ``"style"`` (style loss only,
  texture synthesis) start from noise by default and show what one representation holds.
* **Optimizers**: L-BFGS or Adam; a *step* is one forward/backward evaluation for both (the unit of
  cost). The losses are taken on ``clamp(x, 0, 1)``, the image that is saved. Adam also projects
  ``x`` back into [0, 1] after each step. L-BFGS does not (moving ``x`` behind its back breaks its
  curvature pairs: the tutorial's clamp-in-closure makes it spike and diverge) and by default uses
  a strong-Wolfe line search, so it never accepts a step that raises the loss (a plain fixed step
  can throw many pixels out of range at once, where their gradient is zero, and stall);
  ``line_search=False`` is the tutorial's fixed-step L-BFGS (one evaluation per iteration).
* **Coarse to fine**: ``levels > 1`` optimizes at 1/2^(L-1) … 1/2, 1 of the size, each level starting
  from the upsampled previous result; most structure is settled on small images, so the costly
  full-size level needs fewer steps (pass a list of steps per level). ``max_size`` caps the long side.
* **GPU**: channels-last on CUDA; bf16 autocast by default only for Adam (L-BFGS's curvature pairs are
  sensitive to gradient noise, so it stays float32 unless ``amp=True``). Gram matrices and losses
  are always computed in float32.

Pure tensor code: images in, image and loss history out. :func:`encode_animation` turns recorded
frames into GIF/MP4 bytes and :func:`nstray.plots.render_loss_plot` the history into a PNG; callers
write them.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nstray.models.vgg import DEFAULT_WEIGHTS, VGGEncoder, vgg_encoder
from nstray.plots import LOSS_TERMS
from nstray.stylize.losses import ContentLoss, GuidedStyleLoss, StyleLoss, TotalVariationLoss, resize_masks

__all__ = [
    "DEFAULT_CONTENT_LAYERS",
    "DEFAULT_STYLE_LAYERS",
    "StyleInput",
    "Progress",
    "OptimizeResult",
    "FrameRecorder",
    "level_sizes",
    "optimize",
    "encode_animation",
    "to_uint8",
]

# Gatys et al. name Caffe blobs, whose ReLUs run in place: their "conv4_2" is our relu4_2.
DEFAULT_CONTENT_LAYERS: dict[str, float] = {"relu4_2": 1.0}
DEFAULT_STYLE_LAYERS: dict[str, float] = {f"relu{i}_1": 1.0 for i in range(1, 6)}
MIN_LEVEL_SIDE = 32

StyleBlend = Sequence[tuple[Tensor, float]]
StyleInput = Tensor | StyleBlend
"""One style: an image ``[3, H, W]``, or a blend ``[(image, weight), ...]`` whose Gram targets are mixed."""


@dataclass
class Progress:
    """What a progress callback gets every ``callback_every`` steps (evaluations), and at the last one."""

    step: int  # global step, 1-based, over all levels
    total: int  # total steps over all levels
    level: int  # 0-based resolution level
    levels: int
    size: tuple[int, int]  # (H, W) of this level
    losses: dict[str, float]  # weighted terms: content, style, tv, total, of `image`
    image: Tensor  # the image [3, h, w] in [0, 1] these losses were taken at (detached; copy it to keep it)


@dataclass
class OptimizeResult:
    """The optimized image ``[3, H, W]`` (float32, CPU, in [0, 1]) and a loss history row per step."""

    image: Tensor
    history: list[dict[str, float]] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0


def to_uint8(image: Tensor) -> np.ndarray:
    """``[3, H, W]`` (or ``[1, 3, H, W]``) floats in [0, 1] → ``uint8[H, W, 3]``."""
    if image.dim() == 4:
        image = image[0]
    arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes coarse → fine, halving per level; levels whose short side would drop below 32 px are skipped."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    sizes = []
    for i in range(levels - 1, -1, -1):
        s = 2**i
        h, w = max(1, round(height / s)), max(1, round(width / s))
        if i == 0 or min(h, w) >= MIN_LEVEL_SIDE:
            sizes.append((h, w))
    return sizes


def _as_batch(image: Tensor, what: str) -> Tensor:
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"{what} must be [3, H, W] or [1, 3, H, W] RGB in [0, 1], got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    return image.float().contiguous()


def _resize(image: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def _fit(height: int, width: int, long_side: int) -> tuple[int, int]:
    s = long_side / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def _blend(style: StyleInput) -> list[tuple[Tensor, float]]:
    """A style as a normalized ``[(image[1, 3, H, W], weight), ...]``."""
    if isinstance(style, Tensor):
        return [(_as_batch(style, "style"), 1.0)]
    items = list(style)
    if not items or not all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], Tensor) for i in items):
        raise ValueError("a style is an image tensor or a blend [(image, weight), ...]")
    total = sum(float(w) for _, w in items)
    if total <= 0 or any(float(w) < 0 for _, w in items):
        raise ValueError("blend weights must be non-negative and not all zero")
    return [(_as_batch(img, "style"), float(w) / total) for img, w in items]


def optimize(
    content: Tensor,
    style: StyleInput | Sequence[StyleInput] | None = None,
    *,
    masks: Tensor | None = None,
    region_weights: Sequence[float] | None = None,
    encoder: VGGEncoder | None = None,
    weights: str | None = DEFAULT_WEIGHTS,
    arch: str = "vgg19",
    pool: str = "max",
    content_layers: Mapping[str, float] = DEFAULT_CONTENT_LAYERS,
    style_layers: Mapping[str, float] = DEFAULT_STYLE_LAYERS,
    content_weight: float = 1.0,
    style_weight: float = 1e6,
    tv_weight: float = 0.0,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    init: str | None = None,
    steps: int | Sequence[int] = 300,
    reconstruct: str | None = None,
    max_size: int | None = None,
    levels: int = 1,
    style_scale: float = 1.0,
    lbfgs_history: int = 100,
    line_search: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    callback: Callable[[Progress], None] | None = None,
    callback_every: int = 1,
) -> OptimizeResult:
    """Optimize an image toward ``content``'s features and ``style``'s Gram matrices.

    Images are ``[3, H, W]`` float in [0, 1] (or uint8). ``style`` is one style, or with ``masks``
    (``[K, H, W]`` at the content's size, bool or float) a list of one style per region; a style is an
    image or a blend ``[(image, weight), ...]`` (weighted mean of the images' Gram matrices). ``init``:
    ``"content"`` (default), ``"style"`` or ``"noise"`` (default for reconstructions). ``steps``: per
    level, an int (same for every level) or a list coarse → fine. ``encoder`` (a built
    :class:`VGGEncoder` with every layer used; it is moved to ``device``) overrides
    ``weights``/``arch``/``pool``. ``lr``: 1.0 for L-BFGS, 0.02 for Adam by default. ``callback`` gets
    a :class:`Progress` every ``callback_every`` evaluations. Returns the image at the processed size
    (``max_size``) and one history row per evaluation.
    """
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if reconstruct not in (None, "content", "style"):
        raise ValueError(f"reconstruct must be None, 'content' or 'style', got {reconstruct!r}")
    init = init or ("noise" if reconstruct else "content")
    if init not in ("content", "style", "noise"):
        raise ValueError(f"init must be 'content', 'style' or 'noise', got {init!r}")
    if callback_every < 1:
        raise ValueError("callback_every must be >= 1")

    use_content = reconstruct != "style" and content_weight > 0
    use_style = reconstruct != "content" and style_weight > 0
    use_tv = reconstruct is None and tv_weight > 0

    content = _as_batch(content, "content")
    styles: list[list[tuple[Tensor, float]]] = []  # per region: normalized blend
    if style is not None:
        if masks is None:
            styles = [_blend(style)]
        elif isinstance(style, Tensor):
            raise ValueError("with masks, style must be a list with one style per region")
        else:
            styles = [_blend(s) for s in style]
    if (use_style or init == "style") and not styles:
        raise ValueError("a style image is needed (or use reconstruct='content')")
    if masks is not None:
        if masks.dim() != 3 or tuple(masks.shape[-2:]) != tuple(content.shape[-2:]):
            raise ValueError(f"masks must be [K, H, W] at the content's size {tuple(content.shape[-2:])}, got {tuple(masks.shape)}")
        if masks.shape[0] != len(styles):
            raise ValueError(f"{masks.shape[0]} masks but {len(styles)} styles: one style per region")
        masks = masks.float().unsqueeze(0)

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    if amp is None:
        amp = cuda and optimizer == "adam" and torch.cuda.is_bf16_supported()
    if channels_last is None:
        channels_last = cuda

    if encoder is None:
        encoder = vgg_encoder(arch, [*content_layers, *style_layers], weights, pool=pool)
    else:
        missing = [n for n in [*content_layers, *style_layers] if n not in encoder.layers]
        if missing:
            raise ValueError(f"the encoder does not return layer(s) {missing}; build it with them")
    encoder = encoder.to(dev)
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    content_loss = ContentLoss(content_layers)
    style_loss = StyleLoss(style_layers)
    guided_loss = GuidedStyleLoss(style_layers, region_weights) if masks is not None else None
    tv_loss = TotalVariationLoss()

    h0, w0 = content.shape[-2:]
    if max_size is not None and max(h0, w0) > max_size:
        h0, w0 = _fit(h0, w0, max_size)
    sizes = level_sizes(h0, w0, levels)
    per_level = [int(steps)] * len(sizes) if isinstance(steps, int) else [int(s) for s in steps]
    if len(per_level) != len(sizes):
        raise ValueError(f"{len(per_level)} step counts for {len(sizes)} levels {sizes}")
    total_steps = sum(per_level)

    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else nullcontext
    mem_format = torch.channels_last if channels_last else torch.contiguous_format

    def encode(x: Tensor) -> dict[str, Tensor]:
        with autocast():
            return encoder(x.contiguous(memory_format=mem_format))

    gen = torch.Generator().manual_seed(seed)
    history_t: list[Tensor] = []
    history_level: list[int] = []
    start = time.perf_counter()
    x: Tensor | None = None
    step = 0
    for level, (size, n_steps) in enumerate(zip(sizes, per_level)):
        content_l = _resize(content.to(dev), size)
        with torch.no_grad():
            content_targets = {k: v.float() for k, v in encode(content_l).items() if k in content_layers} if use_content else {}
            style_targets: dict[str, Tensor] = {}
            masks_l = None
            if use_style:
                long_side = max(1, round(max(size) * style_scale))
                grams = []
                for blend in styles:
                    mixed: dict[str, Tensor] = {}
                    for img, wt in blend:
                        g = style_loss.targets(encode(_resize(img.to(dev), _fit(*img.shape[-2:], long_side))))
                        for k, v in g.items():
                            mixed[k] = wt * v if k not in mixed else mixed[k] + wt * v
                    grams.append(mixed)
                if masks is not None:
                    style_targets = {k: torch.cat([g[k] for g in grams], dim=0) for k in style_layers}  # [K, C, C]
                    masks_l = resize_masks(masks.to(dev), size)
                else:
                    style_targets = grams[0]

        if x is None:
            if init == "content":
                x0 = content_l.clone()
            elif init == "style":
                x0 = _resize(styles[0][0][0].to(dev), size)
            else:
                x0 = torch.rand((1, 3, *size), generator=gen).to(dev)
        else:
            x0 = _resize(x.detach().clamp(0.0, 1.0), size)
        x = x0.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)  # L-BFGS views grads flat

        if optimizer == "lbfgs":
            opt: torch.optim.Optimizer = torch.optim.LBFGS(
                [x], lr=lr or 1.0, history_size=lbfgs_history,
                max_iter=n_steps if line_search else 1, max_eval=n_steps if line_search else None,
                line_search_fn="strong_wolfe" if line_search else None,
                tolerance_grad=0.0, tolerance_change=0.0,  # run the steps asked for; stop only when stuck exactly
            )
        else:
            opt = torch.optim.Adam([x], lr=lr or 0.02)

        def closure() -> Tensor:
            nonlocal step
            opt.zero_grad(set_to_none=True)
            xi = x.clamp(0.0, 1.0)  # the losses see the image as it will be saved
            feats = encode(xi)
            zero = x.new_zeros(())
            c = content_weight * content_loss(feats, content_targets) if use_content else zero
            if use_style:
                s = style_weight * (guided_loss(feats, masks_l, style_targets) if guided_loss is not None
                                    else style_loss(feats, style_targets))
            else:
                s = zero
            t = tv_weight * tv_loss(xi) if use_tv else zero
            total = c + s + t
            total.backward()
            terms = torch.stack([c, s, t, total]).detach()
            history_t.append(terms)
            history_level.append(level)
            step += 1
            if callback is not None and (step % callback_every == 0 or step == total_steps):
                values = dict(zip(LOSS_TERMS, terms.float().cpu().tolist()))
                callback(Progress(step, total_steps, level, len(sizes), size, values, xi.detach()[0]))
            return total

        if optimizer == "lbfgs" and line_search:
            opt.step(closure)  # up to n_steps evaluations; stops early once converged
        else:
            for _ in range(n_steps):
                opt.step(closure)
                if optimizer == "adam":
                    with torch.no_grad():
                        x.clamp_(0.0, 1.0)

    assert x is not None
    rows = torch.stack(history_t).float().cpu().tolist() if history_t else []
    history = [{"step": i + 1, "level": lv, **dict(zip(LOSS_TERMS, r))} for i, (lv, r) in enumerate(zip(history_level, rows))]
    image = x.detach()[0].float().cpu().clamp_(0, 1)
    return OptimizeResult(image=image, history=history, sizes=sizes, seconds=time.perf_counter() - start)


class FrameRecorder:
    """A progress callback that keeps a ``uint8[H, W, 3]`` frame every ``every`` steps.

    Frames of coarse levels are resized to ``size`` (the final (H, W)) so an animation has one size.
    """

    def __init__(self, every: int, size: tuple[int, int] | None = None) -> None:
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every = every
        self.size = size
        self.frames: list[np.ndarray] = []

    def add(self, image: Tensor) -> None:
        """Record ``image[3, h, w]`` now (e.g. the end state), unless it repeats the last frame."""
        img = image.detach().float().unsqueeze(0)
        if self.size is not None and tuple(img.shape[-2:]) != tuple(self.size):
            img = F.interpolate(img, size=self.size, mode="bilinear", align_corners=False)
        frame = to_uint8(img)
        if not self.frames or not np.array_equal(frame, self.frames[-1]):  # e.g. the end state, already seen
            self.frames.append(frame)

    def __call__(self, progress: Progress) -> None:
        if progress.step % self.every == 0 or progress.step == progress.total:
            self.add(progress.image)


def encode_animation(frames: Sequence[np.ndarray], fmt: str, fps: float = 10.0) -> bytes:
    """Frames ``uint8[H, W, 3]`` → an animated GIF (Pillow) or an H.264 MP4 (PyAV) as bytes."""
    if not frames:
        raise ValueError("no frames to encode")
    fmt = fmt.lower().lstrip(".")
    if fmt == "gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        buf = io.BytesIO()
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0)
        return buf.getvalue()
    if fmt == "mp4":
        import av
        from fractions import Fraction

        h, w = frames[0].shape[:2]
        h2, w2 = h + h % 2, w + w % 2  # yuv420p needs even sides: pad by edge replication
        buf = io.BytesIO()
        with av.open(buf, mode="w", format="mp4") as container:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}
            for f in frames:
                if f.shape[:2] != (h, w):
                    raise ValueError(f"all frames must be {h}x{w}, got {f.shape[0]}x{f.shape[1]}")
                if (h2, w2) != (h, w):
                    f = np.pad(f, ((0, h2 - h), (0, w2 - w), (0, 0)), mode="edge")
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return buf.getvalue()
    raise ValueError(f"animation format must be gif or mp4, got {fmt!r}")
