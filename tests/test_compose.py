"""Compositing: masks and feathering stay inside parts, strength blends, colour preservation keeps chroma."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nstray import compose

H, W = 40, 48


def _labels() -> torch.Tensor:
    lab = torch.full((H, W), -1, dtype=torch.int64)
    lab[5:25, 4:30] = 0  # a box
    lab[10:18, 12:22] = 1  # nested on top of it
    lab[28:40, 30:48] = 2  # touches the image frame (bottom, right)
    return lab


def _image(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, H, W), generator=g).float() / 255


def test_hard_masks_are_one_hot():
    lab = _labels()
    m = compose.soft_masks(lab, 3, 0)
    assert m.shape == (3, H, W) and set(m.unique().tolist()) == {0.0, 1.0}
    for k in range(3):
        assert torch.equal(m[k].bool(), lab == k)
    with pytest.raises(ValueError, match="label 2 but only 2 parts"):
        compose.soft_masks(lab, 2, 0)


def test_feather_stays_inside_the_part_and_ramps_in():
    lab = _labels()
    f = 3
    m = compose.soft_masks(lab, 3, f)
    for k in range(3):
        assert torch.all(m[k][lab != k] == 0), "feathering must never reach outside the part"
        assert torch.all(m[k][lab == k] > 0)
    box = m[0]
    assert box[5, 15] == pytest.approx(1 / (f + 1))  # the border pixel (top edge)
    assert box[6, 15] == pytest.approx(2 / (f + 1))
    assert box[8, 6] == pytest.approx(1.0) or box[8, 7] == pytest.approx(1.0)
    assert box[20, 8] == pytest.approx(1.0)  # deep inside
    assert box[9, 15] < 1.0  # next to the nested part: that is an edge too
    # a part touching the image frame is not faded at the frame
    corner = m[2]
    assert corner[39, 47] == pytest.approx(1.0) and corner[28, 47] == pytest.approx(1 / (f + 1))
    # monotone along a line into the part
    col = box[5:15, 8]
    assert torch.all(col[1:] >= col[:-1])


def test_inside_distance_is_octagonal_not_square():
    lab = torch.zeros(41, 41, dtype=torch.int64)
    lab[20, 20] = 1
    d = compose.inside_distance(lab, 10)
    assert d[20, 20] == 0 and d[20, 21] == 0 and d[21, 21] == 0  # 8-neighbours are borders
    # 5 px away along an axis: d + 1 = 5; on the diagonal (5, 5) (Euclidean 7.07): d + 1 = 7, where a
    # chessboard metric would say 5 and a city-block one 10
    assert d[20, 25] == 4 and d[25, 20] == 4 and d[15, 20] == 4
    assert d[25, 25] == 6 and d[15, 15] == 6
    assert d[0, 0] == 10  # capped


def _inside_distance_by_pooling(lab: torch.Tensor, max_px: int) -> torch.Tensor:
    """The definition with max_pool2d (frame-padding ignored): alternating 3×3 square and plus-shaped steps."""
    x = lab.to(torch.float32).reshape(-1, 1, *lab.shape[-2:])
    hi, lo, dist = x, -x, torch.zeros(lab.shape, dtype=torch.int32)
    for r in range(max_px):
        if r % 2 == 0:
            hi, lo = F.max_pool2d(hi, 3, 1, 1), F.max_pool2d(lo, 3, 1, 1)
        else:
            hi = torch.maximum(F.max_pool2d(hi, (1, 3), 1, (0, 1)), F.max_pool2d(hi, (3, 1), 1, (1, 0)))
            lo = torch.maximum(F.max_pool2d(lo, (1, 3), 1, (0, 1)), F.max_pool2d(lo, (3, 1), 1, (1, 0)))
        dist += ((hi == x) & (-lo == x)).view(lab.shape).to(torch.int32)
    return dist


@pytest.mark.parametrize("shape", [(3, 64, 80), (37, 53), (2, 1, 9), (1, 7, 1)])
def test_inside_distance_equals_the_max_pool_definition(shape):
    g = torch.Generator().manual_seed(sum(shape))
    lab = torch.randint(-1, 5, shape, generator=g)
    if min(shape[-2:]) > 8:  # blobs, so distances grow past 1
        coarse = torch.randint(-1, 5, (*shape[:-2], shape[-2] // 8 + 1, shape[-1] // 8 + 1), generator=g)
        lab = F.interpolate(coarse.reshape(-1, 1, *coarse.shape[-2:]).float(), size=shape[-2:])
        lab = lab.reshape(shape).long()
    for max_px in (1, 2, 3, 7):
        assert torch.equal(compose.inside_distance(lab, max_px), _inside_distance_by_pooling(lab, max_px))


def test_strength_zero_is_the_original_and_one_is_the_layer():
    lab = _labels()
    orig, sty = _image(0), _image(1)
    layers = sty[None]
    out0 = compose.composite(orig, layers, lab, [0.0, 0.0, 0.0], [False] * 3, layer_of=[0, 0, 0])
    assert torch.equal(out0, orig)
    out1 = compose.composite(orig, layers, lab, [1.0, 1.0, 1.0], [False] * 3, layer_of=[0, 0, 0])
    inside = lab >= 0
    assert torch.allclose(out1[:, inside], sty[:, inside]) and torch.equal(out1[:, ~inside], orig[:, ~inside])
    half = compose.composite(orig, layers, lab, [0.5, 1.0, 0.0], [False] * 3, layer_of=[0, 0, 0])
    assert torch.allclose(half[:, lab == 0], (orig[:, lab == 0] + sty[:, lab == 0]) / 2, atol=1e-6)
    assert torch.equal(half[:, lab == 2], orig[:, lab == 2])


def test_outside_is_bit_identical_with_feathering_and_layers_map_to_parts():
    lab = _labels()
    orig = _image(0)
    layers = torch.stack([_image(1), _image(2)])
    out = compose.composite(orig, layers, lab, [1.0, 1.0, 1.0], [False] * 3, layer_of=[1, 0, 1], feather_px=4)
    assert torch.equal(out[:, lab < 0], orig[:, lab < 0])
    deep = (compose.inside_distance(lab, 4) >= 4)
    assert torch.allclose(out[:, deep & (lab == 0)], layers[1][:, deep & (lab == 0)])
    assert torch.equal(compose.to_uint8(out)[lab < 0], compose.to_uint8(orig)[lab < 0])


def test_preserve_color_keeps_chroma_takes_luminance():
    lab = _labels()
    orig = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.4
    sty = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1)) * 0.4 + 0.3
    out = compose.composite(orig, sty[None], lab, [1.0] * 3, [True, False, True], layer_of=[0, 0, 0])
    yo, ys, yr = (compose.rgb_to_ycbcr(t) for t in (orig, sty, out))
    keep = (lab == 0) | (lab == 2)
    # mid-range values: no clamping, so the chroma is the original's and the luminance the stylized one
    assert torch.allclose(yr[1:, keep], yo[1:, keep], atol=1e-5)
    assert torch.allclose(yr[0, keep], ys[0, keep], atol=1e-5)
    assert torch.allclose(out[:, lab == 1], sty[:, lab == 1])  # not preserved: the stylized colours


def test_ycbcr_round_trip_matches_pil():
    from PIL import Image
    import numpy as np

    rgb = torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(3)).float()
    ycc = compose.rgb_to_ycbcr(rgb / 255)
    assert torch.allclose(compose.ycbcr_to_rgb(ycc), rgb / 255, atol=1e-6)
    pil = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).byte().numpy()).convert("YCbCr")).astype(np.float32)
    assert np.abs(pil - (ycc * 255).permute(1, 2, 0).numpy()).max() <= 1.0


def test_bad_arguments_say_what_is_wrong():
    lab = _labels()
    orig = _image(0)
    with pytest.raises(ValueError, match=r"preserve needs one value per part \(1, as strength\)"):
        compose.composite(orig, orig[None], lab, [1.0], [False] * 3, layer_of=[0, 0, 0])
    with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
        compose.composite(orig, orig[None], lab, [1.0, 2.0, 1.0], [False] * 3, layer_of=[0, 0, 0])
    with pytest.raises(ValueError, match="layer_of must index the 1 layers"):
        compose.composite(orig, orig[None], lab, [1.0] * 3, [False] * 3, layer_of=[0, 1, 0])
    with pytest.raises(ValueError, match="label_map must be"):
        compose.composite(orig, orig[None], lab[:10], [1.0] * 3, [False] * 3, layer_of=[0, 0, 0])
    with pytest.raises(ValueError, match="label 2 but only 2 parts"):
        compose.composite(orig, orig[None], lab, [1.0] * 2, [False] * 2, layer_of=[0, 0])
    with pytest.raises(ValueError, match="feather_px must be >= 0"):
        compose.soft_masks(lab, 3, -1)


def test_overlay_tints_parts_only():
    lab = _labels()
    orig = _image(0)
    over = compose.overlay(orig, lab)
    assert torch.equal(over[:, lab < 0], orig[:, lab < 0]) and not torch.equal(over[:, lab == 0], orig[:, lab == 0])


def _per_part_reference(original, layers, masks, strength, preserve, layer_of):
    """The blend written the plain way, part by part over soft_masks' alphas: what composite must equal."""
    acc, cover = torch.zeros_like(original), torch.zeros_like(original[0])
    for k in range(masks.shape[0]):
        alpha = masks[k] * torch.tensor(strength[k])
        layer = layers[layer_of[k]]
        if preserve[k]:
            layer = compose.preserve_color(layer, original)
        acc += alpha * layer
        cover += alpha
    return torch.where(cover > 0, original * (1.0 - cover) + acc, original)


@pytest.mark.parametrize("feather", [0, 1, 3])
@pytest.mark.parametrize("k", [0, 1, 7])
def test_composite_equals_the_per_part_blend_over_soft_masks_bit_for_bit(feather, k):
    g = torch.Generator().manual_seed(k * 10 + feather)
    h, w = 37, 53
    blocks = torch.randint(-1, max(k, 1), (h // 4 + 1, w // 4 + 1), generator=g) if k else torch.full((10, 14), -1)
    labels = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)[:h, :w]
    original, layers = torch.rand(3, h, w, generator=g), torch.rand(2, 3, h, w, generator=g)
    strength = [float(s) for s in torch.rand(k, generator=g)]
    preserve = [i % 2 == 0 for i in range(k)]
    layer_of = [i % 2 for i in range(k)]
    expected = _per_part_reference(original, layers, compose.soft_masks(labels, k, feather), strength, preserve,
                                   layer_of)
    got = compose.composite(original, layers, labels, strength, preserve, layer_of, feather_px=feather)
    assert torch.equal(got, expected)
