"""What a plan reads besides the images, read once at the edge and handed to the pure stylizer.

Style images (decoded, pixel-limited) and trained feed-forward checkpoints (plain state dicts loaded with
``torch.load(weights_only=True)``) come from local paths, ``s3://`` URIs or registry names through
:mod:`nstray.storage` / :mod:`nstray.weights`. :class:`~nstray.stylize.parts.PartStylizer` takes them as
arrays and dicts (``assets=``), so nothing under ``nstray/stylize`` touches storage, and a job can load
(and so check) everything it will need before Ray starts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AssetError", "PlanAssets", "load_style_image", "read_checkpoint", "load_feedforward", "load_plan_assets"]


class AssetError(ValueError):
    """A style image or checkpoint of a plan cannot be used; the message names the plan field and the file."""


@dataclass
class PlanAssets:
    """``images``: style image URI → ``uint8[H, W, 3]``; ``checkpoints``: weights reference → checkpoint dict."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_style_image(uri: str, *, max_pixels: int = 50_000_000, limit_hint: str = "limits.max_pixels") -> np.ndarray:
    """Read a style image (local path or ``s3://``) as ``uint8[H, W, 3]``: it must exist, be an image within
    ``max_pixels`` (checked from the header, before decoding; ``limit_hint`` names the setting that raises
    it) and decode. Errors name the file and the fix."""
    from nstray import storage
    from nstray.data.images import ImageDecodeError, decode_image, probe_image

    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise AssetError(f"cannot read the style image: {exc}; fix: correct the path (relative paths are relative "
                         "to the plan file)") from None
    try:
        info = probe_image(data, uri)
        if info.pixels > max_pixels:
            raise AssetError(f"style image {uri} is {info.width}x{info.height} = {info.pixels:,} pixels, above the "
                             f"limit of {max_pixels:,}; fix: downscale it (style images rarely need more than 1024 px), "
                             f"or raise {limit_hint}")
        return decode_image(data, name=uri, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        raise AssetError(f"style image {exc.name}: {exc.reason}; fix: point the plan at a real PNG/JPEG/WebP "
                         "image") from None


def read_checkpoint(ref: str | Path) -> dict[str, Any]:
    """Load a feed-forward checkpoint dict (local path, ``s3://`` URI, or a registry name) with
    ``weights_only=True``, checked against the format (:func:`nstray.stylize.feedforward.check_checkpoint`)."""
    from nstray import storage, weights
    from nstray.stylize.feedforward import FeedforwardError, check_checkpoint

    text = str(ref)
    try:
        if storage.is_s3(text):
            source: Any = io.BytesIO(storage.read_bytes(text))  # fresh: a training run rewrites the same URI
        else:
            source = weights.resolve(text)
        ckpt = weights.load_checkpoint(source, f"feed-forward weights {text}")
    except (storage.StorageError, weights.WeightsNotFound) as exc:
        raise FeedforwardError(f"cannot read feed-forward weights {text}: {exc}") from None
    except (weights.WeightsChecksumError, weights.WeightsLoadError) as exc:
        raise FeedforwardError(str(exc)) from None
    return check_checkpoint(ckpt, text)


def load_feedforward(ref: str | Path, device: Any = "cpu"):
    """Read a checkpoint and build its network on ``device`` (eval, frozen)."""
    from nstray.stylize.feedforward import build_feedforward

    return build_feedforward(read_checkpoint(ref), str(ref)).to(device)


def load_plan_assets(plan: Any, *, max_pixels: int = 50_000_000) -> PlanAssets:
    """Every style image and checkpoint the plan's used styles need, read once; raises :class:`AssetError`
    naming the plan field (``styles.NAME.image``) and the file."""
    from nstray.plan import ArbitrarySpec, FeedforwardSpec
    from nstray.stylize.feedforward import FeedforwardError

    assets = PlanAssets()
    for name in sorted(plan.used_styles()):
        spec = plan.styles[name]
        if isinstance(spec, ArbitrarySpec):
            for uri in spec.images():
                if uri not in assets.images:
                    try:
                        assets.images[uri] = load_style_image(uri, max_pixels=max_pixels)
                    except AssetError as exc:
                        raise AssetError(f"styles.{name}.image: {exc}") from None
        elif isinstance(spec, FeedforwardSpec) and spec.weights not in assets.checkpoints:
            try:
                assets.checkpoints[spec.weights] = read_checkpoint(spec.weights)
            except FeedforwardError as exc:
                raise AssetError(f"styles.{name}.weights: {exc}") from None
    return assets
