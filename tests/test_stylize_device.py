"""The batched device path of PartStylizer.stylize_batch equals the old per-image host path (tests/parts_reference.py).

Tolerances (uint8 levels, over all pixels of all images):
- nearest fill by OpenCV (the CPU default): the same numbers up to float rounding: at most 1 level apart,
  on at most 0.1% of the pixels;
- nearest fill by jump flooding (the GPU default), run here on CPU tensors: differs from OpenCV's only on the
  boundaries between two parts' fills, which reaches the styled pixels through the network's norm statistics
  and receptive field: mean |difference| <= 0.5 level and at most 2% of pixels more than 8 levels apart.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from nstray import masks, storage
from nstray.assets import load_plan_assets
from nstray.data.coco import load_coco, read_records
from nstray.data.images import decode_image
from nstray.data.synth import generate
from nstray.plan import load_plan
from nstray.stylize.parts import PartStylizer
from parts_reference import reference_stylize

from pathlib import Path

DEMO_PLAN = Path(__file__).resolve().parents[1] / "examples" / "plans" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    """Synthetic cars (the demo set) at two sizes, their label maps under the demo plan's overlaps, categories."""
    plan = load_plan(str(DEMO_PLAN))
    out = []
    for i, (w, h) in enumerate([(160, 120), (160, 120), (160, 120), (144, 112)]):
        data = generate(tmp_path_factory.mktemp(f"demo{i}"), 1, seed=i, width=w, height=h)
        (rec,), _ = read_records(load_coco(str(data.annotations)), str(data.images_dir))
        out.append((decode_image(storage.read_bytes(rec.uri), name=rec.file_name),
                    masks.label_map(rec.parts, rec.height, rec.width, plan.overlaps), [p.category for p in rec.parts]))
    return plan, out


def _random_case(seed: int, h: int = 96, w: int = 112, parts: int = 24):
    """A noisy photo and a label map of many small parts (rectangles and discs, some touching the frame)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 7)], -1) * 200 + rng.integers(0, 55, (h, w, 3))
    lab = np.full((h, w), -1, dtype=np.int32)
    for k in range(parts):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 9)
        if k % 2:
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        else:
            lab[cy : cy + r + 1, cx : cx + 2 * r + 1] = k
    cats = [["hood", "wheel", "front_door", "mirror"][k % 4] for k in range(parts)]
    return img.clip(0, 255).astype(np.uint8), lab, cats


def _random_plan(feather: int = 1):
    return load_plan({
        "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 16},
                   "c": {"kind": "multistyle", "weights": {7: 0.5, 13: 0.5}}},
        "parts": {"hood": {"style": ["a", "b"]}, "wheel": {"style": "c", "scale": 2.0},
                  "front_door": {"style": "b", "strength": 0.7},
                  "mirror": {"style": "a", "scale": 1.5, "preserve_color": True},
                  "background": {"style": "a", "strength": 0.3}},
        "edges": {"feather_px": feather},
    })


def _diff(new, old) -> np.ndarray:
    assert len(new) == len(old)
    for a, b in zip(new, old):
        assert a.image.shape == b.image.shape and a.image.dtype == np.uint8
        assert a.styles == b.styles
    return np.concatenate([np.abs(a.image.astype(np.int16) - b.image.astype(np.int16)).ravel() for a, b in zip(new, old)])


def _run_both(stylizer, cases, variants):
    images, labels, cats = zip(*cases)
    kw = dict(variants=variants, seeds=[3] * len(images), keys=list(range(len(images))))
    return stylizer.stylize_batch(images, labels, cats, **kw), reference_stylize(stylizer, images, labels, cats, **kw)


def test_demo_set_equals_the_old_host_path(demo_set):
    plan, cases = demo_set
    stylizer = PartStylizer(plan, nearest_fill="opencv", assets=load_plan_assets(plan))
    d = _diff(*_run_both(stylizer, cases, [0, 1, 0, 1]))
    assert d.max() <= 1 and (d > 0).mean() <= 1e-3


def test_demo_set_with_jump_flooding_is_within_tolerance(demo_set):
    plan, cases = demo_set
    stylizer = PartStylizer(plan, nearest_fill="jump-flooding", assets=load_plan_assets(plan))
    d = _diff(*_run_both(stylizer, cases, [0, 1, 0, 1]))
    assert d.mean() <= 0.5 and (d > 8).mean() <= 0.02


@pytest.mark.parametrize("fill", ["opencv", "jump-flooding"])
def test_many_small_parts_and_scale_equal_the_old_host_path(fill):
    cases = [_random_case(s) for s in range(3)] + [_random_case(9, h=80, w=96, parts=40)]
    stylizer = PartStylizer(_random_plan(), nearest_fill=fill)
    new, old = _run_both(stylizer, cases, [0, 1, 2, 0])
    d = _diff(new, old)
    if fill == "opencv":
        assert d.max() <= 1 and (d > 0).mean() <= 1e-3
    else:
        assert d.mean() <= 0.5 and (d > 8).mean() <= 0.02


def test_same_size_images_share_one_forward_pass_per_network():
    plan = load_plan({"styles": {"a": {"kind": "multistyle", "index": 3}},
                      "parts": {"hood": {"style": "a"}, "wheel": {"style": "a"}, "front_door": {"style": "a"},
                                "mirror": {"style": "a"}}})
    stylizer = PartStylizer(plan)
    calls: list[tuple] = []
    stylizer.multistyle.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    cases = [_random_case(s) for s in range(5)] + [_random_case(7, h=80, w=96)] * 2
    images, labels, cats = zip(*cases)
    stylizer.stylize_batch(images, labels, cats)
    assert sorted(calls) == [(2, 3, 80, 96), (5, 3, 96, 112)]


class _HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's values into Python or NumPy: on a GPU, each one waits for the device."""

    READS = {"cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_host_reads_per_batch_do_not_grow_with_images_or_parts():
    """Issue 14's rule for the device path: nothing waits on the device per image or per part. Run on CPU
    tensors with the GPU's nearest fill, a batch of 8 images with many parts (scaled ones too, both networks)
    reads values back as often as a batch of 2: the plan's one read and the download, per size group (the rest
    are reads of host-side tables, also once per batch; on CPU tensors the two cannot be told apart)."""
    plan = load_plan({
        "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 16},
                   "g": {"kind": "arbitrary", "image": str(DEMO_PLAN.parent.parent / "styles" / "mosaic.png")}},
        "parts": {"hood": {"style": "a"}, "wheel": {"style": "b", "scale": 2.0},
                  "front_door": {"style": "g"}, "mirror": {"style": "a", "scale": 1.5, "preserve_color": True}},
    })
    stylizer = PartStylizer(plan, nearest_fill="jump-flooding", assets=load_plan_assets(plan))
    counts = {}
    for n in (2, 8):
        images, labels, cats = zip(*[_random_case(s, parts=24) for s in range(n)])
        stylizer.stylize_batch(images, labels, cats, variants=list(range(n)))  # warm: style vectors cached
        with _HostReads() as reads:
            stylizer.stylize_batch(images, labels, cats, variants=list(range(n)))
        counts[n] = reads.count
    assert counts[2] == counts[8] <= 12, counts


