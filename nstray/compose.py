"""Compositing stylized layers into the original image by part masks (pure tensors).

Conventions: images are float ``[3, H, W]`` in ``[0, 1]``; a label map is integer ``[H, W]``
with ``k`` = part ``k`` and any negative value = no part. The batched forms (:func:`composite_batch`,
:func:`inside_distance` / :func:`feather_ramp` on ``[B, H, W]``) take a leading batch dimension and
never wait on the host on a GPU, so a batch of images is composited in a handful of kernels.

Choices (and why):

* **Feathering stays inside the part.** A part's alpha is 1 deep inside and falls off over
  ``feather_px`` pixels towards the part's own border (a distance ramp measured *inside*
  the part), and is exactly 0 outside it. So a soft edge never leaks style onto a
  neighbouring part or the background, and pixels outside every styled part are
  bit-identical to the input for any ``feather_px``. Borders with the image frame are not
  edges (a part touching the frame is not faded there). Between two adjacent styled parts
  both fade, so a thin band of the original photo separates their styles — a soft seam.
  The distance is octagonal (alternating 3×3 square and plus-shaped steps), which is close
  to Euclidean and needs only max-pooling over the label map: the cost does not grow with K.
* **Strength is a pixel blend** with the original (``alpha · strength``), the same for every
  network kind; strength 0 leaves a part exactly as it was.
* **Colour preservation** keeps the original's chroma and takes the stylized luminance, in
  YCbCr (ITU-R BT.601, full range, as JPEG/PIL use): cheap, invertible, and luminance is what
  carries the brush strokes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "inside_distance",
    "soft_masks",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "preserve_color",
    "feather_ramp",
    "composite",
    "composite_batch",
    "to_uint8",
    "PALETTE",
    "overlay",
]

# BT.601 full-range RGB -> YCbCr (JPEG / PIL), chroma centred on 0.5 for values in [0, 1]
_RGB2YCC = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)
_YCC2RGB = torch.linalg.inv(_RGB2YCC)


def _max3(x: Tensor, dim: int) -> Tensor:
    """Max over each element and its two neighbours along ``dim`` (the frame is not a neighbour): a 1×3 max
    filter as two shifted elementwise maxima (several times faster than a one-channel ``max_pool2d``)."""
    out = x.clone()
    n = x.shape[dim]
    right = out.narrow(dim, 1, n - 1)
    torch.maximum(right, x.narrow(dim, 0, n - 1), out=right)
    left = out.narrow(dim, 0, n - 1)
    torch.maximum(left, x.narrow(dim, 1, n - 1), out=left)
    return out


def inside_distance(label_map: Tensor, max_px: int) -> Tensor:
    """How many pixels each pixel lies inside its own label region, capped at ``max_px``.

    Returns int ``[H, W]`` (or ``[B, H, W]`` for a batch of label maps): 0 on a region's border (a
    pixel with a differently-labelled 8-neighbour), ``r`` where the octagonal neighbourhood of radius
    ``r`` holds only its label. The image frame is not a border.
    """
    if label_map.dim() not in (2, 3):
        raise ValueError(f"label_map must be [H, W] or [B, H, W], got {list(label_map.shape)}")
    lab = label_map.to(torch.float32).reshape(-1, *label_map.shape[-2:])  # small ints: exact in float32
    both = torch.stack([lab, -lab], 1)  # [N, 2, H, W]: the neighbourhood's highest and (negated) lowest label
    dist = torch.zeros_like(label_map, dtype=torch.int32)
    for r in range(max_px):
        if r % 2 == 0:  # 3x3 square step
            both = _max3(_max3(both, -1), -2)
        else:  # plus-shaped step: max of a row and a column pass
            both = torch.maximum(_max3(both, -1), _max3(both, -2))
        uniform = ((both[:, 0] == lab) & (both[:, 1] == -lab)).view(label_map.shape)
        if label_map.is_cpu and not bool(uniform.any()):  # a shortcut only where asking costs no device sync
            break
        dist += uniform.to(torch.int32)
    return dist


def feather_ramp(label_map: Tensor, feather_px: int) -> Tensor:
    """Each pixel's alpha factor from its distance inside its own region: ``1/(feather_px+1)`` on a
    border pixel rising to 1 at ``feather_px`` pixels inside (all 1 when ``feather_px`` is 0).
    ``label_map`` is ``[H, W]`` or ``[B, H, W]``."""
    if feather_px < 0:
        raise ValueError(f"feather_px must be >= 0, got {feather_px}")
    if feather_px == 0:
        return torch.ones(label_map.shape, dtype=torch.float32, device=label_map.device)
    ramp = (inside_distance(label_map, feather_px).to(torch.float32) + 1.0) / (feather_px + 1.0)
    return ramp.clamp_(max=1.0)


def soft_masks(label_map: Tensor, num_parts: int, feather_px: int = 0) -> Tensor:
    """Per-part alpha masks ``[K, H, W]`` in ``[0, 1]`` from a label map.

    ``feather_px == 0``: hard 0/1 masks. ``feather_px > 0``: the alpha ramps linearly from
    ``1/(feather_px+1)`` on the part's border pixel to 1 at ``feather_px`` pixels inside it;
    it is 0 everywhere outside the part (see the module notes).
    """
    labels = label_map.long()
    ramp = feather_ramp(labels, feather_px)
    if labels.numel() and int(labels.max()) >= num_parts:
        raise ValueError(f"label_map holds label {int(labels.max())} but only {num_parts} parts were given")
    ks = torch.arange(num_parts, device=labels.device)[:, None, None]
    hard = (labels[None] == ks).to(torch.float32)
    return hard if feather_px == 0 else hard * ramp[None]


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """``[..., 3, H, W]`` RGB in [0, 1] -> YCbCr (BT.601 full range, Cb/Cr centred on 0.5)."""
    m = _RGB2YCC.to(rgb.device, rgb.dtype)
    ycc = torch.einsum("ij,...jhw->...ihw", m, rgb)
    return ycc + torch.tensor([0.0, 0.5, 0.5], device=rgb.device, dtype=rgb.dtype)[:, None, None]


def ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    m = _YCC2RGB.to(ycc.device, ycc.dtype)
    centred = ycc - torch.tensor([0.0, 0.5, 0.5], device=ycc.device, dtype=ycc.dtype)[:, None, None]
    return torch.einsum("ij,...jhw->...ihw", m, centred)


def preserve_color(stylized: Tensor, original: Tensor) -> Tensor:
    """The stylized luminance with the original's chroma (Cb, Cr), clamped to [0, 1]."""
    y = rgb_to_ycbcr(stylized)[..., :1, :, :]
    cbcr = rgb_to_ycbcr(original)[..., 1:, :, :]
    return ycbcr_to_rgb(torch.cat([y, cbcr], dim=-3)).clamp_(0.0, 1.0)


