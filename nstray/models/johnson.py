"""Johnson et al. (2016) feed-forward transformer network: one network per style, trained with a perceptual loss.

Architecture (Johnson et al., "Perceptual Losses for Real-Time Style Transfer and Super-Resolution",
with the later refinements everyone uses): instance norm instead of batch norm (Ulyanov et al. 2016),
reflect padding instead of zero padding, nearest upsampling + conv instead of transposed convs
(no checkerboard artefacts, Odena et al. 2016):

- encoder: 9×9 conv 3→c, 3×3 stride-2 conv c→2c, 3×3 stride-2 conv 2c→4c (IN + ReLU after each);
- ``res_blocks`` residual blocks at stride 4: ``x + IN(conv(relu(IN(conv(x)))))``;
- decoder: nearest ×2 + 3×3 conv 4c→2c, nearest ×2 + 3×3 conv 2c→c (IN + ReLU), 9×9 conv c→3;
- output: ``sigmoid``, so RGB in ``(0, 1)``, like the input (no mean/std normalisation).

Convs followed by an instance norm carry no bias (the norm's mean subtraction cancels it).
Sizes that are not multiples of 4: stride-2 convs give ``ceil(H/2)`` then ``ceil(H/4)`` rows, the
decoder ``4·ceil(H/4)``; the top-left ``H×W`` block (aligned with the input) is returned, so
output size = input size.

Checkpoints are plain dicts loadable with ``torch.load(weights_only=True)``: either a bare state
dict (default architecture) or ``{"kind": "johnson", "arch": {...}, "state_dict": {...}, ...}`` as
written by ``nstray train-style --mode johnson`` (see :mod:`nstray.stylize.feedforward`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MIN_SIDE", "JohnsonNet", "johnson", "johnson_from_checkpoint"]

MIN_SIDE = 5
"""Both image sides need at least this many pixels (reflect padding by 4 in the 9×9 conv)."""


class _ConvIN(nn.Module):
    """Reflect-padded conv (no bias) + instance norm (affine) + optional ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode="reflect", bias=False)
        self.norm = nn.InstanceNorm2d(cout, affine=True)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.conv(x))
        return F.relu(y) if self.relu else y


class _Residual(nn.Module):
    """``x + IN(conv(relu(IN(conv(x)))))``: no ReLU after the sum (Gross & Wilber)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = _ConvIN(channels, channels, 3)
        self.b = _ConvIN(channels, channels, 3, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(self.a(x))


class _UpConvIN(nn.Module):
    """Nearest ×2 upsample, then reflect-padded 3×3 conv + IN + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = _ConvIN(cin, cout, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class JohnsonNet(nn.Module):
    """The transformer network: ``forward(x [B,3,H,W] in [0,1]) -> [B,3,H,W] in (0,1)``.

    ``channels`` (32 in the paper) sets the widths c, 2c, 4c; ``res_blocks`` (5 in the paper).
    Build it with :func:`johnson`.
    """

    def __init__(self, channels: int = 32, res_blocks: int = 5) -> None:
        super().__init__()
        if channels < 1 or res_blocks < 0:
            raise ValueError(f"channels must be >= 1 and res_blocks >= 0, got {channels}, {res_blocks}")
        c = int(channels)
        self.channels = c
        self.res_blocks = int(res_blocks)
        self.encoder = nn.Sequential(_ConvIN(3, c, 9), _ConvIN(c, 2 * c, 3, 2), _ConvIN(2 * c, 4 * c, 3, 2))
        self.res = nn.Sequential(*[_Residual(4 * c) for _ in range(self.res_blocks)])
        self.decoder = nn.Sequential(_UpConvIN(4 * c, 2 * c), _UpConvIN(2 * c, c))
        self.out = nn.Conv2d(c, 3, 9, padding=4, padding_mode="reflect")

    def arch(self) -> dict[str, int]:
        """The constructor arguments, as stored in checkpoints."""
        return {"channels": self.channels, "res_blocks": self.res_blocks}

    def forward(self, x: Tensor) -> Tensor:
        """Stylize ``x`` ([B, 3, H, W], values in [0, 1]); the output has the input's size."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be [B, 3, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < MIN_SIDE:
            raise ValueError(f"image is {h}x{w}; both sides need at least {MIN_SIDE} pixels")
        y = self.decoder(self.res(self.encoder(x)))
        return torch.sigmoid(self.out(y)[:, :, :h, :w])


def _state_and_arch(ckpt: Any, label: str) -> tuple[Mapping[str, Tensor], dict[str, int]]:
    """Split a checkpoint into (state dict, architecture kwargs); a bare state dict means the default arch."""
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"Johnson weights {label}: expected a dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt:
        return ckpt, {}
    kind = ckpt.get("kind", "johnson")
    if kind != "johnson":
        raise ValueError(f"Johnson weights {label}: this checkpoint is of kind {kind!r}, not 'johnson' "
                         "(load it with nstray.stylize.feedforward.load_feedforward)")
    arch = dict(ckpt.get("arch") or {})
    unknown = set(arch) - {"channels", "res_blocks"}
    if unknown:
        raise ValueError(f"Johnson weights {label}: unknown architecture keys {sorted(unknown)}")
    return ckpt["state_dict"], {k: int(v) for k, v in arch.items()}


def johnson_from_checkpoint(ckpt: Mapping[str, Any], label: str = "<checkpoint>") -> JohnsonNet:
    """A :class:`JohnsonNet` (eval mode) from an already loaded checkpoint dict or bare state dict."""
    state, arch = _state_and_arch(ckpt, label)
    model = JohnsonNet(**arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"Johnson weights {label} do not fit JohnsonNet({arch or 'defaults'}): {exc}") from None
    return model.eval()


def johnson(weights: str | Path | None = None, *, channels: int = 32, res_blocks: int = 5) -> JohnsonNet:
    """Build a Johnson transformer network.

    ``weights``: ``None`` for a fresh, randomly initialised network (train mode; ``channels`` and
    ``res_blocks`` set its size), or a trained checkpoint: a local path, ``s3://`` URI or registry
    name, resolved by :func:`nstray.weights.resolve` (the checkpoint's own architecture is used).
    Loads with ``weights_only=True``; never downloads from the internet.
    """
    if weights is None:
        return JohnsonNet(channels, res_blocks)
    from nstray.weights import load_checkpoint, resolve

    path = resolve(str(weights))
    ckpt = load_checkpoint(path, f"Johnson weights {weights}")  # WeightsLoadError (a ValueError) says what is wrong
    return johnson_from_checkpoint(ckpt, str(weights))
