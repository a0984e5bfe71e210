"""The style networks' branches that only non-CPU devices take (``x.is_cpu`` False: plain padded convs, one
batched ``var_mean``, whole-batch per-pixel norm GEMMs), traced on PyTorch's meta device.

No GPU runs in CI; without this, those lines would first execute on a lent GPU. The meta device computes
shapes and dtypes only, so this proves the branches run and keep their contracts, not their numbers (the
numbers are the CPU path's, checked against onnxruntime and the plain formulas in the other tests).
"""

from __future__ import annotations

import pytest
import torch

from nstray.models.arbitrary import ArbitraryTransformer
from nstray.models.instance_stats import instance_stats
from nstray.models.johnson import johnson
from nstray.models.multistyle import NUM_STYLES, MultiStyleNet

META = torch.device("meta")
B, H, W = 2, 37, 50  # odd sizes: the padding to a multiple of 4 and the crop back


def _empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


@pytest.mark.parametrize("form", ["vector", "pixels", "masks"])
def test_arbitrary_transformer_off_the_cpu(form):
    net = ArbitraryTransformer().to(META)
    style = {"vector": _empty(B, 100), "pixels": _empty(B, 100, H, W),
             "masks": (_empty(B, 3, 100), _empty(B, 3, H, W))}[form]
    with torch.inference_mode():
        out = net(_empty(B, 3, H, W), style)
    assert out.device == META and out.shape == (B, 3, H, W) and out.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_multistyle_net_off_the_cpu(dtype):
    net = MultiStyleNet().to(META, dtype)
    x = _empty(B, 3, H, W, dtype=dtype)
    with torch.inference_mode():
        per_image = net(x, _empty(B, NUM_STYLES, dtype=dtype))
        per_pixel = net(x, _empty(B, 3, H, W, dtype=dtype), active=torch.tensor([1, 4, 7]))
    for out in (per_image, per_pixel):
        assert out.device == META and out.shape == (B, 3, H, W) and out.dtype == dtype


def test_johnson_net_and_instance_stats_off_the_cpu():
    with torch.inference_mode():
        out = johnson().to(META)(_empty(B, 3, H, W))
        mean, var = instance_stats(_empty(B, 8, H, W, dtype=torch.float16))
    assert out.shape == (B, 3, H, W)
    assert mean.shape == var.shape == (B, 8) and mean.dtype == var.dtype == torch.float32
