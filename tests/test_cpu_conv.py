"""nstray.models.cpu_conv: each CPU form equals the plain pad + conv (up to float rounding), with and without bias."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nstray.models.cpu_conv as cpu_conv


def _inputs(seed: int, cin: int, cout: int, kernel: int, size: tuple[int, int], cl: bool, bias: bool):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cin, *size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    return x, torch.randn(cout, cin, kernel, kernel, generator=g), torch.randn(cout, generator=g) if bias else None


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kernel,stride,size", [(3, 1, (40, 37)), (3, 2, (41, 38)), (3, 2, (40, 40)), (9, 1, (45, 50))])
def test_conv_reflect_equals_pad_then_conv(kernel, stride, size, bias, monkeypatch):
    monkeypatch.setattr(cpu_conv, "BORDER_TRICK_MIN_ELEMS", 0)  # the border-strip form even on small maps
    x, w, b = _inputs(0, 4, 5, kernel, size, True, bias)
    p = kernel // 2
    expected = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), w, b, stride=stride)
    torch.testing.assert_close(cpu_conv.conv_reflect(x, w, stride, b), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kernel,size,cl,cin,cout", [(9, (44, 52), True, 4, 3), (9, (45, 50), True, 8, 3),
                                                      (9, (37, 41), False, 3, 8), (5, (20, 21), True, 4, 3),
                                                      (3, (12, 9), False, 4, 3)])
def test_space_to_depth_conv_equals_pad_then_conv(kernel, size, cl, cin, cout, bias):
    """A wide kernel on the pixel-unshuffled map: the same numbers on even and odd sides."""
    x, w, b = _inputs(kernel, cin, cout, kernel, size, cl, bias)
    p = kernel // 2
    expected = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), w, b)
    got = cpu_conv.conv_reflect_phases(x, w, b)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("size,cl", [((20, 17), True), ((9, 12), False)])
def test_upconv_equals_upsample_pad_then_conv(size, cl, bias):
    x, w, b = _inputs(3, 6, 5, 3, size, cl, bias)
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    expected = F.conv2d(F.pad(up, (1, 1, 1, 1), mode="reflect"), w, b)
    got = cpu_conv.upconv_reflect(x, w, b)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