def composite(
    original: Tensor,
    stylized_layers: Tensor,
    label_map: Tensor,
    strength: Sequence[float],
    preserve: Sequence[bool],
    layer_of: Sequence[int] | None = None,
    feather_px: int = 0,
) -> Tensor:
    """Blend stylized layers into ``original`` ([3, H, W]) part by part, by a label map.

    ``label_map``: ``[H, W]``, ``k`` = part ``k``, negative = no part. Part ``k``'s alpha is
    ``strength[k]`` times its :func:`feather_ramp` (the alphas of :func:`soft_masks`), and it takes
    its pixels from layer ``layer_of[k]`` of ``stylized_layers`` ``[L, 3, H, W]`` (default ``k``), with
    the original's chroma where ``preserve[k]``. Pixels of no part are returned exactly as in
    ``original``. Each pixel belongs to at most one part, so the blend is one pass per distinct
    (layer, preserve) pair, not per part: a handful of kernels per image, none waiting on the host.
    """
    k = len(strength)
    layer_of = list(range(k)) if layer_of is None else list(layer_of)
    if original.dim() != 3 or original.shape[0] != 3:
        raise ValueError(f"original must be [3, H, W], got {list(original.shape)}")
    if label_map.shape != original.shape[1:]:
        raise ValueError(f"label_map must be [{original.shape[1]}, {original.shape[2]}], got {list(label_map.shape)}")
    if stylized_layers.dim() != 4 or stylized_layers.shape[1:] != original.shape:
        raise ValueError(f"stylized_layers must be [L, {', '.join(map(str, original.shape))}], got {list(stylized_layers.shape)}")
    for name, values in (("preserve", preserve), ("layer_of", layer_of)):
        if len(values) != k:
            raise ValueError(f"{name} needs one value per part ({k}, as strength), got {len(values)}")
    if any(not 0 <= v <= 1 for v in strength):
        raise ValueError(f"strength must lie in [0, 1], got {list(strength)}")
    if any(not 0 <= i < stylized_layers.shape[0] for i in layer_of):
        raise ValueError(f"layer_of must index the {stylized_layers.shape[0]} layers, got {layer_of}")
    labels = label_map.long()
    if labels.numel() and int(labels.max()) >= k:
        raise ValueError(f"label_map holds label {int(labels.max())} but only {k} parts were given")
    if k == 0:
        return original.clone()
    dev = original.device
    out = composite_batch(
        original[None], [layer[None] for layer in stylized_layers], labels[None],
        torch.as_tensor(list(strength), dtype=original.dtype, device=dev)[None],
        torch.as_tensor(list(preserve), dtype=torch.bool, device=dev)[None],
        torch.as_tensor(layer_of, dtype=torch.long, device=dev)[None], feather_px,
    )
    return out[0]


