"""Perceptual losses for style transfer (pure tensor code): content, style (Gram), guided style, TV.

Feature dicts come from :class:`nstray.models.vgg.VGGEncoder` (``{layer: [B, C, H, W]}``); each loss
holds only its per-layer weights. Targets and masks are passed to ``forward`` as arguments, so one
loss module serves an optimization (fixed targets) and a training loop (targets per batch) alike.

Normalization. The Gram matrix is ``G = F Fᵀ / (C·H·W)`` (``F``: ``C × HW`` features), the
convention of the PyTorch NST tutorial, so a style weight around ``1e6`` balances a content weight
of ``1`` with ImageNet VGG features. The guided (masked) Gram of region ``k`` divides by the
region's own (squared) mask mass instead of ``H·W``: ``G_k = (F∘m_k)(F∘m_k)ᵀ / (C·Σ m_k²)``, so a
region compares like-for-like with a whole style image's Gram whatever its size, and an all-ones
mask gives back the plain Gram.

Masks and layers (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer",
spatial control): region masks given at image resolution are resized to each layer's feature
resolution by area averaging (``adaptive_avg_pool2d``), so a feature vector is weighted by the
fraction of its cell the region covers; a region that vanishes at a deep layer simply drops out of
that layer's loss. Gram matrices are computed in float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "gram_matrix",
    "resize_masks",
    "ContentLoss",
    "StyleLoss",
    "GuidedStyleLoss",
    "TotalVariationLoss",
]

_EPS = 1e-8


def resize_masks(masks: Tensor, size: Sequence[int]) -> Tensor:
    """Resize ``masks[B, K, H, W]`` (floats in [0, 1]) to ``size`` = (h, w): area average down, bilinear up."""
    h, w = int(size[0]), int(size[1])
    if tuple(masks.shape[-2:]) == (h, w):
        return masks
    if h <= masks.shape[-2] and w <= masks.shape[-1]:
        return F.adaptive_avg_pool2d(masks, (h, w))
    return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


class _Gram(torch.autograd.Function):
    """``X Xᵀ`` for ``X[B, C, N]`` with a one-GEMM backward: ``dX = (dG + dGᵀ) X``.

    Autograd's generic backward of ``X @ Xᵀ`` runs two GEMMs (one per operand); the Gram is
    symmetric in its operands, so one suffices. A single image (``B = 1``) uses ``mm``, which
    BLAS runs faster than a batch-of-one ``bmm``.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        if x.shape[0] == 1:
            return torch.mm(x[0], x[0].t()).unsqueeze(0)
        return torch.bmm(x, x.transpose(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        sym = grad + grad.transpose(1, 2)
        if x.shape[0] == 1:
            return torch.mm(sym[0], x[0]).unsqueeze(0)
        return torch.bmm(sym, x)


def gram_matrix(features: Tensor, masks: Tensor | None = None) -> Tensor:
    """Normalized Gram matrices of ``features[B, C, H, W]`` (float32, autocast off).

    Without ``masks``: ``[B, C, C]`` = ``F Fᵀ / (C·H·W)``. With ``masks[B, K, H', W']`` (any
    resolution; resized to the features' by :func:`resize_masks`): ``[B, K, C, C]`` with region ``k``'s
    Gram ``(F∘m_k)(F∘m_k)ᵀ / (C·Σ m_k²)``; an empty region gives zeros.
    """
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        f = features.float().reshape(b, c, h * w)
        if masks is None:
            return _Gram.apply(f) / (c * h * w)
        m = resize_masks(masks.float(), (h, w)).reshape(b, masks.shape[1], h * w)
        out = []
        for k in range(m.shape[1]):  # one masked copy at a time: memory stays O(C·HW), not O(K·C·HW)
            mk = m[:, k : k + 1]
            mass = mk.square().sum(dim=2, keepdim=True).clamp_min(_EPS)  # [B, 1, 1]
            out.append(_Gram.apply(f * mk) / (c * mass))
        return torch.stack(out, dim=1)


class ContentLoss(nn.Module):
    """Σ_l w_l · mean((F_l − T_l)²) over the configured layers; an optional pixel weight map ``mask[B,1,H,W]``.

    With a mask the squared error is weighted per position (the map resized to each layer) and
    divided by the map's mass, so a map of ones equals the unmasked loss.
    """

    def __init__(self, layer_weights: Mapping[str, float]) -> None:
        super().__init__()
        if not layer_weights:
            raise ValueError("ContentLoss needs at least one layer")
        self.layer_weights: dict[str, float] = {k: float(v) for k, v in layer_weights.items()}

    def forward(self, features: Mapping[str, Tensor], targets: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        total = None
        for layer, weight in self.layer_weights.items():
            f, t = features[layer].float(), targets[layer].float()
            if mask is None:
                loss = F.mse_loss(f, t.expand_as(f))
            else:
                m = resize_masks(mask.float(), f.shape[-2:])
                loss = ((f - t) ** 2 * m).sum() / (m.sum().clamp_min(_EPS) * f.shape[1] * (f.shape[0] // m.shape[0]))
            total = weight * loss if total is None else total + weight * loss
        return total


class StyleLoss(nn.Module):
    """Σ_l w_l · mean((G(F_l) − T_l)²): Gram matrices against target Grams ``{layer: [B or 1, C, C]}``."""

    def __init__(self, layer_weights: Mapping[str, float]) -> None:
        super().__init__()
        if not layer_weights:
            raise ValueError("StyleLoss needs at least one layer")
        self.layer_weights: dict[str, float] = {k: float(v) for k, v in layer_weights.items()}

    @torch.no_grad()
    def targets(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Target Grams of a style image's features, for :meth:`forward`."""
        return {layer: gram_matrix(features[layer]) for layer in self.layer_weights}

    def forward(self, features: Mapping[str, Tensor], target_grams: Mapping[str, Tensor]) -> Tensor:
        total = None
        for layer, weight in self.layer_weights.items():
            g = gram_matrix(features[layer])
            loss = F.mse_loss(g, target_grams[layer].float().expand_as(g))
            total = weight * loss if total is None else total + weight * loss
        return total


class GuidedStyleLoss(nn.Module):
    """Style loss with spatial control: region ``k`` of the image matches target Grams ``k``.

    ``forward(features, masks[B or 1, K, H, W], target_grams{layer: [K, C, C] or [B, K, C, C]})``:
    Σ_l w_l Σ_k r_k · mean((G_k(F_l) − T_{l,k})²), where ``G_k`` is the masked Gram (masks resized to
    each layer by area) and ``r_k`` the region weights (default 1). Regions empty at a layer add 0.
    Pixels outside every region get no style loss at all.
    """

    def __init__(self, layer_weights: Mapping[str, float], region_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not layer_weights:
            raise ValueError("GuidedStyleLoss needs at least one layer")
        self.layer_weights: dict[str, float] = {k: float(v) for k, v in layer_weights.items()}
        self.region_weights: tuple[float, ...] | None = tuple(float(r) for r in region_weights) if region_weights else None

    def forward(self, features: Mapping[str, Tensor], masks: Tensor, target_grams: Mapping[str, Tensor]) -> Tensor:
        if masks.dim() == 3:
            masks = masks.unsqueeze(0)
        k = masks.shape[1]
        if self.region_weights is not None and len(self.region_weights) != k:
            raise ValueError(f"{len(self.region_weights)} region weights for {k} masks")
        total = None
        for layer, weight in self.layer_weights.items():
            f = features[layer]
            m = resize_masks(masks.float(), f.shape[-2:]).expand(f.shape[0], -1, -1, -1)  # once per layer
            g = gram_matrix(f, m)  # [B, K, C, C]
            t = target_grams[layer].float()
            if t.dim() == 3:
                t = t.unsqueeze(0)
            per_region = ((g - t) ** 2).mean(dim=(2, 3)).mean(dim=0)  # [K]
            present = (m.sum(dim=(0, 2, 3)) > _EPS).to(per_region.dtype)
            per_region = per_region * present
            if self.region_weights is not None:
                per_region = per_region * per_region.new_tensor(self.region_weights)
            loss = per_region.sum()
            total = weight * loss if total is None else total + weight * loss
        return total


class TotalVariationLoss(nn.Module):
    """Smoothness prior on an image ``x[B, C, H, W]``: mean squared (``p=2``) or absolute (``p=1``) neighbour differences."""

    def __init__(self, p: int = 2) -> None:
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        dy = x[..., 1:, :] - x[..., :-1, :]
        dx = x[..., :, 1:] - x[..., :, :-1]
        if self.p == 2:
            return dy.pow(2).mean() + dx.pow(2).mean()
        return dy.abs().mean() + dx.abs().mean()
