"""``nstray optimize``: writes the image, the progress animation and the loss plot; per-part plans; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from nstray.cli import main

# small and shallow: random weights, a 40x48 image, layers up to relu2_2 keep each run to seconds
FAST = ["--content-layers", "relu2_2", "--style-layers", "relu1_1,relu2_1", "--device", "cpu"]


def invoke(*args: str):
    return CliRunner().invoke(main, ["optimize", *args], catch_exceptions=False)


@pytest.fixture
def files(tmp_path):
    yy, xx = np.mgrid[0:48, 0:40]
    content = np.stack([xx * 6, yy * 5, (xx + yy) * 3], -1).astype(np.uint8)
    Image.fromarray(content).save(tmp_path / "car.png")
    rng = np.random.default_rng(0)
    checks = np.kron(rng.integers(0, 255, (6, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(checks).save(tmp_path / "checks.png")
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[::4] = (250, 40, 10)
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    coco = {
        "images": [{"id": 7, "file_name": "car.png", "width": 40, "height": 48}],
        "categories": [{"id": 1, "name": "door"}, {"id": 2, "name": "wheel"}, {"id": 3, "name": "mirror"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0,
             "segmentation": [[2, 2, 22, 2, 22, 22, 2, 22]]},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [20, 26, 16, 16], "area": 256, "iscrowd": 0,
             "segmentation": [[20, 26, 36, 26, 36, 42, 20, 42]]},
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [30, 4, 6, 6], "area": 36, "iscrowd": 0,
             "segmentation": [[30, 4, 36, 4, 36, 10, 30, 10]]},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    (tmp_path / "plan.yaml").write_text(
        "styles:\n"
        "  checks: {kind: arbitrary, image: checks.png}\n"
        "  mix: {kind: arbitrary, image: {checks.png: 1, stripes.png: 1}}\n"
        "  mosaic: {kind: multistyle, index: 3}\n"
        "parts:\n"
        "  door: {style: checks}\n"
        "  wheel: {style: mosaic, preserve_color: true}\n"
        "  mirror: {style: mix, strength: 0.5}\n"
        "  background: {style: none}\n"
    )
    return tmp_path, content


def test_writes_image_animation_and_loss_plot(files):
    tmp, content = files
    out, gif, plot = tmp / "out.png", tmp / "progress.gif", tmp / "loss.png"
    r = invoke(str(tmp / "car.png"), "--style", str(tmp / "checks.png"), "--out", str(out), "--weights", "none",
               "--steps", "6", "--optimizer", "adam", "--save-every", "2", "--animation", str(gif), "--loss-plot", str(plot),
               *FAST)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "final losses" in r.output
    result = np.asarray(Image.open(out))
    assert result.shape == content.shape and np.abs(result.astype(int) - content).mean() > 1
    anim = Image.open(gif)
    assert anim.n_frames == 4 and anim.size == (40, 48)  # steps 2, 4, 6 + the final image
    assert Image.open(plot).format == "PNG"


def test_per_part_plan_with_state_dict_weights_and_mp4(files):
    tmp, content = files
    feats = make_layers(cfgs["E"])[:9]  # up to relu2_2, torchvision format
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, tmp / "vgg19_small.pth")
    out, mp4 = tmp / "parts.png", tmp / "run.mp4"
    r = invoke(str(tmp / "car.png"), "--coco", str(tmp / "ann.json"), "--image-id", "7", "--plan", str(tmp / "plan.yaml"),
               "--style", str(tmp / "stripes.png"), "--out", str(out), "--weights", str(tmp / "vgg19_small.pth"),
               "--steps", "6", "--animation", str(mp4), *FAST)
    assert r.exit_code == 0, r.output
    result = np.asarray(Image.open(out)).astype(int)
    diff = np.abs(result - content).mean(-1)
    door, background = diff[3:21, 3:21], diff[44:, :]
    assert door.mean() > 2
    assert background.max() == 0  # unstyled pixels are the original's (composited like the other engines)

    import av

    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 2 and frames[0].shape == (48, 40, 3)


def test_reconstruct_content_from_noise(files):
    tmp, content = files
    out = tmp / "rec.png"
    r = invoke(str(tmp / "car.png"), "--reconstruct", "content", "--out", str(out), "--weights", "none",
               "--steps", "15", "--max-size", "24", *FAST)
    assert r.exit_code == 0, r.output
    result = np.asarray(Image.open(out)).astype(float)
    assert result.shape == (24, 20, 3)
    small = np.asarray(Image.fromarray(content).resize((20, 24), Image.BILINEAR)).astype(float)
    assert np.abs(result - small).mean() < 0.6 * 255 / 3  # well below noise (~85 on average)


def test_invalid_weights_give_the_clear_error(files, monkeypatch):
    tmp, _ = files
    base = [str(tmp / "car.png"), "--style", str(tmp / "checks.png"), "--out", str(tmp / "o.png")]
    r = invoke(*base, "--weights", str(tmp / "missing.pth"))
    assert r.exit_code == 1 and "no file at" in r.output and "registered name" in r.output
    monkeypatch.setenv("TORCH_HOME", str(tmp / "torch"))
    r = invoke(*base)  # the default: torchvision VGG-19, not downloaded here
    assert r.exit_code == 1 and "nstray weights pull" in r.output and "s3://" in r.output
    (tmp / "junk.pth").write_bytes(b"junk")
    r = invoke(*base, "--weights", str(tmp / "junk.pth"))
    assert r.exit_code == 1 and "not a valid checkpoint" in r.output
    assert not (tmp / "o.png").exists()


def test_plan_styles_without_an_image_need_style(files):
    tmp, _ = files
    r = invoke(str(tmp / "car.png"), "--coco", str(tmp / "ann.json"), "--image-id", "7", "--plan", str(tmp / "plan.yaml"),
               "--out", str(tmp / "o.png"), "--weights", "none", *FAST)
    assert r.exit_code == 1 and "wheel (style 'mosaic', kind multistyle)" in r.output and "--style" in r.output
    r = invoke(str(tmp / "car.png"), "--coco", str(tmp / "ann.json"), "--image-id", "8", "--plan", str(tmp / "plan.yaml"),
               "--out", str(tmp / "o.png"), "--weights", "none", *FAST)
    assert r.exit_code == 1 and "image id 8" in r.output
    r = invoke(str(tmp / "car.png"), "--coco", str(tmp / "ann.json"), "--out", str(tmp / "o.png"))
    assert r.exit_code == 2 and "--image-id" in r.output
