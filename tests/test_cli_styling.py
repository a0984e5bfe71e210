"""``nstray stylize`` (COCO or label-PNG masks, preview) and ``nstray styles list|sheet``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from nstray.cli import main

H, W = 72, 96


@pytest.fixture
def scene(tmp_path):
    """A small photo, a plan, a COCO file and a label PNG describing the same two parts."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 2.5, yy * 3.0, 128 + 0 * xx], -1) + rng.normal(0, 8, (H, W, 3))
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tmp_path / "car.png")
    (tmp_path / "plan.yaml").write_text(
        "styles:\n  a: {kind: multistyle, index: 1}\n  b: {kind: multistyle, index: 17}\n"
        "parts:\n  hood: {style: a}\n  wheel: {style: b, scale: 2.0}\nedges: {feather_px: 1}\n"
    )
    hood = [10, 8, 60, 8, 60, 40, 10, 40]  # x, y polygon
    coco = {
        "images": [{"id": 7, "file_name": "car.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "hood"}, {"id": 2, "name": "wheel"}, {"id": 3, "name": "mirror"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [hood], "bbox": [10, 8, 50, 32], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "segmentation": [], "bbox": [64, 40, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    masks = np.zeros((H, W), np.uint8)
    masks[8:40, 10:60] = 1
    masks[40:60, 64:84] = 2
    Image.fromarray(masks, mode="L").save(tmp_path / "masks.png")
    return tmp_path


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_stylize_with_coco_writes_result_and_preview(scene):
    r = _run("stylize", scene / "car.png", "--out", scene / "out.png", "--plan", scene / "plan.yaml",
             "--coco", scene / "coco.json", "--image-id", 7, "--preview", scene / "preview.png")
    assert r.exit_code == 0, r.output
    src = np.asarray(Image.open(scene / "car.png"))
    out = np.asarray(Image.open(scene / "out.png"))
    assert out.shape == src.shape
    outside = np.ones((H, W), bool)
    outside[8:41, 10:61] = False  # polygon rasterization may take the closing row/column
    outside[40:60, 64:84] = False
    assert np.array_equal(out[outside], src[outside])
    assert np.abs(out[12:36, 14:56].astype(int) - src[12:36, 14:56]).mean() > 10
    assert np.abs(out[42:58, 66:82].astype(int) - src[42:58, 66:82]).mean() > 10
    prev = Image.open(scene / "preview.png")
    assert prev.width >= 3 * W and prev.height > H
    assert np.array_equal(np.asarray(prev.convert("RGB"))[:H, :W], src)  # the first panel is the original
    assert "hood" in r.output and "wheel" in r.output


def test_stylize_with_label_png_matches_coco(scene):
    args = ["stylize", scene / "car.png", "--plan", scene / "plan.yaml"]
    assert _run(*args, "--out", scene / "a.png", "--masks", scene / "masks.png", "--categories", "hood,wheel").exit_code == 0
    assert _run(*args, "--out", scene / "b.png", "--masks", scene / "masks.png").exit_code == 0  # names from the plan
    a, b = np.asarray(Image.open(scene / "a.png")), np.asarray(Image.open(scene / "b.png"))
    assert np.array_equal(a, b)
    src = np.asarray(Image.open(scene / "car.png"))
    masks = np.asarray(Image.open(scene / "masks.png"))
    assert np.array_equal(a[masks == 0], src[masks == 0]) and not np.array_equal(a[masks == 1], src[masks == 1])


def test_stylize_without_masks_styles_the_whole_image_by_background(scene):
    """No --coco / --masks: every pixel is background (WholeFrame), styled by the plan's background entry."""
    (scene / "bg.yaml").write_text("styles:\n  a: {kind: multistyle, index: 1}\nparts:\n  background: {style: a}\n")
    r = _run("stylize", scene / "car.png", "--out", scene / "bg.png", "--plan", scene / "bg.yaml")
    assert r.exit_code == 0, r.output
    src = np.asarray(Image.open(scene / "car.png")).astype(int)
    out = np.asarray(Image.open(scene / "bg.png")).astype(int)
    assert out.shape == src.shape
    assert (np.abs(out - src).sum(-1) > 0).mean() > 0.95  # every region changed, not only parts
    # the same as a label PNG that is all background (value 0): one code path, one result
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(scene / "zero.png")
    assert _run("stylize", scene / "car.png", "--out", scene / "bg0.png", "--plan", scene / "bg.yaml",
                "--masks", scene / "zero.png", "--categories", "hood").exit_code == 0
    assert np.array_equal(out, np.asarray(Image.open(scene / "bg0.png")))


def test_stylize_errors_name_the_problem(scene):
    base = ["stylize", scene / "car.png", "--out", scene / "o.png"]
    r = CliRunner().invoke(main, [str(a) for a in base + ["--plan", scene / "plan.yaml"]])
    assert r.exit_code == 1 and "does not style 'background'" in r.output
    assert "--coco ANNOTATIONS --image-id ID, or --masks" in r.output
    r = CliRunner().invoke(main, [str(a) for a in base + ["--plan", scene / "plan.yaml", "--image-id", 7]])
    assert r.exit_code == 2 and "--image-id goes with --coco" in r.output
    r = CliRunner().invoke(main, [str(a) for a in base + ["--plan", scene / "plan.yaml", "--coco", scene / "coco.json", "--image-id", 99]])
    assert r.exit_code == 1 and "no image with id 99" in r.output and "valid ids: 7" in r.output
    (scene / "typo.yaml").write_text("styles:\n  a: {kind: multistyle, index: 1}\nparts:\n  hoood: {style: a}\n")
    r = CliRunner().invoke(main, [str(a) for a in base + ["--plan", scene / "typo.yaml", "--coco", scene / "coco.json", "--image-id", 7]])
    assert r.exit_code == 1 and "parts.hoood: unknown category 'hoood'; valid categories: hood, mirror, wheel, background" in r.output
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(scene / "rgb.png")
    r = CliRunner().invoke(main, [str(a) for a in base + ["--plan", scene / "plan.yaml", "--masks", scene / "rgb.png"]])
    assert r.exit_code == 1 and "single-channel label PNG" in r.output
    bad = np.zeros((H, W), np.uint8)
    bad[0, 0] = 9
    Image.fromarray(bad, mode="L").save(scene / "bad.png")
    r = CliRunner().invoke(main, [str(a) for a in base + ["--plan", scene / "plan.yaml", "--masks", scene / "bad.png"]])
    assert r.exit_code == 1 and "values [9] name no category; known ids: 1=hood, 2=wheel" in r.output


def test_styles_list_shows_builtin_styles_and_registry():
    r = _run("styles", "list")
    assert r.exit_code == 0
    assert "style_00" in r.output and "style_25" in r.output and "multistyle26" in r.output and "arbitrary_predict" in r.output


def test_styles_sheet_tiles_every_builtin_style(scene):
    r = _run("styles", "sheet", scene / "car.png", "--out", scene / "sheet.png", "--size", 40, "--columns", 9)
    assert r.exit_code == 0, r.output
    sheet = np.asarray(Image.open(scene / "sheet.png").convert("RGB"))
    rows = -(-27 // 9)
    assert sheet.shape[1] == 9 * (40 + 6) + 6 and sheet.shape[0] >= rows * (30 + 6)
    # tiles differ from one another (each its own style)
    th = (sheet.shape[0] - 6) // rows
    tiles = [sheet[6 + r * th + 14 : 6 + r * th + 14 + 20, 6 + c * 46 : 6 + c * 46 + 40] for r in range(rows) for c in range(9)]
    assert len({t.tobytes() for t in tiles[:27]}) == 27
