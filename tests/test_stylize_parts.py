"""PartStylizer: every part its own style in one forward pass per network; outside untouched; scale; s3 style images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nstray import storage
from nstray.assets import AssetError, load_plan_assets
from nstray.plan import load_plan
from nstray.stylize.parts import PartStylizer, StylizeError

H, W = 96, 128
CATS = ["hood", "wheel", "front_door"]


def _photo(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A smooth 'natural-ish' picture: gradients, a few soft blobs, light noise (not white noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.5 * xx, 0.4 + 0.3 * np.sin(6 * yy), 0.6 - 0.4 * yy], -1)
    for _ in range(6):
        cy, cx, r = rng.random(3) * [1, 1, 0.2] + [0, 0, 0.05]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))[..., None]
        img = img * (1 - blob) + rng.random(3) * blob
    img += rng.normal(0, 0.02, img.shape)
    return (img.clip(0, 1) * 255).round().astype(np.uint8)


def _labels() -> np.ndarray:
    lab = np.full((H, W), -1, dtype=np.int32)
    lab[8:48, 8:60] = 0  # hood
    yy, xx = np.mgrid[0:H, 0:W]
    lab[(yy - 70) ** 2 + (xx - 30) ** 2 < 20**2] = 1  # wheel
    lab[30:88, 70:120] = 2  # front_door
    return lab


def _style_png(kind: str, size: int = 128) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        arr = np.stack([(np.sin(xx / 4) > 0) * 230, (np.sin(xx / 4) > 0) * 40 + 20, 40 + 0 * xx], -1)
    else:
        arr = np.stack([40 + 0 * xx, ((xx // 16 + yy // 16) % 2) * 200 + 30, ((xx // 16 + yy // 16) % 2) * 60 + 150], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _plan(parts: dict, *, styles: dict | None = None, feather: int = 0, base_dir=None):
    styles = styles or {"pale": {"kind": "multistyle", "index": 14}, "navy": {"kind": "multistyle", "index": 6},
                        "red": {"kind": "multistyle", "index": 20}}
    return load_plan({"styles": styles, "parts": parts, "edges": {"feather_px": feather}}, base_dir=base_dir)


def _count_calls(module: torch.nn.Module) -> list[tuple]:
    calls: list[tuple] = []
    module.register_forward_hook(lambda _m, args, _out: calls.append(tuple(args[0].shape)))
    return calls


def _eroded(mask: np.ndarray, px: int) -> np.ndarray:
    t = torch.from_numpy(~mask).float()[None, None]
    return ~(torch.nn.functional.max_pool2d(t, 2 * px + 1, 1, px)[0, 0] > 0).numpy()


def _single_style(net, img: np.ndarray, weights: torch.Tensor) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        return (net(x, weights[None])[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _mad(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a[where].astype(np.float32) - b[where].astype(np.float32)).mean())


def test_k_parts_one_pass_each_part_its_own_style_outside_identical():
    img, lab = _photo(), _labels()
    plan = _plan({"hood": {"style": "pale"}, "wheel": {"style": "navy"}, "front_door": {"style": "red"}})
    ps = PartStylizer(plan)
    calls = _count_calls(ps.multistyle)
    res = ps(img, lab, CATS)
    assert calls == [(1, 3, H, W)], "all three parts must be styled in ONE forward pass"
    assert res.styles == {"hood": "pale", "wheel": "navy", "front_door": "red", "background": "none"}
    out = res.image
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(out[lab < 0], img[lab < 0]), "pixels outside every part must be bit-identical"
    singles = {name: _single_style(ps.multistyle, img, ps.style_vector(name)) for name in ("pale", "navy", "red")}
    # inside each part (away from its edge) the result is nearest to that part's own single-style run.
    # Not equal to it: instance-norm statistics are global over the image, so the other parts' styles
    # shift every layer's mean/variance (the colours stay, fine structure such as outlines may move).
    for k, own in enumerate(["pale", "navy", "red"]):
        inside = _eroded(lab == k, 6)
        assert inside.sum() > 100
        assert _mad(out, img, inside) > 20, "the part is styled"
        d = {name: _mad(out, single, inside) for name, single in singles.items()}
        others = [v for name, v in d.items() if name != own]
        assert d[own] < 0.5 * min(others), (CATS[k], d)


def test_multistyle_and_arbitrary_parts_one_pass_per_network(tmp_path):
    (tmp_path / "stripes.png").write_bytes(_style_png("stripes"))
    (tmp_path / "checks.png").write_bytes(_style_png("checks"))
    styles = {"navy": {"kind": "multistyle", "index": 6},
              "stripes": {"kind": "arbitrary", "image": "stripes.png", "style_size": 128},
              "checks": {"kind": "arbitrary", "image": "checks.png", "style_size": 128},
              "both": {"kind": "arbitrary", "image": {"stripes.png": 1, "checks.png": 1}}}
    plan = _plan({"hood": {"style": "stripes"}, "wheel": {"style": "navy"}, "front_door": {"style": "checks"}},
                 styles=styles, base_dir=tmp_path)
    ps = PartStylizer(plan, assets=load_plan_assets(plan))
    multi, arb = _count_calls(ps.multistyle), _count_calls(ps.transformer)
    img, lab = _photo(), _labels()
    out = ps(img, lab, CATS).image
    assert multi == [(1, 3, H, W)] and arb == [(1, 3, H, W)]
    assert np.array_equal(out[lab < 0], img[lab < 0])
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        singles = {n: (ps.transformer(x, ps.style_vector(n)[None])[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                   for n in ("stripes", "checks")}
    for k, own, other in ((0, "stripes", "checks"), (2, "checks", "stripes")):
        inside = _eroded(lab == k, 6)
        assert _mad(out, singles[own], inside) < 0.5 * _mad(out, singles[other], inside)
    assert "both" not in ps._vectors  # only the styles the plan uses are predicted
    v = ps.style_vector("stripes")
    assert v.shape == (100,) and not torch.allclose(v, ps.style_vector("checks"))


def test_strength_zero_and_partial_and_background_style():
    img, lab = _photo(), _labels()
    parts = {"hood": {"style": "pale", "strength": 0.0}, "wheel": {"style": "navy", "strength": 0.5},
             "front_door": {"style": "red"}, "background": {"style": "navy", "strength": 0.3}}
    res = PartStylizer(_plan(parts))(img, lab, CATS)
    out = res.image
    assert np.array_equal(out[lab == 0], img[lab == 0]), "strength 0 keeps the original"
    full = PartStylizer(_plan({**parts, "wheel": {"style": "navy"}}))(img, lab, CATS).image
    wheel = lab == 1
    expected = (img[wheel].astype(np.float32) + full[wheel].astype(np.float32)) / 2
    assert np.abs(out[wheel].astype(np.float32) - expected).max() <= 1.0  # a pixel blend (up to uint8 rounding)
    assert np.array_equal(out[lab == 2], full[lab == 2])
    assert res.styles["background"] == "navy"
    bg = lab < 0
    assert not np.array_equal(out[bg], img[bg]) and _mad(out, img, bg) < _mad(full, img, wheel)


def test_preserve_color_keeps_chroma():
    from nstray.compose import rgb_to_ycbcr

    img, lab = _photo(), _labels()
    plain = PartStylizer(_plan({"hood": {"style": "pale"}}))(img, lab, CATS).image
    kept = PartStylizer(_plan({"hood": {"style": "pale", "preserve_color": True}}))(img, lab, CATS).image
    hood = lab == 0

    def ycc(a):
        return rgb_to_ycbcr(torch.from_numpy(a).permute(2, 0, 1).float() / 255)

    o, p, k = ycc(img), ycc(plain), ycc(kept)
    chroma_kept = (k[1:, torch.from_numpy(hood)] - o[1:, torch.from_numpy(hood)]).abs().mean()
    chroma_plain = (p[1:, torch.from_numpy(hood)] - o[1:, torch.from_numpy(hood)]).abs().mean()
    assert chroma_kept < 0.01 < chroma_plain
    assert (k[0, torch.from_numpy(hood)] - p[0, torch.from_numpy(hood)]).abs().mean() < 0.01  # stylized luminance


def test_feathering_never_touches_pixels_outside_parts():
    img, lab = _photo(), _labels()
    parts = {"hood": {"style": "pale"}, "wheel": {"style": "navy"}, "front_door": {"style": "red"}}
    out = PartStylizer(_plan(parts, feather=5))(img, lab, CATS).image
    assert np.array_equal(out[lab < 0], img[lab < 0])
    hard = PartStylizer(_plan(parts, feather=0))(img, lab, CATS).image
    border = (lab == 0) & ~_eroded(lab == 0, 1)
    assert _mad(out, img, border) < 0.5 * _mad(hard, img, border)  # soft at the part's edge
    deep = _eroded(lab == 0, 8)
    assert np.array_equal(out[deep], hard[deep])  # the full style deep inside


def test_scaled_parts_are_cropped_upsampled_and_batched():
    img, lab = _photo(), _labels()
    base = {"hood": {"style": "pale"}, "wheel": {"style": "navy"}, "front_door": {"style": "red"}}
    plain = PartStylizer(_plan(base))(img, lab, CATS).image
    scaled_parts = {**base, "wheel": {"style": "navy", "scale": 3.0}, "hood": {"style": "pale", "scale": 2.0}}
    ps = PartStylizer(_plan(scaled_parts))
    calls = _count_calls(ps.multistyle)
    out = ps(img, lab, CATS).image
    # one full pass (front_door) + one batch holding both crops (similar working sizes)
    assert len(calls) == 2 and calls[0] == (1, 3, H, W) and calls[1][0] == 2, calls
    assert calls[1][2] * calls[1][3] > 2 * 40 * 52  # crops are styled at a larger working size than the hood's box
    assert np.array_equal(out[lab < 0], img[lab < 0])
    for k in (0, 1):
        inside = lab == k
        assert _mad(out, img, inside) > 10, "the scaled part is styled"
        assert _mad(out, plain, inside) > 5, "and differently from the full-frame pass"


def test_scale_is_capped_by_max_work_side():
    img, lab = _photo(), _labels()
    ps = PartStylizer(_plan({"front_door": {"style": "red", "scale": 8.0}}), max_work_side=128)
    calls = _count_calls(ps.multistyle)
    out = ps(img, lab, CATS).image
    assert max(calls[0][2:]) <= 128 + 3 and np.array_equal(out[lab != 2], img[lab != 2])


def test_style_lists_sample_per_variant_and_batch_matches_single_calls():
    img, lab = _photo()[:64, :80], _labels()[:64, :80]
    plan = _plan({"hood": {"style": ["pale", "navy", "none"]}, "wheel": {"style": "red", "scale": 2.0}})
    ps = PartStylizer(plan)
    draws = {v: plan.choose("hood", v, 3) for v in range(12)}
    assert set(draws.values()) == {"pale", "navy", "none"}
    v_none = next(v for v, s in draws.items() if s == "none")
    res = ps(img, lab, CATS, variant=v_none, seed=3)
    assert res.styles["hood"] == "none" and np.array_equal(res.image[lab == 0], img[lab == 0])
    small, small_lab = _photo(60, 72, seed=1), _labels()[:60, :72]
    calls = _count_calls(ps.multistyle)
    batch = ps.stylize_batch([img, small, img], [lab, small_lab, lab], [CATS] * 3, variants=[0, 1, 2], seeds=[3] * 3)
    assert [c[0] for c in calls] == [2, 1, 3]  # same-size images share a pass; all wheel crops in one batch
    for (im, lb, v), got in zip([(img, lab, 0), (small, small_lab, 1), (img, lab, 2)], batch):
        one = ps(im, lb, CATS, variant=v, seed=3)
        assert got.styles == one.styles and np.abs(got.image.astype(int) - one.image.astype(int)).max() <= 1


def test_bad_inputs_and_unsupported_styles_are_clear():
    img, lab = _photo(), _labels()
    ps = PartStylizer(_plan({"hood": {"style": "pale"}}))
    with pytest.raises(StylizeError, match=r"label map values must be -1 \(background\) or 0..1"):
        ps(img, lab, CATS[:2])
    with pytest.raises(StylizeError, match="the label map must be integer"):
        ps(img, lab[:50], CATS)
    with pytest.raises(StylizeError, match=r"uint8 \[H, W, 3\]"):
        ps(img.astype(np.float32), lab, CATS)
    ff = load_plan({"styles": {"vg": {"kind": "feedforward", "weights": "s3://b/vg.pt"}}, "parts": {"hood": {"style": "vg"}}})
    with pytest.raises(StylizeError, match=r"style vg: its weights s3://b/vg\.pt are not loaded"):
        PartStylizer(ff)
    with pytest.raises(AssetError, match=r"styles\.vg\.weights: cannot read feed-forward weights s3://b/vg\.pt"):
        load_plan_assets(ff)
    with pytest.warns(RuntimeWarning, match="CUDA is not available") if not torch.cuda.is_available() else _nothing():
        PartStylizer(_plan({"hood": {"style": "pale"}}), device="cuda")
    assert np.array_equal(PartStylizer(_plan({}))(img, lab, CATS).image, img)  # nothing styled: the input


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_style_images_are_read_from_s3(s3_bucket):
    storage.write_bytes(s3_bucket + "/styles/stripes.png", _style_png("stripes"))
    plan = load_plan({"styles": {"s": {"kind": "arbitrary", "image": s3_bucket + "/styles/stripes.png"}},
                      "parts": {"front_door": {"style": "s"}}})
    ps = PartStylizer(plan, assets=load_plan_assets(plan))
    img, lab = _photo(), _labels()
    out = ps(img, lab, CATS).image
    assert _mad(out, img, lab == 2) > 10 and np.array_equal(out[lab != 2], img[lab != 2])
    missing = load_plan({"styles": {"s": {"kind": "arbitrary", "image": s3_bucket + "/styles/nope.png"}},
                         "parts": {"front_door": {"style": "s"}}})
    with pytest.raises(AssetError, match=r"styles\.s\.image: cannot read the style image.*nope.png.*does not exist"):
        load_plan_assets(missing)
    with pytest.raises(StylizeError, match="nope.png is not loaded"):
        PartStylizer(missing)
