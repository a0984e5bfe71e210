"""Label-map operations for batches on any device (pure tensors): nearest-label fill, labels present and their boxes.

Conventions: a batch of label maps is integer ``[B, H, W]``, ``k >= 0`` = region ``k``, negative = none.
Nothing here waits on the host, so a GPU runs a whole batch without a round trip.

The nearest fill is the jump flooding algorithm (Rong & Tan 2006): each pixel keeps the coordinates
of the nearest seed it has seen and looks at its 8 neighbours' seeds at steps ``k, k/2, ..., 1``
(then 2 and 1 again, "JFA+2", which removes nearly all of its rare errors). The distance is exact
Euclidean where JFA finds the true nearest seed; where two seeds are (nearly) equidistant the
label may differ from another method's tie-break (OpenCV's ``distanceTransformWithLabels`` uses a
5×5-mask approximation of L2 and raster order): those differences lie on the boundaries between
two regions' fills, away from every region.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nearest_fill", "labels_present", "label_boxes"]

_FAR = 1.0e5  # the coordinate of "no seed": any real seed is nearer


def nearest_fill(labels: Tensor, max_dist: float | None = None) -> tuple[Tensor, Tensor]:
    """Every pixel's nearest labelled pixel: ``(label [B, H, W] long, distance [B, H, W] float32)``.

    Labelled pixels keep their label at distance 0. ``max_dist``: only distances up to it need to be
    right (fewer steps); a pixel with no labelled pixel found gets label −1 and distance ``inf``, and
    so does every pixel of a map with no labelled pixel at all.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W], got {list(labels.shape)}")
    b, h, w = labels.shape
    dev = labels.device
    seed = labels >= 0
    grid = torch.stack(torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                                      torch.arange(w, device=dev, dtype=torch.float32), indexing="ij"))  # [2, H, W]
    # each pixel's nearest seed so far, as (y, x); _FAR where none yet
    near = torch.where(seed[:, None], grid, torch.full((), _FAR, device=dev))  # [B, 2, H, W]
    d2 = torch.where(seed, torch.zeros((), device=dev), torch.full((), float("inf"), device=dev))
    reach = max(h, w) if max_dist is None else min(max(h, w), int(max_dist) + 1)
    k = 1
    while 2 * k - 1 < reach:  # steps k, k/2, ..., 1 carry a seed up to 2k − 1 pixels
        k *= 2
    steps = []
    while k >= 1:
        steps.append(k)
        k //= 2
    steps += [2, 1] if h > 2 and w > 2 else [1]
    for k in steps:
        padded = F.pad(near, (k, k, k, k), value=_FAR)
        for dy in (-k, 0, k):
            for dx in (-k, 0, k):
                if dy == 0 and dx == 0:
                    continue
                cand = padded[:, :, k + dy : k + dy + h, k + dx : k + dx + w]
                nd = (cand - grid).square_().sum(1)
                better = nd < d2
                near = torch.where(better[:, None], cand, near)
                d2 = torch.where(better, nd, d2)
    sy, sx = near[:, 0], near[:, 1]
    found = sy < _FAR  # the sentinel can win over inf, but is never a seed
    index = torch.where(found, sy * w + sx, torch.zeros((), device=dev)).long()
    filled = labels.reshape(b, h * w).long().gather(1, index.view(b, h * w)).view(b, h, w)
    filled = torch.where(found, filled, torch.full((), -1, dtype=torch.long, device=dev))
    return filled, torch.where(found, d2.sqrt_(), torch.full((), float("inf"), device=dev))


def labels_present(labels: Tensor, num: int) -> Tensor:
    """``[B, num + 1]`` bool: column 0 = some pixel is negative (no region), column ``k + 1`` = label ``k`` occurs.

    Labels must lie in ``[-1, num)`` (values outside are clamped, so check the range separately).
    """
    b = labels.shape[0]
    idx = labels.reshape(b, -1).long().clamp(-1, num - 1) + 1
    out = torch.zeros(b, num + 1, dtype=torch.bool, device=labels.device)
    return out.scatter_(1, idx, True)


def label_boxes(labels: Tensor, num: int) -> Tensor:
    """``[B, num + 1, 4]`` long boxes ``(y0, y1, x0, x1)`` (ends exclusive) of each label, indexed like
    :func:`labels_present`; a label that does not occur gets ``(0, 0, 0, 0)``."""
    b, h, w = labels.shape
    lab = labels.long().clamp(-1, num - 1) + 1  # [B, H, W] in 0..num
    rows = torch.zeros(b, h, num + 1, dtype=torch.bool, device=labels.device).scatter_(2, lab, True)
    cols = torch.zeros(b, w, num + 1, dtype=torch.bool, device=labels.device).scatter_(2, lab.transpose(1, 2), True)

    def span(present: Tensor, n: int) -> tuple[Tensor, Tensor]:  # present [B, n, L] -> first, last+1 per label
        ar = torch.arange(n, device=labels.device)[None, :, None]
        first = torch.where(present, ar, n).amin(1)
        last = torch.where(present, ar, -1).amax(1) + 1
        occurs = present.any(1)
        return torch.where(occurs, first, 0), torch.where(occurs, last, 0)

    y0, y1 = span(rows, h)
    x0, x1 = span(cols, w)
    return torch.stack([y0, y1, x0, x1], -1)
