"""Per-image, per-channel mean and biased variance over H×W: the statistics of every instance norm.

``torch.var_mean(y, dim=(2, 3))`` is the plain form, and what runs on GPUs (one batched reduction).
On CPU it is about 4x slower than ATen's batch-norm statistics kernel, which vectorizes along the
pixels; so on CPU each image's statistics come from that kernel (``batch_norm_update_stats`` on a
``[1, C, H, W]`` slice). A channels-last map is read as blocks of pixels, each block viewed as rows of
≥ 32 floats (so channel counts as small as 3 still vectorize), combined in float64: that kernel
accumulates in float32 per row, accurate over a block only. Used by the multi-style network and the
arbitrary-style network alike; not differentiable (inference only: training uses ``var_mean``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["instance_stats"]

# channels-last statistics are taken over blocks of this many pixels and combined in float64
STATS_BLOCK_PIXELS = 1 << 17


def _stats_group(c: int) -> int:
    """Pixels folded into one row for the statistics kernel, so a row has ≥ 32 floats (vectorizes)."""
    g = 1
    while (g * c) % 8 or g * c < 32:
        g += 1
    return g


def _combine(counts: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor]:
    """Merge per-part (count, mean, biased variance) along dim 0, in float64 (Chan et al.)."""
    n = counts.sum(0)
    mean = (counts * means).sum(0) / n
    var = (counts * (variances + (means - mean).square())).sum(0) / n
    return mean, var


def _channels_last_stats(yi: Tensor) -> tuple[Tensor, Tensor]:
    """Statistics of one channels-last image ``[1, C, H, W]``, float64 ``[C]`` each (blocked, see above)."""
    _, c, h, w = yi.shape
    flat = yi.permute(0, 2, 3, 1).reshape(-1)  # a view: [h·w·C]
    g = _stats_group(c)
    row = g * c
    rows_total = (h * w) // g
    block = max(1, STATS_BLOCK_PIXELS // g)
    parts_n, parts_m, parts_v = [], [], []
    for r0 in range(0, rows_total, block):
        r1 = min(rows_total, r0 + block)
        v4 = flat[r0 * row : r1 * row].view(1, r1 - r0, 1, row).permute(0, 3, 1, 2)  # [1, gC, rows, 1]
        m, v = torch.batch_norm_update_stats(v4, None, None, 0.0)
        parts_n.append(torch.full((g, 1), float(r1 - r0), dtype=torch.float64))
        parts_m.append(m.view(g, c).double())
        parts_v.append(v.view(g, c).double())
    tail = flat[rows_total * row :].view(-1, c)
    if tail.shape[0]:
        t64 = tail.double()
        parts_n.append(torch.full((1, 1), float(tail.shape[0]), dtype=torch.float64))
        parts_m.append(t64.mean(0, keepdim=True))
        parts_v.append(t64.var(0, unbiased=False, keepdim=True))
    return _combine(torch.cat(parts_n), torch.cat(parts_m), torch.cat(parts_v))


def instance_stats(y: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``y`` [B, C, H, W] over H×W, float32 ``[B, C]`` each."""
    if y.dim() != 4:
        raise ValueError(f"instance_stats takes [B, C, H, W], got {tuple(y.shape)}")
    if not y.is_cpu:  # one batched reduction (a per-image loop costs a launch per image and layer)
        var, mean = torch.var_mean(y.float(), dim=(2, 3), correction=0)
        return mean, var
    means, variances = [], []
    for i in range(y.shape[0]):
        yi = y[i : i + 1]
        if yi.is_contiguous(memory_format=torch.channels_last) and not yi.is_contiguous():
            m, v = _channels_last_stats(yi)
        else:
            m, v = torch.batch_norm_update_stats(yi, None, None, 0.0)
        means.append(m.float())
        variances.append(v.float())
    return torch.stack(means), torch.stack(variances)
