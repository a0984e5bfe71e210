"""The optimization engine with a random-weight, truncated VGG-19 (the behaviours hold without ImageNet weights)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from nstray.models.vgg import vgg_encoder
from nstray.plots import render_loss_plot
from nstray.stylize.losses import gram_matrix
from nstray.stylize.optimize import (
    FrameRecorder,
    encode_animation,
    level_sizes,
    optimize,
    to_uint8,
)

CONTENT_LAYERS = {"relu2_2": 1.0}
STYLE_LAYERS = {"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return vgg_encoder(layers=[*CONTENT_LAYERS, *STYLE_LAYERS], weights=None)


def content_image(h: int = 32, w: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([xx, yy, 0.5 + 0.5 * torch.sin(6 * xx * yy)]).clamp(0, 1)


def style_image(seed: int, cells: int = 4, side: int = 32) -> torch.Tensor:
    small = torch.rand(1, 3, cells, cells, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(small, size=(side, side), mode="nearest")[0]


def run(encoder, content, style=None, **kw):
    kw.setdefault("content_layers", CONTENT_LAYERS)
    kw.setdefault("style_layers", STYLE_LAYERS)
    return optimize(content, style, encoder=encoder, device="cpu", **kw)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_losses_decrease(encoder, optimizer):
    result = run(encoder, content_image(), style_image(1), optimizer=optimizer, steps=12, lr=0.05 if optimizer == "adam" else None)
    totals = [r["total"] for r in result.history]
    assert len(totals) == 12 and result.image.shape == (3, 32, 32)
    assert totals[-1] < 0.5 * totals[0]
    assert result.history[0]["content"] == 0  # init=content: no content error at the start
    assert 0.0 <= float(result.image.min()) and float(result.image.max()) <= 1.0


def test_content_reconstruction_from_noise_converges_to_the_content(encoder):
    content = content_image()
    errors: dict[int, float] = {}

    def track(p):
        errors[p.step] = float((p.image - content).abs().mean())

    result = run(encoder, content, reconstruct="content", steps=30, callback=track, callback_every=10)
    assert sorted(errors) == [10, 20, 30]
    start = float((torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) - content).abs().mean())
    assert errors[10] < 0.7 * start
    assert errors[30] < errors[20] < errors[10]
    assert errors[30] < 0.3 * start
    assert all(r["style"] == 0 and r["tv"] == 0 for r in result.history)


def test_style_reconstruction_matches_the_style_statistics(encoder):
    result = run(encoder, content_image(), style_image(2), reconstruct="style", steps=15)
    styles = [r["style"] for r in result.history]
    assert styles[-1] < 0.1 * styles[0]
    assert all(r["content"] == 0 for r in result.history)


def test_guided_gram_keeps_the_background_close_to_the_content(encoder):
    content = content_image()
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    result = run(encoder, content, [style_image(3)], masks=masks, steps=15)
    diff = (result.image - content).abs().mean(0)
    part, background = float(diff[masks[0]].mean()), float(diff[~masks[0]].mean())
    assert part > 0.05
    assert background < part / 3


def test_each_part_takes_its_own_style(encoder):
    content = content_image()
    s0 = style_image(4, cells=2) * torch.tensor([1.0, 0.3, 0.1]).view(3, 1, 1)  # reddish blocks
    s1 = style_image(5, cells=8) * torch.tensor([0.1, 0.4, 1.0]).view(3, 1, 1)  # fine bluish checks
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :, :16] = True
    masks[1, :, 16:] = True
    result = run(encoder, content, [s0, s1], masks=masks, steps=20, content_weight=0.0)

    with torch.no_grad():
        for layer in STYLE_LAYERS:
            got = gram_matrix(encoder(result.image[None])[layer], masks[None].float())[0]  # [2, C, C]
            targets = [gram_matrix(encoder(s[None])[layer])[0] for s in (s0, s1)]
            for k in range(2):
                own = (got[k] - targets[k]).square().mean()
                other = (got[k] - targets[1 - k]).square().mean()
                margin = 1.0 if layer == "relu3_1" else 0.3  # relu3_1 is 8x8 here: regions blur at the seam
                assert own < margin * other, (layer, k)
    left, right = result.image[:, :, :16].mean(dim=(1, 2)), result.image[:, :, 16:].mean(dim=(1, 2))
    assert left[0] > left[2] and right[2] > right[0]  # red-ish part, blue-ish part


def test_style_blend_weights_are_used(encoder):
    content, s0, s1 = content_image(), style_image(6), style_image(7)
    plain = run(encoder, content, s0, steps=3).image
    blended = run(encoder, content, [(s0, 1.0), (s1, 0.0)], steps=3).image
    mixed = run(encoder, content, [(s0, 0.5), (s1, 0.5)], steps=3).image
    torch.testing.assert_close(blended, plain)
    assert (mixed - plain).abs().max() > 1e-3


def test_coarse_to_fine_levels(encoder):
    assert level_sizes(128, 96, 3) == [(64, 48), (128, 96)]  # 32x24 is below 32 px: skipped
    assert level_sizes(100, 100, 1) == [(100, 100)]
    frames = FrameRecorder(every=2, size=(64, 64))
    result = run(encoder, content_image(64, 64), style_image(8), levels=2, steps=[4, 2], callback=frames, optimizer="adam")
    assert result.sizes == [(32, 32), (64, 64)]
    assert [r["level"] for r in result.history] == [0, 0, 0, 0, 1, 1]
    assert result.image.shape == (3, 64, 64)
    assert len(frames.frames) == 3 and all(f.shape == (64, 64, 3) for f in frames.frames)
    with pytest.raises(ValueError, match="step counts"):
        run(encoder, content_image(64, 64), style_image(8), levels=2, steps=[4])


def test_max_size_caps_the_long_side(encoder):
    result = run(encoder, content_image(48, 64), style_image(9), max_size=32, steps=1)
    assert result.image.shape == (3, 24, 32)


def test_invalid_arguments_are_clear(encoder):
    c = content_image()
    with pytest.raises(ValueError, match="style image is needed"):
        run(encoder, c, steps=1)
    with pytest.raises(ValueError, match="one style per region"):
        run(encoder, c, [style_image(1)], masks=torch.ones(2, 32, 32), steps=1)
    with pytest.raises(ValueError, match="optimizer"):
        run(encoder, c, style_image(1), optimizer="sgd", steps=1)
    with pytest.raises(ValueError, match="does not return layer"):
        run(encoder, c, style_image(1), content_layers={"relu4_2": 1.0}, steps=1)


def test_animation_and_loss_plot_encode():
    from PIL import Image

    frames = [np.full((15, 21, 3), i * 40, dtype=np.uint8) for i in range(4)]
    gif = Image.open(io.BytesIO(encode_animation(frames, "gif", fps=5)))
    assert gif.format == "GIF" and gif.n_frames == 4 and gif.size == (21, 15)

    import av

    with av.open(io.BytesIO(encode_animation(frames, "mp4", fps=5))) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 4 and decoded[0].shape == (16, 22, 3)  # padded to even sides
    assert abs(int(decoded[3][:15, :21].mean()) - 120) < 8

    history = [{"step": i + 1, "level": i // 3, "content": 1.0 / (i + 1), "style": 2.0 / (i + 1), "tv": 0.0,
                "total": 3.0 / (i + 1)} for i in range(6)]
    png = Image.open(io.BytesIO(render_loss_plot(history)))
    assert png.format == "PNG" and png.size[0] > 300
    with pytest.raises(ValueError):
        encode_animation(frames, "avi")


def test_to_uint8_rounds_and_clamps():
    img = torch.tensor([[[0.0, 1.2]], [[0.5, -1.0]], [[1.0, 0.25]]])
    assert to_uint8(img).tolist() == [[[0, 128, 255], [255, 0, 64]]]


def test_amp_and_channels_last_path():
    """The CUDA defaults (bf16 autocast, channels-last) exercised on CPU: Grams stay float32, losses fall."""
    torch.manual_seed(0)
    encoder = vgg_encoder(layers=[*CONTENT_LAYERS, *STYLE_LAYERS], weights=None)  # own one: it becomes channels-last
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, :, :16] = True
    result = run(encoder, content_image(), [style_image(1)], masks=masks, steps=8, optimizer="adam", amp=True,
                 channels_last=True)
    totals = [r["total"] for r in result.history]
    assert totals[-1] < 0.5 * totals[0]
    assert result.image.dtype == torch.float32 and result.image.is_contiguous()
