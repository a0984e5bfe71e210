"""data/synth: deterministic synthetic car-part COCO data whose masks are exactly the drawn parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from nstray.data import synth

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

N_IMAGES = 10
SEED = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synth.SynthDataset:
    """One small dataset shared by the read-only checks."""
    return synth.generate(tmp_path_factory.mktemp("synth") / "ds", N_IMAGES, SEED)


@pytest.fixture(scope="module")
def coco(dataset: synth.SynthDataset) -> COCO:
    return COCO(str(dataset.annotations))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_return_value(dataset: synth.SynthDataset) -> None:
    assert dataset.images_dir == dataset.root / "images"
    assert dataset.annotations == dataset.root / "annotations.json"
    assert dataset.annotations_boxes == dataset.root / "annotations_boxes.json"
    doc = json.loads(dataset.annotations.read_text())
    assert set(doc) >= {"info", "licenses", "images", "annotations", "categories"}
    assert doc["categories"] == synth.CATEGORIES
    assert len(doc["images"]) == N_IMAGES
    for img in doc["images"]:
        path = dataset.images_dir / img["file_name"]
        with Image.open(path) as im:
            assert im.size == (img["width"], img["height"]) == (512, 384)
            assert im.mode == "RGB"
    suffixes = {Path(i["file_name"]).suffix for i in doc["images"]}
    assert ".jpg" in suffixes


def test_categories_fixed() -> None:
    names = [c["name"] for c in synth.CATEGORIES]
    assert len(names) >= 10 and len(set(names)) == len(names)
    assert [c["id"] for c in synth.CATEGORIES] == list(range(1, len(names) + 1))
    assert {"body", "hood", "front_door", "back_door", "window", "windshield", "wheel", "headlight",
            "taillight", "front_bumper", "back_bumper", "mirror"} <= set(names)
    assert all(c["supercategory"] == "vehicle_part" for c in synth.CATEGORIES)


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = synth.generate(tmp_path / "a", 2, 11)
    b = synth.generate(tmp_path / "b", 2, 11)
    c = synth.generate(tmp_path / "c", 2, 12)
    fa, fb, fc = _files(a.root), _files(b.root), _files(c.root)
    assert fa == fb
    assert fa["annotations.json"] != fc["annotations.json"]
    images_a = {v for k, v in fa.items() if k.startswith("images/")}
    images_c = {v for k, v in fc.items() if k.startswith("images/")}
    assert len(images_a) == 2 and not images_a & images_c
    # image k depends only on (seed, k): a longer run starts with the same files
    d = synth.generate(tmp_path / "d", 1, 11)
    name = sorted(k for k in _files(d.root) if k.startswith("images/"))[0]
    assert _files(d.root)[name] == fa[name]


def test_every_annotation_decodes_inside_its_box(coco: COCO) -> None:
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.imgs[ann["image_id"]]
        m = coco.annToMask(ann).astype(bool)
        assert m.shape == (img["height"], img["width"])
        assert m.any(), ann["id"]
        assert ann["area"] == float(m.sum())
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(m)
        assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)  # tight
        if ann["iscrowd"]:
            assert isinstance(ann["segmentation"]["counts"], str)
        else:
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])


def test_parts_never_share_pixels(coco: COCO) -> None:
    """The visible part of each part: an occluded part is clipped, not overlapped."""
    for image_id in coco.getImgIds():
        img = coco.imgs[image_id]
        count = np.zeros((img["height"], img["width"]), np.int32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            count += coco.annToMask(ann)
        assert count.max() <= 1


def test_coverage_of_the_small_set(coco: COCO, dataset: synth.SynthDataset) -> None:
    anns = coco.loadAnns(coco.getAnnIds())
    assert len({a["category_id"] for a in anns}) >= 10
    assert any(a["iscrowd"] == 1 for a in anns)
    assert sum(a["iscrowd"] == 0 for a in anns) > 0.8 * len(anns)  # mostly polygons
    images = json.loads(dataset.annotations.read_text())["images"]
    assert any(len(i["cars"]) > 1 for i in images)
    per_image_cars = {i["id"]: {a["attributes"]["car"] for a in anns if a["image_id"] == i["id"]} for i in images}
    assert any(len(c) > 1 for c in per_image_cars.values())
    # cars from small to large: wheel boxes vary a lot in size
    wheel = coco.getCatIds(catNms=["wheel"])[0]
    sizes = [a["bbox"][3] for a in anns if a["category_id"] == wheel]
    assert max(sizes) > 3 * min(sizes)


def test_boxes_variant_matches(dataset: synth.SynthDataset) -> None:
    full = json.loads(dataset.annotations.read_text())
    boxes = json.loads(dataset.annotations_boxes.read_text())
    COCO(str(dataset.annotations_boxes))
    assert boxes["images"] == full["images"] and boxes["categories"] == full["categories"]
    assert [a["id"] for a in boxes["annotations"]] == [a["id"] for a in full["annotations"]]
    for a, b in zip(full["annotations"], boxes["annotations"]):
        assert b["segmentation"] == []
        assert (b["image_id"], b["category_id"], b["bbox"]) == (a["image_id"], a["category_id"], a["bbox"])
        assert b["area"] == a["bbox"][2] * a["bbox"][3]


def test_annotations_are_the_drawn_pixels(dataset: synth.SynthDataset, coco: COCO) -> None:
    """Re-drawing an image gives the painter's owner map; each annotation decodes to exactly its part's pixels."""
    for k in range(3):
        _, owner, instances, _ = synth._render_image(np.random.default_rng([SEED, k]), 512, 384)
        drawn = {i: owner == i for i in range(len(instances)) if (owner == i).any()}
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[k + 1]))
        assert len(anns) == len(drawn)
        for ann, (i, m) in zip(anns, drawn.items()):
            assert ann["category_id"] == next(c["id"] for c in synth.CATEGORIES if c["name"] == instances[i].category)
            assert np.array_equal(coco.annToMask(ann).astype(bool), m)


def test_three_quarter_views_present(dataset: synth.SynthDataset) -> None:
    views = [c["view"] for i in json.loads(dataset.annotations.read_text())["images"] for c in i["cars"]]
    assert "three_quarter" in views and "side" in views


def test_mask_to_polygons_exact_with_holes_and_noise() -> None:
    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(3, 50, 2))
        m = rng.random((h, w)) > 0.45
        if t % 2:
            m = np.ones((h, w), bool)
            m[h // 4 : h // 2, w // 4 : w // 2] = False  # a hole
            m[h // 2 + 1 : -1, w // 2 + 1 : -1] = False  # another
        polys = synth.mask_to_polygons(m, 2, 1)
        full = np.zeros((h + 3, w + 4), bool)
        full[1 : 1 + h, 2 : 2 + w] = m
        if not m.any():
            assert polys == []
            continue
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h + 3, w + 4))).astype(bool)
        assert np.array_equal(decoded, full)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_images"):
        synth.generate(tmp_path, -1, 0)
    with pytest.raises(ValueError, match="16x16"):
        synth.generate(tmp_path, 1, 0, width=10, height=300)
    ds = synth.generate(tmp_path / "empty", 0, 0)
    assert json.loads(ds.annotations.read_text())["images"] == []


def test_other_sizes(tmp_path: Path) -> None:
    ds = synth.generate(tmp_path / "small", 2, 3, width=200, height=120)
    coco = COCO(str(ds.annotations))
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert coco.annToMask(ann).shape == (120, 200)


def test_rerun_replaces_its_own_images(tmp_path: Path) -> None:
    """A second run into the same folder leaves exactly the images its JSON names (other files untouched)."""
    synth.generate(tmp_path / "ds", 3, 1)
    (tmp_path / "ds" / "images" / "notes.txt").write_text("mine")
    ds = synth.generate(tmp_path / "ds", 1, 2)
    names = {i["file_name"] for i in json.loads(ds.annotations.read_text())["images"]}
    assert {p.name for p in ds.images_dir.iterdir()} == names | {"notes.txt"}


def test_domains_draw_from_disjoint_background_families(tmp_path):
    import json

    from nstray.data.synth import DOMAINS

    seen = {}
    for domain in ("a", "b"):
        ds = synth.generate(tmp_path / domain, 12, seed=4, width=64, height=48, domain=domain)
        seen[domain] = {img["background"] for img in json.loads(ds.annotations.read_text())["images"]}
        assert seen[domain] <= set(DOMAINS[domain])
    assert seen["a"] and seen["b"] and not seen["a"] & seen["b"]
    with pytest.raises(ValueError, match="domain must be one of a, b"):
        synth.generate(tmp_path / "x", 1, seed=0, domain="c")
