"""Reflect-padded convolutions in forms that run faster on CPU, each exact up to float rounding.

Both style networks (``multistyle.py``, ``arbitrary.py``) are Johnson-style transformers: reflect-padded
convs, a 9×9 conv with few channels at full resolution, and decoders that upsample ×2 (nearest) before a
3×3 conv. oneDNN runs such layers well below its GEMM speed on CPU. The forms here:

- :func:`conv_reflect`: a zero-padded conv whose border rows/columns are recomputed from thin
  reflect-padded strips (no padded copy of a big map);
- :func:`conv_reflect_phases`: a wide kernel with few output channels on the 2×2 space-to-depth map
  (4× the channels on each side, a ~k/2 kernel);
- :func:`upconv_reflect`: "nearest ×2 upsample + reflect pad + 3×3 conv" as one 3×3 conv with 4× the
  output channels on the replicate-padded low-resolution map, then a pixel shuffle (no 4× bigger map).

Each takes the conv's ``weight`` ``[O, C, k, k]`` and optional ``bias`` ``[O]``. :func:`reflect_conv` picks
the form for a network's ``nn.Conv2d`` layer; both style networks call it. Off the CPU the plain pad + conv
runs, except the upsample form (no 4× bigger map on any device). Pure tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["conv_reflect", "conv_reflect_phases", "phases_pay", "reflect_conv", "upconv_reflect"]

# maps at least this big (elements) skip the padded copy before a conv on CPU (see conv_reflect)
BORDER_TRICK_MIN_ELEMS = 1 << 20


def conv_reflect(x: Tensor, weight: Tensor, stride: int = 1, bias: Tensor | None = None) -> Tensor:
    """``conv2d(reflect_pad(x, k // 2), weight, bias, stride)`` without copying ``x`` into a padded buffer.

    On CPU, big maps: a zero-padded conv, then the output rows/columns that read the padding are
    recomputed from thin reflect-padded strips of ``x`` (exact). Elsewhere: pad, then conv.
    """
    k = weight.shape[-1]
    p = k // 2
    h, w = x.shape[-2:]
    if not x.is_cpu or min(h, w) < 4 * k or x.numel() < BORDER_TRICK_MIN_ELEMS:
        return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), weight, bias, stride=stride)
    y = F.conv2d(x, weight, bias, stride=stride, padding=p)
    ho, wo = y.shape[-2:]
    nt = -(-p // stride)  # output rows/cols whose window starts above/left of the image
    nb = (h - 1 - p) // stride + 1  # first output row whose window ends below the image
    nr = (w - 1 - p) // stride + 1
    top = x[:, :, : stride * (nt - 1) + p + 1]
    y[:, :, :nt] = F.conv2d(F.pad(top, (p, p, p, 0), mode="reflect"), weight, bias, stride=stride)
    if nb < ho:
        pb = stride * (ho - 1) + p - (h - 1)
        bottom = F.pad(x[:, :, stride * nb - p :], (p, p, 0, pb), mode="reflect")
        y[:, :, nb:] = F.conv2d(bottom, weight, bias, stride=stride)
    left = x[:, :, :, : stride * (nt - 1) + p + 1]
    y[:, :, :, :nt] = F.conv2d(F.pad(left, (p, 0, p, p), mode="reflect"), weight, bias, stride=stride)
    if nr < wo:
        pr = stride * (wo - 1) + p - (w - 1)
        right = F.pad(x[:, :, :, stride * nr - p :], (0, pr, p, p), mode="reflect")
        y[:, :, :, nr:] = F.conv2d(right, weight, bias, stride=stride)
    return y


def _phase_kernel(weight: Tensor) -> Tensor:
    """A k×k stride-1 kernel ``[O, C, k, k]`` (k odd) as the ``[4·O, 4·C, (k+1)/2, (k+1)/2]`` kernel of the same
    conv on 2×2 space-to-depth maps: input channel ``c·4 + 2p + q`` is pixel phase (p, q) of channel c (as
    :func:`torch.nn.functional.pixel_unshuffle`), output channel ``o·4 + 2a + b`` is output phase (a, b) (as
    :func:`torch.nn.functional.pixel_shuffle`). Output phase (a, b) reads tap ``(2i + p − a, 2j + q − b)``."""
    o, c, k, _ = weight.shape
    kk = (k + 1) // 2
    phases = [
        F.pad(weight, (b, 1 - b, a, 1 - a)).reshape(o, c, kk, 2, kk, 2).permute(0, 1, 3, 5, 2, 4)
        for a in (0, 1)
        for b in (0, 1)
    ]
    return torch.stack(phases, 1).reshape(4 * o, 4 * c, kk, kk)


def conv_reflect_phases(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``conv2d(reflect_pad(x, k // 2), weight, bias)`` (stride 1) computed on the 2×2 space-to-depth map.

    A conv with few channels (a decoder's last 9×9 conv) runs far below the CPU's GEMM speed; the
    same conv on the pixel-unshuffled map has 4× the channels on each side and a ~k/2 kernel (the
    multi-style network's 9×9 conv 4→3 at 512² on 2 cores: 7.5 → 4.0 ms, the (un)shuffles included).
    """
    k = weight.shape[-1]
    p = k // 2
    h, w = x.shape[-2:]
    xs = F.pixel_unshuffle(F.pad(x, (p, p + w % 2, p, p + h % 2), mode="reflect"), 2)  # odd sides: one spare row/col
    ks = _phase_kernel(weight)
    if xs.is_contiguous(memory_format=torch.channels_last):
        ks = ks.contiguous(memory_format=torch.channels_last)
    bs = bias.repeat_interleave(4) if bias is not None else None  # output channel o·4 + phase
    return F.pixel_shuffle(F.conv2d(xs, ks, bs), 2)[:, :, :h, :w]


# R[a][i, t]: original tap t (dy = -1, 0, 1) of a 3×3 conv on a nearest-×2-upsampled map reads
# low-res tap i (-1, 0, 1) for output rows of parity a (and likewise for columns)
_PHASE_TAPS = torch.tensor(
    [[[1, 0, 0], [0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], dtype=torch.float32
)


def upconv_reflect(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``conv3x3(reflect_pad(upsample_nearest_x2(x), 1), weight, bias)`` without building the upsampled map.

    Each of the 4 output phases (row, column parity) is a 3×3 conv of ``x`` itself with taps
    summed by :data:`_PHASE_TAPS`; reflect-padding the upsampled map equals replicate-padding
    ``x``. One conv with 4× the output channels, then a pixel shuffle: exact, and 3–4× faster
    on CPU than upsample + conv (no 4× bigger intermediate, wider conv).
    """
    o, c = weight.shape[:2]
    taps = _PHASE_TAPS.to(device=weight.device, dtype=weight.dtype)
    k = torch.einsum("aiy,ocyx,bjx->oabcij", taps, weight, taps).reshape(4 * o, c, 3, 3)
    if x.is_contiguous(memory_format=torch.channels_last):
        k = k.contiguous(memory_format=torch.channels_last)
    bs = bias.repeat_interleave(4) if bias is not None else None  # output channel o·4 + phase
    return F.pixel_shuffle(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, bs), 2)


def phases_pay(x: Tensor, conv: nn.Conv2d) -> bool:
    """The space-to-depth conv pays on CPU for wide stride-1 kernels with few output channels (a last conv)."""
    o, _, k, _ = conv.weight.shape
    return x.is_cpu and conv.stride[0] == 1 and k >= 5 and o <= 8 and min(x.shape[-2:]) > k


def reflect_conv(conv: nn.Conv2d, x: Tensor, upsample: bool = False) -> Tensor:
    """The reflect-padded ``conv`` layer applied to ``x`` (after a nearest ×2 upsample with ``upsample``), in the
    fastest of the exact forms above for ``x``'s device and shape."""
    if upsample:
        return upconv_reflect(x, conv.weight, conv.bias)
    if phases_pay(x, conv):
        return conv_reflect_phases(x, conv.weight, conv.bias)
    return conv_reflect(x, conv.weight, conv.stride[0], conv.bias)
