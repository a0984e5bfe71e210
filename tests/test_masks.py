"""masks: polygons, RLE (compressed and uncompressed), boxes, and the overlap rules of the label map."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from nstray.data.coco import Part
from nstray.masks import (
    MaskError,
    decode_part,
    label_map,
    paint_order,
    part_masks,
    rle_counts_from_string,
)


def part(ann_id: int, category: str, segmentation, bbox=(0.0, 0.0, 1.0, 1.0)) -> Part:
    return Part(ann_id=ann_id, category_id=1, category=category, segmentation=segmentation, bbox=tuple(bbox))


def rect(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def column_major_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE by hand: run lengths of the column-major flattening, starting with zeros."""
    runs, current, n = [], 0, 0
    for v in mask.flatten(order="F"):
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = v, 1
    runs.append(n)
    return runs


def test_polygon_rectangle_matches_hand_computed_area_and_pixels():
    m = decode_part(part(1, "door", [rect(10, 10, 20, 10)]), 40, 50)
    assert m.dtype == bool and m.shape == (40, 50)
    assert m.sum() == 20 * 10
    expected = np.zeros((40, 50), dtype=bool)
    expected[10:20, 10:30] = True
    assert np.array_equal(m, expected)


def test_polygon_triangle_area_close_to_geometry():
    m = decode_part(part(1, "glass", [[0, 0, 40, 0, 0, 40]]), 50, 50)
    assert abs(int(m.sum()) - 800) <= 40  # 40*40/2, up to half a pixel along the 40px diagonal


def test_several_polygons_in_one_part_are_merged():
    m = decode_part(part(1, "wheel", [rect(0, 0, 4, 4), rect(10, 10, 5, 3)]), 20, 20)
    assert m.sum() == 16 + 15
    assert m[0:4, 0:4].all() and m[10:13, 10:15].all()


def test_rle_compressed_and_uncompressed_round_trip():
    rng = np.random.default_rng(3)
    mask = rng.random((17, 23)) < 0.3
    mask[4:9, 2:12] = True
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_str = {"size": [17, 23], "counts": compressed["counts"].decode("ascii")}
    assert np.array_equal(decode_part(part(1, "door", as_str), 17, 23), mask)
    uncompressed = {"size": [17, 23], "counts": column_major_runs(mask)}
    assert np.array_equal(decode_part(part(2, "door", uncompressed), 17, 23), mask)


def test_rle_string_decoder_agrees_with_hand_runs():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"]
        assert rle_counts_from_string(counts) == column_major_runs(mask)


@pytest.mark.parametrize("seg, match", [
    ({"size": [10, 10], "counts": "52"}, "covers 7 pixels"),  # pycocotools would decode garbage here
    ({"size": [10, 10], "counts": [10, 5]}, "covers 15 pixels"),
    ({"size": [9, 10], "counts": [90]}, "does not match the image"),
    ({"size": [10, 10], "counts": "a b"}, "invalid character"),
    ({"size": [10, 10], "counts": [50, -1, 51]}, "non-negative"),
    ([[1, 1, 5, 5, 9]], "5 coordinates"),
    ([[1, 1, 5, 5]], "4 coordinates"),
    ([[1, 1, 5, float("nan"), 3, 3]], "non-finite"),
    ("nonsense", "must be a list of polygons or an RLE"),
])
def test_bad_segmentations_raise_clear_errors(seg, match):
    with pytest.raises(MaskError, match=match):
        decode_part(part(1, "door", seg), 10, 10)


def test_box_only_part_gets_its_box():
    for seg in (None, []):
        p = part(1, "door", seg, bbox=(2, 3, 5, 4))
        assert p.box_only
        m = decode_part(p, 20, 20)
        expected = np.zeros((20, 20), dtype=bool)
        expected[3:7, 2:7] = True
        assert np.array_equal(m, expected)
    assert not part(1, "door", [rect(0, 0, 2, 2)]).box_only


def test_part_masks_stack():
    parts = [part(1, "door", [rect(0, 0, 4, 4)]), part(2, "door", None, bbox=(5, 5, 2, 2))]
    masks = part_masks(parts, 10, 10)
    assert masks.shape == (2, 10, 10) and masks.dtype == bool
    assert masks.reshape(2, -1).sum(1).tolist() == [16, 4]


def test_label_map_smaller_on_top():
    door = part(1, "door", [rect(0, 0, 20, 10)])
    mirror = part(2, "mirror", [rect(5, 2, 4, 4)])
    handle = part(3, "handle", [rect(12, 4, 3, 2)])
    for parts in ([door, mirror, handle], [handle, mirror, door]):  # input order does not matter
        lm = label_map(parts, 12, 24)
        assert lm.dtype == np.int32 and lm.shape == (12, 24)
        idx = {p.category: k for k, p in enumerate(parts)}
        assert lm[3, 6] == idx["mirror"] and lm[5, 13] == idx["handle"] and lm[0, 0] == idx["door"]
        assert (lm == idx["mirror"]).sum() == 16 and (lm == idx["handle"]).sum() == 6
        assert (lm == idx["door"]).sum() == 200 - 16 - 6
        assert lm[11, 23] == -1 and (lm == -1).sum() == 12 * 24 - 200


def test_label_map_ties_go_to_lower_annotation_id():
    a = part(7, "door", [rect(0, 0, 4, 4)])
    b = part(3, "door", [rect(2, 0, 4, 4)])  # same area, lower id
    lm = label_map([a, b], 4, 8)
    assert lm[1, 3] == 1
    assert label_map([b, a], 4, 8)[1, 3] == 0


def test_label_map_priority_list():
    door = part(1, "door", [rect(0, 0, 20, 10)])
    mirror = part(2, "mirror", [rect(5, 2, 4, 4)])
    glass = part(3, "glass", [rect(4, 1, 8, 6)])
    wheel = part(4, "wheel", [rect(6, 3, 2, 2)])
    parts = [door, mirror, glass, wheel]
    lm = label_map(parts, 12, 24, order=["door", "glass"])
    # door listed first: on top of everything it covers; glass next; unlisted below, smaller on top among them
    assert (lm == 0).sum() == 200 and (lm == 2).sum() == 0
    assert paint_order(parts, [200, 16, 48, 4], ["door", "glass"]) == [0, 2, 3, 1]
    lm = label_map(parts, 12, 24, order=["glass"])
    assert (lm == 2).sum() == 48 and lm[4, 7] == 2  # glass over wheel and mirror
    assert (lm == 1).sum() == 0 and (lm == 3).sum() == 0
    assert (lm == 0).sum() == 200 - 48


def test_label_map_rejects_unknown_order_and_handles_no_parts():
    with pytest.raises(ValueError, match="smaller-on-top"):
        label_map([], 4, 4, order="bigger-on-top")
    with pytest.raises(ValueError, match="category names"):
        label_map([], 4, 4, order=["door", 3])
    assert (label_map([], 3, 5) == -1).all()
