"""Losses: Gram normalization, masked (guided) Grams, per-layer weights, masks resized per layer, TV."""

from __future__ import annotations

import pytest
import torch

from nstray.stylize.losses import (
    ContentLoss,
    GuidedStyleLoss,
    StyleLoss,
    TotalVariationLoss,
    gram_matrix,
    resize_masks,
)


def _feats(seed: int = 0, b: int = 1, c: int = 8, h: int = 8, w: int = 8) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed)).relu()


def test_gram_is_normalized_by_c_h_w():
    f = _feats(b=2, c=5, h=4, w=6)
    flat = f.reshape(2, 5, 24)
    torch.testing.assert_close(gram_matrix(f), flat @ flat.transpose(1, 2) / (5 * 24))


def test_guided_gram_sees_only_its_region():
    f = _feats(c=6, h=8, w=8)
    left = torch.zeros(1, 2, 8, 8)
    left[:, 0, :, :4] = 1  # region 0: left half; region 1: empty
    g = gram_matrix(f, left)
    assert g.shape == (1, 2, 6, 6)
    half = f[..., :4].reshape(1, 6, 32)
    torch.testing.assert_close(g[0, 0], (half @ half.transpose(1, 2))[0] / (6 * 32))
    assert torch.count_nonzero(g[0, 1]) == 0
    ones = torch.ones(1, 1, 8, 8)
    torch.testing.assert_close(gram_matrix(f, ones)[:, 0], gram_matrix(f))


def test_resize_masks_is_area_coverage():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :1, :1] = 1  # one pixel of the top-left 2x2 cell
    small = resize_masks(m, (2, 2))
    torch.testing.assert_close(small, torch.tensor([[[[0.25, 0.0], [0.0, 0.0]]]]))
    assert resize_masks(m, (8, 8)).shape[-2:] == (8, 8)


def test_gram_stays_float32_under_autocast():
    f = _feats()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gram_matrix(f.bfloat16()).dtype == torch.float32


def test_content_loss_per_layer_weights_and_mask():
    a = {"l1": _feats(0), "l2": _feats(1, h=4, w=4)}
    t = {"l1": _feats(2), "l2": _feats(3, h=4, w=4)}
    one = ContentLoss({"l1": 1.0})(a, t)
    both = ContentLoss({"l1": 1.0, "l2": 3.0})(a, t)
    torch.testing.assert_close(both, one + 3.0 * ContentLoss({"l2": 1.0})(a, t))
    assert ContentLoss({"l1": 1.0})(a, a) == 0
    torch.testing.assert_close(ContentLoss({"l1": 1.0})(a, t, mask=torch.ones(1, 1, 16, 16)), one)
    # errors outside a mask do not count
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    b = {"l1": a["l1"].clone()}
    b["l1"][..., 4:] += 5.0
    assert ContentLoss({"l1": 1.0})(b, a, mask=mask) == 0
    assert ContentLoss({"l1": 1.0})(b, a) > 0


def test_style_loss_ignores_where_features_are():
    f = _feats(c=6)
    loss = StyleLoss({"l": 1.0})
    targets = loss.targets({"l": f})
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = f.reshape(1, 6, 64)[..., perm].reshape(1, 6, 8, 8)  # same statistics, other places
    assert loss({"l": shuffled}, targets) < 1e-12
    assert loss({"l": _feats(5, c=6)}, targets) > 1e-4


def test_guided_style_loss_regions_and_weights():
    f = _feats(c=6)
    other = _feats(9, c=6)
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, :, :4] = 1
    masks[0, 1, :, 4:] = 1
    targets = {"l": gram_matrix(f, masks)[0]}  # [K, C, C]
    loss = GuidedStyleLoss({"l": 1.0})
    assert loss({"l": f}, masks, targets) < 1e-12
    changed = f.clone()
    changed[..., 4:] = other[..., 4:]  # only region 1 changes
    per_region = [GuidedStyleLoss({"l": 1.0}, [1.0, 0.0])({"l": changed}, masks, targets),
                  GuidedStyleLoss({"l": 1.0}, [0.0, 1.0])({"l": changed}, masks, targets)]
    assert per_region[0] < 1e-12 < per_region[1]
    torch.testing.assert_close(GuidedStyleLoss({"l": 2.0}, [1.0, 3.0])({"l": changed}, masks, targets), 6.0 * per_region[1])
    empty = torch.zeros(1, 1, 8, 8)  # a region absent at this layer adds nothing
    assert GuidedStyleLoss({"l": 1.0})({"l": f}, empty, {"l": targets["l"][:1]}) == 0
    with pytest.raises(ValueError, match="region weights"):
        GuidedStyleLoss({"l": 1.0}, [1.0])({"l": f}, masks, targets)


def test_total_variation():
    flat = torch.full((1, 3, 8, 8), 0.3)
    noisy = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for p in (1, 2):
        tv = TotalVariationLoss(p)
        assert tv(flat) == 0 and tv(noisy) > 0.01
    with pytest.raises(ValueError):
        TotalVariationLoss(3)


def test_losses_decrease_under_gradient_descent():
    target = {"l": _feats(1, c=4)}
    x = _feats(2, c=4).requires_grad_(True)
    style, content = StyleLoss({"l": 1.0}), ContentLoss({"l": 1.0})
    grams = style.targets(target)
    opt = torch.optim.Adam([x], lr=0.05)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = 1e3 * style({"l": x}, grams) + content({"l": x}, target)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.2 * history[0]


@pytest.mark.parametrize("batch", [1, 2])
def test_gram_gradient_matches_plain_autograd(batch):
    f = _feats(3, b=batch, c=5, h=6, w=4).requires_grad_(True)
    masks = torch.rand(batch, 2, 6, 4, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(batch, 2, 5, 5, generator=torch.Generator().manual_seed(2))

    def reference(x):
        flat = x.reshape(batch, 5, 24)
        plain = flat @ flat.transpose(1, 2) / (5 * 24)
        guided = torch.stack([(flat * m) @ (flat * m).transpose(1, 2) / (5 * m.square().sum(dim=2, keepdim=True))
                              for m in masks.reshape(batch, 2, 1, 24).unbind(1)], dim=1)
        return plain, guided

    ours = (gram_matrix(f), gram_matrix(f, masks))
    ref = reference(f)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    g_ours, = torch.autograd.grad(ours[0].sum() + (ours[1] * weight).sum(), f)
    g_ref, = torch.autograd.grad(ref[0].sum() + (ref[1] * weight).sum(), f)
    torch.testing.assert_close(g_ours, g_ref)
