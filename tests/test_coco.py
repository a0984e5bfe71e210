"""coco: whole-file errors, records and parts, row round trip, safe file names, every problem of a record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cocofixtures import ann, box_poly, coco, image_bytes, image_entry, write_dataset
from nstray import storage
from nstray.data.coco import (
    DatasetError,
    ImageRecord,
    Part,
    load_coco,
    read_records,
    unsafe_file_name,
    validate,
)


@pytest.mark.parametrize("text, match", [
    ('{"images": [', r"not valid JSON \(line 1, column 13"),
    ("[1, 2]", "top level is a JSON list"),
    ('{"annotations": [], "categories": []}', "no 'images' list"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' is a dict, not a list"),
    ('{"images": [], "annotations": [], "categories": []}', "'images' is empty"),
    ('{"images": [{"id": 1}], "categories": []}', "no 'annotations' list"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": "x", "name": "door"}]}', r"categories\[0\]"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
     "category id 1 is defined twice"),
])
def test_whole_file_problems_are_one_clear_error(tmp_path, text, match):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match=match) as err:
        load_coco(str(path))
    assert str(path) in str(err.value) and "fix:" in str(err.value)


def test_missing_annotations_file_local_and_s3(tmp_path, s3_bucket):
    with pytest.raises(DatasetError, match="file not found"):
        load_coco(str(tmp_path / "nope.json"))
    with pytest.raises(DatasetError, match="does not exist"):
        load_coco(s3_bucket + "/nope.json")
    with pytest.raises(DatasetError, match="not text JSON"):
        (tmp_path / "img.json").write_bytes(image_bytes("RGB", fmt="PNG"))
        load_coco(str(tmp_path / "img.json"))


def test_load_from_s3(s3_bucket):
    data = coco([image_entry(1, "a.png")], [ann(1, 1)])
    storage.write_bytes(s3_bucket + "/ann.json", json.dumps(data).encode())
    assert load_coco(s3_bucket + "/ann.json") == data


@pytest.mark.parametrize("name, bad", [
    ("a.png", None), ("sub/dir/b.jpg", None), ("été/フロント.png", None), ("./c.png", None), ("a..b.png", None),
    ("../a.png", "'..'"), ("sub/../../a.png", "'..'"), ("/etc/passwd", "absolute"), ("C:/x.png", "absolute"),
    ("c:x.png", "absolute"), ("..\\a.png", "backslash"), ("sub\\a.png", "backslash"), ("s3://b/k.png", "URI"),
    ("", "missing"), (None, "missing"), ("a\x00.png", "NUL"),
])
def test_unsafe_file_names(name, bad):
    why = unsafe_file_name(name)
    assert (why is None) if bad is None else (bad in why)


def _dataset():
    images = [image_entry(1, "a.png"), image_entry(2, "b/ü.png", 40, 30)]
    rle = {"size": [30, 40], "counts": [100, 30, 1070]}
    anns = [
        ann(10, 1, 1, bbox=[2.0, 2.0, 10.0, 8.0]),
        ann(11, 1, 3, segmentation=[], bbox=[20.0, 4.0, 5.5, 6.0]),
        ann(12, 2, 2, segmentation=rle, bbox=[3.0, 0.0, 2.0, 30.0], iscrowd=1, area=30.0),
    ]
    del anns[0]["area"]  # computed from the mask
    return coco(images, anns)


def test_read_records_parts_and_box_only(tmp_path):
    data = _dataset()
    files = {"a.png": image_bytes("RGB", (32, 24)), "b/ü.png": image_bytes("L", (40, 30))}
    write_dataset(tmp_path, data, files)
    records, errors = read_records(data, str(tmp_path / "images"))
    assert errors == []
    assert [r.image_id for r in records] == [1, 2]
    a, b = records
    assert a.uri == str(tmp_path / "images" / "a.png")
    assert [p.category for p in a.parts] == ["door", "mirror"]
    assert [p.box_only for p in a.parts] == [False, True]
    assert a.parts[0].area == 80.0 and a.parts[0].segmentation == [box_poly(2.0, 2.0, 10.0, 8.0)]
    assert b.parts[0].iscrowd is True and b.parts[0].category == "wheel"
    assert b.parts[0].segmentation == {"size": [30, 40], "counts": [100, 30, 1070]}


def test_bbox_derived_when_missing(tmp_path):
    a = ann(1, 1, segmentation=[box_poly(4, 5, 6, 3)])
    del a["bbox"]
    records, errors = read_records(coco([image_entry(1, "a.png")], [a]), str(tmp_path), check_files=False)
    assert errors == [] and records[0].parts[0].bbox == (4.0, 5.0, 6.0, 3.0)


def test_rows_round_trip_losslessly(tmp_path):
    records, _ = read_records(_dataset(), "s3://bucket/images", check_files=False)
    records[0].parts.append(Part(99, 4, "glass", {"size": [24, 32], "counts": b"PX1"}, (0.1, 0.2, 0.30000000000000004, 1e-9), False, 1 / 3))
    for rec in records:
        row = rec.to_row()
        assert all(isinstance(v, (int, str, list)) for v in row.values())
        json.dumps(row)
        back = ImageRecord.from_row(row)
        if rec is records[0]:
            rec.parts[-1].segmentation["counts"] = "PX1"  # bytes counts are stored as their text
        assert back == rec
    row = records[1].to_row()
    numpy_row = {**row, "image_id": np.int64(row["image_id"]), "width": np.int32(row["width"]),
                 "height": np.int32(row["height"]), "categories": np.array(row["categories"])}
    assert ImageRecord.from_row(numpy_row) == records[1]
    assert row["num_parts"] == 1 and row["categories"] == ["wheel"] and row["uri"] == "s3://bucket/images/b/ü.png"


def test_check_files_false_touches_nothing(tmp_path):
    records, errors = read_records(_dataset(), str(tmp_path / "does-not-exist"), check_files=False)
    assert errors == [] and len(records) == 2


def test_every_problem_of_a_record_is_listed_and_others_survive(tmp_path):
    images = [image_entry(1, "good.png"), image_entry(2, "gone.png")]
    anns = [
        ann(1, 1),
        ann(2, 2, 77),  # unknown category
        ann(3, 2, segmentation=[[1, 2, 3]]),  # odd polygon
        ann(4, 2, bbox=[-5.0, 0.0, 3.0, 3.0], segmentation=[]),  # outside
    ]
    annotations, images_dir = write_dataset(tmp_path, coco(images, anns), {"good.png": image_bytes("RGB")})
    report = validate(str(annotations), str(images_dir))
    assert [r.image_id for r in report.records] == [1]
    problems = [e.problem for e in report.errors]
    assert len(problems) == 4 and all(e.image_id == 2 and e.file_name == "gone.png" for e in report.errors)
    for needle in ("annotation 2 unknown category id 77", "annotation 3 segmentation: polygon 0 has 3 coordinates",
                   "annotation 4 bbox", "cannot be read"):
        assert any(needle in p for p in problems), (needle, problems)
    assert report.counts == {"images": 2, "annotations": 4, "categories": 4, "usable_images": 1, "bad_records": 1,
                             "problems": 4, "parts": 1, "box_only_parts": 0}
    assert report.bad_records()[0]["image_id"] == 2 and len(report.bad_records()[0]["problems"]) == 4


def test_validate_missing_images_folder_is_one_error(tmp_path):
    annotations, _ = write_dataset(tmp_path, _dataset(), {})
    with pytest.raises(DatasetError, match="images folder does not exist"):
        validate(str(annotations), str(tmp_path / "nope"))


def test_malformed_entries_are_per_record(tmp_path):
    data = coco([image_entry(1, "a.png"), "oops", {"file_name": "b.png", "width": 4, "height": 4}],
                [ann(1, 1), 5, {"id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    records, errors = read_records(data, str(tmp_path), check_files=False)
    assert [r.image_id for r in records] == [1]
    problems = [e.problem for e in errors]
    assert any("images[1] is not an object" in p for p in problems)
    assert any("images[2] has no integer id" in p for p in problems)
    assert any("annotations[1] is not an object" in p for p in problems)
    assert any("annotation 9 has no integer image_id" in p for p in problems)


def test_declared_size_over_limit_without_files(tmp_path):
    data = coco([image_entry(1, "a.png", 5000, 5000)], [])
    _, errors = read_records(data, str(tmp_path), check_files=False, max_pixels=1_000_000)
    assert len(errors) == 1 and "above the pixel limit" in errors[0].problem