def test_nearest_fill_by_jump_flooding_matches_opencv_off_the_fill_boundaries():
    from nstray.regions import nearest_fill
    from nstray.stylize.parts import _fill_nearest

    rng = np.random.default_rng(0)
    lab = np.full((2, 90, 120), -1, dtype=np.int64)
    for b in range(2):
        for k in range(15):
            y, x = rng.integers(0, 80), rng.integers(0, 110)
            lab[b, y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = k % 6
    t = torch.from_numpy(lab)
    ref_fill, ref_dist = _fill_nearest(t, None, "opencv")
    fill, dist = nearest_fill(t)
    assert torch.equal(fill[t >= 0], t[t >= 0]) and bool((dist[t >= 0] == 0).all())
    assert (fill != ref_fill).float().mean() < 0.02  # only at ties between two labels' fills
    assert (dist - ref_dist).abs().max() < 2.0  # OpenCV's 5x5 mask approximates L2; this is exact L2
    band_fill, band_dist = nearest_fill(t, max_dist=8)
    near = dist <= 8
    assert torch.allclose(band_dist[near], dist[near])  # the same distances within reach; labels up to ties
    assert (band_fill[near] != fill[near]).float().mean() < 0.01


def test_composite_batch_equals_composite_per_image_bit_for_bit():
    from nstray import compose

    g = torch.Generator().manual_seed(5)
    b, h, w, k = 3, 29, 41, 5
    labels = torch.randint(-1, k, (b, h // 3 + 1, w // 3 + 1), generator=g).repeat_interleave(3, 1)
    labels = labels.repeat_interleave(3, 2)[:, :h, :w]
    original, layers = torch.rand(b, 3, h, w, generator=g), [torch.rand(b, 3, h, w, generator=g) for _ in range(3)]
    strength = torch.rand(b, k, generator=g)
    preserve = torch.rand(b, k, generator=g) > 0.5
    layer_of = torch.randint(0, 3, (b, k), generator=g)
    got = compose.composite_batch(original, layers, labels, strength, preserve, layer_of, feather_px=2)
    for i in range(b):
        one = compose.composite(original[i], torch.stack([layer[i] for layer in layers]), labels[i],
                                strength[i].tolist(), preserve[i].tolist(), layer_of[i].tolist(), feather_px=2)
        assert torch.equal(got[i], one)


def test_labels_present_and_boxes_match_numpy():
    from nstray.regions import label_boxes, labels_present

    rng = np.random.default_rng(3)
    lab = np.full((2, 40, 50), -1, dtype=np.int32)
    lab[0, 3:9, 4:20] = 0
    lab[0, 30:40, 45:50] = 2
    lab[1] = rng.integers(-1, 3, (40, 50))
    lab[1][lab[1] == 1] = 0
    t = torch.from_numpy(lab)
    present, boxes = labels_present(t, 3).numpy(), label_boxes(t, 3).numpy()
    for b in range(2):
        for label in range(-1, 3):
            ys, xs = np.nonzero(lab[b] == label)
            assert present[b, label + 1] == (len(ys) > 0)
            want = [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1] if len(ys) else [0, 0, 0, 0]
            assert boxes[b, label + 1].tolist() == want


def test_an_image_in_one_region_gets_one_style_vector_with_the_old_numbers(tmp_path):
    """An image that is one styled region all over (a whole video frame in one style, an unlabeled image)
    goes through the network's one-vector-per-image form, not per-pixel maps (1.7x less time for a
    512x288 frame on CPU), for both networks and for a mixed style; the old host path's numbers hold,
    and such an image's pixels do not depend on its batch mates."""
    import cv2

    yy, xx = np.mgrid[0:64, 0:64]
    stripes = np.stack([(np.sin(xx / 3) > 0) * 220, (np.sin(yy / 5) > 0) * 120 + 40, 60 + 0 * xx], -1)
    cv2.imwrite(str(tmp_path / "stripes.png"), stripes.astype(np.uint8))
    plan = load_plan({"styles": {"a": {"kind": "multistyle", "index": 3},
                                 "mix": {"kind": "multistyle", "weights": {7: 0.5, 13: 0.5}},
                                 "s": {"kind": "arbitrary", "image": "stripes.png", "style_size": 64}},
                      "parts": {"hood": {"style": "s"}, "wheel": {"style": "mix", "preserve_color": True},
                                "background": {"style": "a", "strength": 0.6}},
                      "edges": {"feather_px": 2}}, base_dir=tmp_path)
    stylizer = PartStylizer(plan, nearest_fill="opencv", assets=load_plan_assets(plan))
    forms: dict[str, list[str]] = {"multistyle": [], "arbitrary": []}
    hooks = [stylizer.multistyle.register_forward_hook(
                 lambda _m, args, _o: forms["multistyle"].append("vector" if args[1].dim() == 2 else "maps")),
             stylizer.transformer.register_forward_hook(
                 lambda _m, args, _o: forms["arbitrary"].append("maps" if isinstance(args[1], tuple) else "vector"))]
    img, lab, cats = _random_case(0)
    everywhere = np.zeros_like(lab)
    cases = [(_random_case(1)[0], np.full_like(lab, -1), []), (img, lab, cats),
             (_random_case(2)[0], everywhere, ["hood"]), (_random_case(3)[0], everywhere, ["wheel"])]
    images, labels, categories = zip(*cases)
    stylizer.stylize_batch(images, labels, categories, variants=[0] * 4, seeds=[3] * 4, keys=list(range(4)))
    assert sorted(forms["multistyle"]) == ["maps", "vector"]  # the parts image alone takes per-pixel maps
    assert sorted(forms["arbitrary"]) == ["maps", "vector"]
    for h in hooks:
        h.remove()
    new, old = _run_both(stylizer, cases, [0, 0, 0, 0])
    d = _diff(new, old)
    assert d.max() <= 1 and (d > 0).mean() <= 1e-3
    assert [new[i].styles for i in (0, 2, 3)] == [{"background": "a"}, {"hood": "s"}, {"wheel": "mix"}]
    for i in (0, 2, 3):
        alone = stylizer.stylize_batch([cases[i][0]], [cases[i][1]], [cases[i][2]], variants=[0], seeds=[3], keys=[i])
        assert np.array_equal(alone[0].image, new[i].image)
