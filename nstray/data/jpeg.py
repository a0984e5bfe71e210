"""JPEG decode and encode in batches on a torch device: nvjpeg on CUDA, libjpeg-turbo on the CPU.

A GPU stylizer that waits for CPU tasks to decode and encode its images starves: a 512² JPEG costs
a CPU core ~3–5 ms each way, while the GPU styles it in about as long. ``torchvision.io`` decodes and
encodes whole lists of JPEGs on the GPU with nvjpeg, so the CPU only moves compressed bytes.

Pixels come out as ``uint8[H, W, 3]`` RGB in stored order (no EXIF transpose, like
:func:`nstray.data.images.decode_image`); grayscale JPEGs are expanded to RGB. A list that fails as a
whole (one corrupt file) is retried one file at a time by the caller, which falls back to the CPU
decoder for the culprit and so gets its clean error message. nvjpeg and libjpeg round the inverse
DCT differently: pixels may differ from PIL's by a few levels.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where pixels are coded: is_jpeg runs in CPU tasks that never load it
    import torch

__all__ = ["is_jpeg", "decode_jpegs", "encode_jpegs", "encode_jpeg_tensors"]

_SOI = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    """Whether ``data`` starts like a JPEG file (SOI marker)."""
    return data[:3] == _SOI


def decode_jpegs(datas: Sequence[bytes], device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Decode JPEG files on ``device`` (nvjpeg on CUDA) → ``uint8[H, W, 3]`` arrays on the host.

    Raises ``RuntimeError`` (torchvision's) when any file cannot be decoded.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    device = torch.device(device)
    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return [t.permute(1, 2, 0).contiguous().cpu().numpy() for t in decoded]


def encode_jpeg_tensors(images: Sequence[torch.Tensor], quality: int = 95) -> list[bytes]:
    """Encode ``uint8[3, H, W]`` tensors, each on its own device (nvjpeg for CUDA tensors) → JPEG bytes."""
    from torchvision.io import encode_jpeg

    if not images:
        return []
    encoded = encode_jpeg([t.contiguous() for t in images], quality=int(quality))
    return [e.cpu().numpy().tobytes() for e in encoded]


def encode_jpegs(images: Sequence[np.ndarray], quality: int = 95, device: str | torch.device = "cpu") -> list[bytes]:
    """Encode ``uint8[H, W, 3]`` arrays as JPEG on ``device`` (nvjpeg on CUDA) → bytes per image."""
    import torch

    device = torch.device(device)
    tensors = [torch.from_numpy(np.require(im, np.uint8, ["C", "W"])).to(device, non_blocking=True).permute(2, 0, 1)
               for im in images]
    return encode_jpeg_tensors(tensors, quality)
