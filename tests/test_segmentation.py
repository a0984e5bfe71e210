"""Segmentation models, checkpoints, metrics and training data (pure parts; no Ray). Random weights, tiny inputs."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nstray import weights
from nstray.data.coco import ImageRecord, Part
from nstray.models.segmentation import (
    ARCHS, IGNORE_INDEX, PRETRAINED, SegmentationError, Segmenter, build, confusion_matrix, iou_scores,
    load_backbone_state, poly_lr_factor, read_segmenter, segmentation_loss, segmenter_checkpoint, train_step,
)
from nstray.train.seg_data import SegDataError, augment, class_index, load_class_map, split_records, target_map


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_builder_runs_forward_and_backward_at_the_input_size(arch):
    torch.manual_seed(0)
    model = build(arch, 4)
    out = model(torch.rand(2, 3, 64, 48))
    assert out["out"].shape == (2, 4, 64, 48)
    assert ("aux" in out) == ARCHS[arch][2]
    loss = segmentation_loss(out, torch.randint(0, 4, (2, 64, 48)))
    loss.backward()
    assert math.isfinite(loss.item())


def test_pretrained_metadata_is_torchvisions_and_registered():
    import torchvision.models.segmentation as tvseg

    for name, info in PRETRAINED.items():
        enum_name, member = info.torchvision.split(".")
        tv = getattr(getattr(tvseg, enum_name), member)
        assert list(info.categories) == tv.meta["categories"]
        assert info.num_params == tv.meta["num_params"]
        assert {k: dict(v) for k, v in info.metrics.items()} == tv.meta["_metrics"]
        transform = tv.transforms()
        assert [info.resize] == list(transform.resize_size)
        assert list(info.mean) == list(transform.mean) and list(info.std) == list(transform.std)
        assert weights.REGISTRY[name].uri == f"torchvision://{info.torchvision}"
        assert "trucks are background" in weights.REGISTRY[name].description
        assert info.categories[7] == "car" and "truck" not in info.categories
        assert f"nstray weights pull {name}" in info.how_to_get
        # the parameter count of our builder matches what torchvision reports for the file
        model = build(info.arch, len(info.categories), aux_loss=info.arch != "lraspp_mobilenet_v3_large")
        if info.arch.endswith("mobilenet_v3_large"):  # the ResNets are slow to build on two busy cores
            assert sum(p.numel() for p in model.parameters()) == info.num_params
    for backbone in {b for _, b, _ in ARCHS.values()}:
        assert weights.REGISTRY[backbone].uri.startswith("torchvision://")


def test_pretrained_weights_missing_offline_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from nstray.segmentation import load_segmenter

    with pytest.raises(SegmentationError, match="nstray weights pull"):
        load_segmenter("deeplabv3_resnet50")
    with pytest.raises(SegmentationError, match="not a registered name"):
        load_segmenter(str(tmp_path / "nope.pt"))


def test_checkpoint_round_trip_weights_only_predicts_the_same(tmp_path):
    torch.manual_seed(1)
    model = build("lraspp_mobilenet_v3_large", 3).eval()
    seg = Segmenter(model, "lraspp_mobilenet_v3_large", ["background", "wheel", "door"], size=48)
    x = torch.rand(1, 3, 37, 53)
    expected = seg.logits(x)
    buf = io.BytesIO()
    torch.save(segmenter_checkpoint(model, seg.arch, seg.classes, size=48, meta={"epoch": 3}), buf)
    (tmp_path / "m.pt").write_bytes(buf.getvalue())
    loaded = read_segmenter(tmp_path / "m.pt")
    assert loaded.classes == seg.classes and loaded.size == 48 and loaded.meta == {"epoch": 3}
    assert torch.equal(loaded.logits(x), expected)
    labels = loaded.predict(x)
    assert labels.shape == (1, 37, 53) and labels.dtype == torch.int64  # exactly the input size
    # the aux head is not part of a deployable checkpoint; a DeepLab one reloads without it
    deeplab = build("deeplabv3_mobilenet_v3_large", 2)
    ckpt = segmenter_checkpoint(deeplab, "deeplabv3_mobilenet_v3_large", ["background", "car"], size=32)
    assert not any(k.startswith("aux_classifier.") for k in ckpt["state_dict"])
    assert read_segmenter(ckpt).model.aux_classifier is None


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"format": "nstray.segmenter", "payload": _Evil(str(marker))}, buf)
    with pytest.raises(SegmentationError, match="weights-only"):
        read_segmenter(buf.getvalue(), label="evil.pt")
    assert not marker.exists()
    from nstray.segmentation import load_segmenter  # the edge: registry + weights.load_checkpoint

    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(SegmentationError, match="not a valid checkpoint"):
        load_segmenter(str(tmp_path / "evil.pt"))
    assert not marker.exists()
    with pytest.raises(SegmentationError, match="not an nstray segmenter checkpoint"):
        read_segmenter({"format": "something else"})
    bad = segmenter_checkpoint(build("lraspp_mobilenet_v3_large", 3), "lraspp_mobilenet_v3_large", ["a", "b"], size=32)
    with pytest.raises(SegmentationError, match="do not fit"):
        read_segmenter(bad)


def test_confusion_matrix_and_iou_against_a_hand_computed_case():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 1, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 2]])
    cm = confusion_matrix(pred, target, 4)
    # rows = truth: class 0: (0->0, 0->1); class 1: (1->1, 1->1, 1->0); class 2: (2->2, 2->0); the 255 pixel skipped
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = iou_scores(cm)
    # IoU0 = 1/(2+3-1) = 1/4; IoU1 = 2/(3+3-2) = 1/2; IoU2 = 1/(2+1-1) = 1/2; class 3 absent -> nan, not averaged
    assert s["iou"][:3] == pytest.approx([0.25, 0.5, 0.5]) and math.isnan(s["iou"][3])
    assert s["miou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 7) and s["pixels"] == 7
    with pytest.raises(SegmentationError, match="shape"):
        confusion_matrix(pred[:1], target, 4)


def _train_toy(bn_momentum: float | None) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """LR-ASPP trained 30 steps on four images with one bright square each: (model, images, target)."""
    torch.manual_seed(0)
    model = build("lraspp_mobilenet_v3_large", 2)
    if bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = bn_momentum
    images = torch.rand(4, 3, 64, 64) * 0.3
    target = torch.zeros(4, 64, 64, dtype=torch.long)
    for k in range(4):
        y0, x0 = 8 + 8 * k, 40 - 8 * k
        images[k, :, y0:y0 + 20, x0:x0 + 20] += 0.6
        target[k, y0:y0 + 20, x0:x0 + 20] = 1
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(30):
        train_step(model, images, target, optimizer)
    return model, images, target


def test_what_train_step_learns_is_what_the_segmenter_predicts_in_eval_mode():
    """Training and inference see the same input convention (a mismatch shows as all-background in eval mode)."""
    model, images, target = _train_toy(0.5)  # running statistics that converge within a short test
    seg = Segmenter(model.eval(), "lraspp_mobilenet_v3_large", ["background", "part"], size=64)
    scores = iou_scores(confusion_matrix(seg.predict(images), target, 2))
    assert scores["iou"][1] > 0.5, scores


def test_poly_schedule():
    assert poly_lr_factor(0, 10) == 1.0
    assert poly_lr_factor(5, 10) == pytest.approx(0.5 ** 0.9)
    assert poly_lr_factor(10, 10) == 0.0


def test_backbone_weights_load_from_a_torchvision_classifier_file():
    import torchvision.models as tvm

    torch.manual_seed(2)
    classifier = tvm.mobilenet_v3_large(weights=None)
    model = build("lraspp_mobilenet_v3_large", 3)
    n = load_backbone_state(model, "lraspp_mobilenet_v3_large", classifier.state_dict())
    assert n == len(model.backbone.state_dict())
    assert torch.equal(model.backbone["0"][0].weight, classifier.features[0][0].weight)
    with pytest.raises(SegmentationError, match="mobilenet_v3_large"):
        load_backbone_state(model, "lraspp_mobilenet_v3_large", {"conv1.weight": torch.zeros(1)})


def _part(ann_id: int, category: str, box: tuple[int, int, int, int], *, box_only: bool = False) -> Part:
    x, y, w, h = box
    poly = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return Part(ann_id, 0, category, None if box_only else poly, (x, y, w, h))


def test_class_map_merges_ignores_and_names_unknown_categories(tmp_path):
    cats = ["body", "front_left_door", "front_right_door", "mirror", "badge"]
    (tmp_path / "map.yaml").write_text("front_left_door: front_door\nfront_right_door: front_door\n"
                                       "mirror: ignore\nbadge: background\n")
    classes, index = class_index(cats, load_class_map(str(tmp_path / "map.yaml")))
    assert classes == ["background", "body", "front_door"]
    assert index == {"body": 1, "front_left_door": 2, "front_right_door": 2, "mirror": IGNORE_INDEX, "badge": 0}
    with pytest.raises(SegDataError, match=r"\['hood'\] are not in the dataset"):
        class_index(cats, {"hood": "x"})
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SegDataError, match="expected a mapping"):
        load_class_map(str(tmp_path / "bad.yaml"))


def test_target_map_uses_the_overlap_rule_and_ignores_box_only_parts():
    parts = [_part(1, "body", (0, 0, 10, 8)), _part(2, "mirror", (2, 2, 3, 3)), _part(3, "wheel", (6, 4, 3, 3), box_only=True)]
    record = ImageRecord(1, "a.png", 12, 10, parts)
    _, index = class_index(["body", "mirror", "wheel"])
    t = target_map(record, index)
    assert t.shape == (10, 12) and t.dtype == np.uint8
    assert t[3, 3] == index["mirror"]  # the smaller part is on top of the body
    assert t[0, 0] == index["body"] and t[9, 11] == 0
    assert t[5, 7] == IGNORE_INDEX  # a box is not a mask: not trained on


def test_augment_is_a_function_of_the_seed_and_keeps_image_and_labels_aligned():
    image = torch.zeros(3, 40, 60)
    target = torch.zeros(40, 60, dtype=torch.long)
    image[:, 10:30, 20:40] = 1.0
    target[10:30, 20:40] = 3
    for seed in range(20):
        x, y = augment(image, target, 32, random.Random(seed))
        x2, y2 = augment(image, target, 32, random.Random(seed))
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert x.shape == (3, 32, 32) and y.shape == (32, 32)
        inside, outside = y == 3, y == 0
        if inside.sum() > 20:  # labels move with the pixels (edges blend: bilinear image, nearest labels)
            assert (x[0][inside] > 0.5).float().mean() > 0.8
        if outside.sum() > 20:
            assert (x[0][outside] > 0.5).float().mean() < 0.2
        assert set(y.unique().tolist()) <= {0, 3, IGNORE_INDEX}


def test_validation_split_is_seeded_and_disjoint():
    records = [ImageRecord(i, f"{i}.png", 8, 8) for i in range(10)]
    train, val = split_records(records, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert {r.image_id for r in train}.isdisjoint({r.image_id for r in val})
    assert [r.image_id for r in split_records(list(reversed(records)), 0.2, seed=3)[1]] == [r.image_id for r in val]
    with pytest.raises(SegDataError, match="at least 2"):
        split_records(records[:1], 0.5, seed=0)


def test_plots_for_segmentation():
    from nstray.plots import render_confusion, render_metric_plot

    png = render_metric_plot([{"epoch": 1, "miou": 0.2}, {"epoch": 2, "miou": None}], ["miou"], x="epoch")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_confusion([[3, 1], [0, 2]], ["background", "wheel"])[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2x2"):
        render_confusion([[1]], ["a", "b"])


def test_weights_pull_offline_is_a_clear_error(tmp_path, monkeypatch):
    """No internet here: the pull fails with what to do instead, no traceback."""
    from nstray.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("torch.hub.download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("[Errno -2] Name or service not known")))
    r = CliRunner().invoke(main, ["weights", "pull", "lraspp_mobilenet_v3_large"])
    assert r.exit_code == 1, r.output
    assert "cannot download torchvision weights LRASPP_MobileNet_V3_Large_Weights" in r.output
    assert "nstray weights push" in r.output and "Traceback" not in r.output


def test_segmenter_input_checks():
    seg = Segmenter(build("lraspp_mobilenet_v3_large", 2).eval(), "lraspp_mobilenet_v3_large", ["background", "car"], 32)
    with pytest.raises(SegmentationError, match=r"float\[B, 3, H, W\]"):
        seg.predict(torch.rand(3, 32, 32))
    with pytest.raises(SegmentationError, match="unknown segmentation architecture"):
        build("unet", 3)
    with pytest.raises(SegmentationError, match="at least 2 classes"):
        build("lraspp_mobilenet_v3_large", 1)


def test_precise_bn_gives_eval_mode_the_statistics_of_the_trained_weights():
    """After a short run with MobileNetV3's momentum-0.01 statistics, eval mode is recalibrated by ``--precise-bn``:
    statistics recomputed on training batches normalized as ``train_step`` normalizes them."""
    from types import SimpleNamespace

    from nstray.train.seg_trainer import _recalibrate_bn

    model, images, target = _train_toy(None)  # MobileNetV3's own momentum 0.01
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    dataset = [(images[k], target[k]) for k in range(4)]
    keyed = type("Keyed", (), {"__len__": lambda s: 4, "__getitem__": lambda s, key: dataset[key[0]]})()
    cfg = SimpleNamespace(precise_bn=2, batch_size=4, seed=0)
    _recalibrate_bn(model, keyed, cfg, epoch=1, rank=0, world=1, device=torch.device("cpu"))
    assert [m.momentum for m in norms] == momenta and model.training
    seg = Segmenter(model.eval(), "lraspp_mobilenet_v3_large", ["background", "part"], size=64)
    scores = iou_scores(confusion_matrix(seg.predict(images), target, 2))
    assert scores["iou"][1] > 0.5, scores
