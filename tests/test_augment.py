"""Online style augmentation (nstray.augment.PartStyle): parts styled, everything else bit-identical, labels
untouched; random mode needs no style image; it runs inside torchvision's transforms.v2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nstray.augment import PartStyle, StyleBank
from nstray.data import synth
from nstray.data.coco import load_coco, read_records
from nstray.masks import label_map
from nstray.plan import load_plan


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A synthetic car (uint8 [3, H, W]) and its class mask (0 = background, 255 = a strip left unlabeled)."""
    ds = synth.generate(tmp_path_factory.mktemp("aug"), 1, seed=5, width=96, height=64)
    coco = load_coco(str(ds.annotations))
    rec = read_records(coco, str(ds.images_dir))[0][0]
    from PIL import Image

    img = torch.from_numpy(np.array(Image.open(rec.uri).convert("RGB"))).permute(2, 0, 1).contiguous()
    names = ["background"] + sorted({c["name"] for c in coco["categories"]})
    lm = label_map(rec.parts, rec.height, rec.width)
    mask = torch.zeros(rec.height, rec.width, dtype=torch.int64)
    for k, part in enumerate(rec.parts):
        mask[torch.from_numpy(lm == k)] = names.index(part.category)
    mask[:, :4] = 255
    return img, mask, names


def _outside(mask: torch.Tensor, styled_ids: set[int]) -> torch.Tensor:
    return ~torch.isin(mask, torch.tensor(sorted(styled_ids)))


def test_random_mode_styles_parts_and_nothing_else(sample):
    img, mask, _ = sample
    aug = PartStyle(p=1.0, seed=3)
    out, out_mask = aug(img, mask)
    assert out_mask is mask and out.dtype == torch.uint8 and out.shape == img.shape
    parts = {int(c) for c in mask.unique()} - {0, 255}
    keep = _outside(mask, parts)
    assert torch.equal(out[:, keep], img[:, keep])  # background and unlabeled pixels bit-identical
    inside = ~keep
    assert (out[:, inside].float() - img[:, inside].float()).abs().mean() > 10  # the parts are styled
    again, _ = PartStyle(p=1.0, seed=3)(img, mask)
    assert torch.equal(out, again)  # seeded: reproducible
    other, _ = aug(img, mask)
    assert not torch.equal(out, other)  # a new draw, a new style


def test_p_zero_is_the_identity_and_float_images_stay_float(sample):
    img, mask, _ = sample
    assert PartStyle(p=0.0)(img, mask)[0] is img
    x = img.float() / 255
    out, _ = PartStyle(p=1.0, seed=1)(x, mask)
    parts = {int(c) for c in mask.unique()} - {0, 255}
    keep = _outside(mask, parts)
    assert out.dtype == torch.float32 and torch.equal(out[:, keep], x[:, keep])


def test_plan_mode_styles_each_category_by_the_plan(sample):
    img, mask, names = sample
    plan = load_plan({"styles": {"a": {"kind": "multistyle", "index": 3}},
                      "parts": {"body": {"style": "a"}, "wheel": {"style": "a"}}})
    out, out_mask = PartStyle(plan, p=1.0, class_names=names, seed=0)(img, mask)
    assert out_mask is mask
    styled = {names.index("body"), names.index("wheel")}
    keep = _outside(mask, styled)
    assert torch.equal(out[:, keep], img[:, keep])
    assert (out[:, ~keep].float() - img[:, ~keep].float()).abs().mean() > 10


def test_works_inside_torchvision_transforms_v2(sample):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    img, mask, _ = sample
    pipeline = v2.Compose([PartStyle(p=1.0, seed=2), v2.RandomHorizontalFlip(p=1.0)])
    out, out_mask = pipeline(tv_tensors.Image(img), tv_tensors.Mask(mask))
    assert isinstance(out, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert torch.equal(out_mask, mask.flip(-1))  # the flip moved image and mask together; labels intact


def test_style_bank_fits_and_samples_its_gaussian():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(400, 5, generator=g) @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1])) + 7
    bank = StyleBank.fit(vectors)
    draws = bank.sample(20000, torch.Generator().manual_seed(1))
    assert torch.allclose(draws.mean(0), vectors.mean(0), atol=0.1)
    assert torch.allclose(torch.cov(draws.T), torch.cov(vectors.T), atol=0.25)


def test_bad_inputs_are_clear(sample):
    img, mask, names = sample
    with pytest.raises(ValueError, match="p must lie"):
        PartStyle(p=2.0)
    with pytest.raises(ValueError, match="class_names"):
        PartStyle(load_plan({"styles": {"a": {"kind": "multistyle", "index": 3}}, "parts": {"body": {"style": "a"}}}))
    with pytest.raises(ValueError, match="mask must be"):
        PartStyle(p=1.0, seed=0)(img, mask[:10])
