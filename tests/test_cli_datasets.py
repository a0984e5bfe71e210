"""`nstray datasets ...`: validate (text/JSON/exit codes), stats (hand-computed coverage), index, synth."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cocofixtures import ann, coco, image_bytes, image_entry, write_dataset
from nstray.cli import main


def run(*args: str):
    return CliRunner().invoke(main, ["datasets", *args])


@pytest.fixture
def small(tmp_path):
    """Two 32x24 images: a door (10x8 polygon) with a box-only mirror (4x4) on it; a wheel (6x6)."""
    data = coco(
        [image_entry(1, "a.png"), image_entry(2, "b.png")],
        [ann(1, 1, 1, bbox=[2.0, 2.0, 10.0, 8.0]),
         ann(2, 1, 3, bbox=[4.0, 4.0, 4.0, 4.0], segmentation=[]),
         ann(3, 2, 2, bbox=[20.0, 10.0, 6.0, 6.0])],
    )
    files = {"a.png": image_bytes("RGB"), "b.png": image_bytes("L")}
    annotations, images = write_dataset(tmp_path, data, files)
    return str(annotations), str(images)


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("synth", "validate", "stats", "index"):
        assert name in result.output


def test_validate_ok_text_and_json(small):
    annotations, images = small
    result = run("validate", annotations, "--images", images)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "OK: all 2 images usable; 3 parts (1 box-only) in 4 categories"
    result = run("validate", annotations, "--images", images, "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ok"] is True and report["bad_records"] == []
    assert report["counts"]["usable_images"] == 2 and report["counts"]["box_only_parts"] == 1


def test_validate_bad_record_exit_1(small, tmp_path):
    annotations, images = small
    (tmp_path / "images" / "b.png").write_bytes(b"")
    result = run("validate", annotations, "--images", images)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("BAD image 2 [b.png]: the file is empty (0 bytes) (fix: ")
    assert lines[-1] == "1 bad records (1 problems); 1 of 2 images usable; 2 parts (1 box-only) in 4 categories"


def test_whole_file_problem_is_one_error_line(tmp_path):
    bad = tmp_path / "ann.json"
    bad.write_text('{"images": [1, 2,')
    result = run("validate", str(bad), "--images", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"Error: {bad}: not valid JSON") and result.stderr.count("\n") == 1
    result = run("validate", str(bad), "--images", str(tmp_path), "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False and "not valid JSON" in out["error"]
    result = run("stats", str(tmp_path / "missing.json"))
    assert result.exit_code == 1 and "file not found" in result.stderr


def test_no_check_files_skips_images(small, tmp_path):
    annotations, _ = small
    result = run("validate", annotations, "--images", str(tmp_path / "elsewhere"), "--no-check-files")
    assert result.exit_code == 0, result.output


def test_max_pixels_option(small):
    annotations, images = small
    result = run("validate", annotations, "--images", images, "--max-pixels", "500", "--json")
    assert result.exit_code == 1
    assert {r["image_id"] for r in json.loads(result.output)["bad_records"]} == {1, 2}


def test_stats_hand_computed(small):
    annotations, _ = small
    result = run("stats", annotations, "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    px = 32 * 24
    assert s["images"] == 2 and s["parts"] == 3 and s["box_only_parts"] == 1 and s["bad_records"] == 0
    # mirror (16 px) sits on the door (80 px): door keeps 64 in the label map
    assert s["mean_coverage"] == pytest.approx((80 / px + 36 / px) / 2)
    cats = s["categories"]
    assert cats["door"] == {"parts": 1, "box_only": 0, "coverage": pytest.approx(64 / px / 2)}
    assert cats["mirror"] == {"parts": 1, "box_only": 1, "coverage": pytest.approx(16 / px / 2)}
    assert cats["wheel"]["coverage"] == pytest.approx(36 / px / 2)
    text = run("stats", annotations)
    assert text.exit_code == 0
    assert "images: 2 (2 usable, 0 bad records skipped)" in text.output
    assert "mask coverage: 7.6% of pixels per image on average" in text.output


def test_index_writes_good_records(small, tmp_path):
    from nstray.data.shards import read_index

    annotations, images = small
    (tmp_path / "images" / "b.png").unlink()
    out = str(tmp_path / "index")
    result = run("index", annotations, "--images", images, "--out", out, "--rows-per-shard", "1")
    assert result.exit_code == 0, result.output
    assert "indexed 1 images (2 parts, 1 box-only) into 1 shards" in result.stdout
    assert "BAD image 2 [b.png]" in result.stderr
    records = read_index(out)
    assert [r.image_id for r in records] == [1]
    assert [p.category for p in records[0].parts] == ["door", "mirror"]


def test_synth_then_validate_stats_index(tmp_path):
    pytest.importorskip("nstray.data.synth")
    out = tmp_path / "synth"
    result = run("synth", str(out), "--images", "3", "--seed", "5", "--width", "160", "--height", "120")
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    annotations = next(line.split(": ", 1)[1].strip() for line in result.output.splitlines() if "polygons" in line)
    boxes = next(line.split(": ", 1)[1].strip() for line in result.output.splitlines() if "boxes only" in line)
    images = next(line.split(" to ", 1)[1].strip() for line in result.output.splitlines() if line.startswith("wrote"))
    for ann_file in (annotations, boxes):
        result = run("validate", ann_file, "--images", images, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["counts"]["usable_images"] == 3
    stats = json.loads(run("stats", boxes, "--json").output)
    assert stats["parts"] > 0 and stats["box_only_parts"] == stats["parts"]
    result = run("index", annotations, "--images", images, "--out", str(tmp_path / "idx"))
    assert result.exit_code == 0 and "indexed 3 images" in result.output
