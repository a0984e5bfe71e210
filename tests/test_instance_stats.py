"""instance_stats: the CPU fast kernels give var_mean's numbers, in both memory formats, at sizes with tails."""

from __future__ import annotations

import pytest
import torch

import nstray.models.instance_stats as stats_module
from nstray.models.instance_stats import instance_stats


def _reference(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(y.double(), dim=(2, 3), correction=0)
    return mean, var


@pytest.mark.parametrize("shape", [(2, 3, 37, 41), (3, 8, 64, 64), (1, 32, 33, 17), (2, 16, 1, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_float64_var_mean(shape, channels_last, monkeypatch):
    torch.manual_seed(0)
    # a large offset with small spread: where a one-pass float32 formula would lose the variance
    y = 50.0 + 0.1 * torch.randn(shape)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(stats_module, "STATS_BLOCK_PIXELS", 100)  # several blocks and a tail
    mean, var = instance_stats(y)
    ref_mean, ref_var = _reference(y)
    assert mean.dtype == var.dtype == torch.float32 and mean.shape == var.shape == shape[:2]
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=1e-9)


def test_a_large_map_keeps_its_variance():
    """512² pixels in one image: the per-image kernel stays accurate in float32 over the whole map."""
    torch.manual_seed(1)
    y = 20.0 + 0.05 * torch.randn(2, 3, 512, 512)
    mean, var = instance_stats(y)
    ref_mean, ref_var = _reference(y)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-3, atol=0)


def test_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        instance_stats(torch.zeros(3, 4, 4))