def composite_batch(
    original: Tensor,
    layers: Sequence[Tensor],
    label_map: Tensor,
    strength: Tensor,
    preserve: Tensor,
    layer_of: Tensor,
    feather_px: int = 0,
) -> Tensor:
    """:func:`composite` for a batch, with per-image tables as tensors: no host round trip.

    ``original`` ``[B, 3, H, W]``; ``layers``: L tensors ``[B, 3, H, W]``; ``label_map`` ``[B, H, W]``
    (``k`` = part ``k`` of that image, negative = no part); ``strength`` ``[B, K]`` float,
    ``preserve`` ``[B, K]`` bool, ``layer_of`` ``[B, K]`` long (values < L): image ``b``'s part ``k``
    tables, padded to the batch's largest ``K`` (padding is never read). Each pixel takes its
    part's layer (with the original's chroma where ``preserve``) and is blended with alpha =
    strength × :func:`feather_ramp`; pixels of no part are ``original`` exactly. Labels must lie
    below ``K`` (not checked here: checking costs a device sync; :func:`composite` checks).
    """
    if original.dim() != 4 or original.shape[1] != 3:
        raise ValueError(f"original must be [B, 3, H, W], got {list(original.shape)}")
    b = original.shape[0]
    if label_map.shape != (b, *original.shape[2:]):
        raise ValueError(f"label_map must be [{b}, {original.shape[2]}, {original.shape[3]}], got {list(label_map.shape)}")
    if not layers or any(layer.shape != original.shape for layer in layers):
        raise ValueError(f"layers must be one or more tensors of shape {list(original.shape)}, "
                         f"got {[list(layer.shape) for layer in layers]}")
    for name, t in (("strength", strength), ("preserve", preserve), ("layer_of", layer_of)):
        if t.dim() != 2 or t.shape[0] != b:
            raise ValueError(f"{name} must be [{b}, K], got {list(t.shape)}")
    if not strength.shape == preserve.shape == layer_of.shape:
        raise ValueError(f"strength, preserve and layer_of must have one shape, got {list(strength.shape)}, "
                         f"{list(preserve.shape)}, {list(layer_of.shape)}")
    labels = label_map.long()
    inside = labels >= 0
    part = labels.clamp(min=0).flatten(1)  # [B, H·W]
    shape = labels.shape
    zero = torch.zeros((), dtype=original.dtype, device=original.device)
    # the same product as soft_masks' (1·ramp) times the strength, so alphas match it bit for bit
    alpha = feather_ramp(labels, feather_px) * strength.to(original.dtype).gather(1, part).view(shape)
    alpha = torch.where(inside, alpha, zero)[:, None]  # [B, 1, H, W]
    stylized = layers[0]
    if len(layers) > 1:
        which = layer_of.gather(1, part).view(shape)[:, None]
        for i in range(1, len(layers)):
            stylized = torch.where(which == i, layers[i], stylized)
    if not preserve.is_cpu or bool(preserve.any()):  # on a GPU, asking would cost a sync
        keep = (preserve.gather(1, part).view(shape) & inside)[:, None]
        stylized = torch.where(keep, preserve_color(stylized, original), stylized)
    blended = original * (1.0 - alpha) + alpha * stylized
    return torch.where(alpha > 0, blended, original)


def to_uint8(image: Tensor) -> Tensor:
    """``[..., 3, H, W]`` float in [0, 1] -> ``uint8 [..., H, W, 3]`` (rounded); u/255 round-trips exactly."""
    return (image.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8).movedim(-3, -1).contiguous()


PALETTE: list[tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
]
"""Distinct colours for drawing part overlays (colour ``i % len(PALETTE)`` for label ``i``)."""


def overlay(original: Tensor, label_map: Tensor, alpha: float = 0.55, colors: Tensor | None = None) -> Tensor:
    """The image with each label's region tinted in its own colour (``[3, H, W]`` in [0, 1]).

    ``colors``: ``[N, 3]`` in [0, 1] indexed by label (default :data:`PALETTE`); negative labels stay untinted.
    """
    labels = label_map.long()
    if colors is None:
        colors = torch.tensor(PALETTE, dtype=original.dtype, device=original.device) / 255.0
    idx = labels.clamp(min=0) % colors.shape[0]
    tint = colors[idx].permute(2, 0, 1)
    inside = (labels >= 0)[None]
    return torch.where(inside, original * (1 - alpha) + tint * alpha, original)
