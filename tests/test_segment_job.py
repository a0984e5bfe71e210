"""A segmenter as a mask source of the image job (issue 12): an unlabeled folder styled with predicted part masks
(written as RLE annotations that pycocotools loads), the segmenter in the config fingerprint (another model redoes
the outputs), box-only annotations filled by GrabCut / the segmenter / the box, config errors naming the field.

Real Ray (the session cluster), real files, a segmenter with random weights saved as an nstray checkpoint;
tiny images. The pure parts (GrabCut, box masks, prediction at the exact image size) are tested without Ray.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from nstray.config import ConfigError, load_config
from nstray.data import synth
from nstray.data.coco import Part, listing_records, load_coco, read_records
from nstray.masks import box_masks, decode_part, grabcut_box, mask_sources
from nstray.models.segmentation import Segmenter, build, predict_images, segmenter_checkpoint

ARCH = "lraspp_mobilenet_v3_large"
CLASSES = ["background", "body", "window", "wheel", "hood"]
SIZE = (64, 48)
PLAN = {
    "styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 12}},
    "parts": {"body": {"style": "a"}, "window": {"style": "b"}, "wheel": {"style": "b"},
              "background": {"style": "none"}},
}


def save_segmenter(path: Path, seed: int, size: int = 32) -> Path:
    """A random-weights LR-ASPP over ``CLASSES`` as an nstray checkpoint (loads with weights_only=True). Its
    classes follow the low-level features alone (the high-level head and the biases zeroed), so it labels
    an image with several classes instead of one everywhere."""
    torch.manual_seed(seed)
    model = build(ARCH, len(CLASSES)).eval()
    with torch.no_grad():
        head = model.classifier
        head.high_classifier.weight.zero_(), head.high_classifier.bias.zero_(), head.low_classifier.bias.zero_()
        head.low_classifier.weight.mul_(100)
    buf = io.BytesIO()
    torch.save(segmenter_checkpoint(model, ARCH, CLASSES, size=size), buf)
    path.write_bytes(buf.getvalue())
    return path


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------- pure parts (no Ray)


def _scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a red ellipse: (image, true mask)."""
    rng = np.random.default_rng(0)
    image = (rng.random((h, w, 3)) * 60 + 90).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 30) / 16) ** 2 + ((xx - 40) / 22) ** 2 <= 1
    image[mask] = (200, 30, 30)
    return image, mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_grabcut_from_a_box_beats_the_box_and_stays_inside_it():
    image, truth = _scene()
    box = [17.0, 13.0, 46.0, 35.0]  # the ellipse's bounding box, a pixel of slack
    got = grabcut_box(image, box)
    assert got is not None and got.shape == truth.shape
    inside = np.zeros_like(truth)
    inside[13:48, 17:63] = True
    assert not (got & ~inside).any()
    assert _iou(got, truth) > 0.9 > _iou(inside, truth) + 0.1
    # no background around the box to learn from, or a box too small: None (the caller uses the box)
    assert grabcut_box(image, [0, 0, 80, 60]) is None and grabcut_box(image, [5, 5, 2, 2]) is None


def test_box_masks_take_the_segmenter_then_grabcut_then_the_box():
    image, truth = _scene()
    parts = [Part(1, 1, "body", None, (17.0, 13.0, 46.0, 35.0)), Part(2, 2, "wheel", None, (17.0, 13.0, 46.0, 35.0)),
             Part(3, 3, "hood", [[0.0, 0.0, 5.0, 0.0, 5.0, 5.0]], (0.0, 0.0, 5.0, 5.0))]
    labels = np.where(truth, 1, 0)  # the segmenter sees a body; no wheel
    masks, sources = box_masks(image, parts, "auto", labels=labels, classes=["background", "body", "wheel"])
    assert sources == {0: "segmenter", 1: "grabcut"} and set(masks) == {0, 1}  # the polygon part is not a box
    assert np.array_equal(masks[0], truth)
    assert box_masks(image, parts, "grabcut", labels=labels, classes=["background", "body"])[1] == {0: "grabcut",
                                                                                                  1: "grabcut"}
    masks, sources = box_masks(image, parts, "box")
    assert (masks, sources) == ({}, {0: "box", 1: "box"})
    assert mask_sources("grabcut", "coco", "box", "grabcut") == "coco+grabcut+box" and mask_sources() == "none"


def test_predictions_are_made_at_the_working_size_and_come_back_at_the_exact_image_size():
    torch.manual_seed(0)
    seg = Segmenter(build(ARCH, len(CLASSES)).eval(), ARCH, CLASSES, size=32)
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(37, 53), (37, 53), (61, 40)])]
    preds = predict_images(seg, images)
    for image, (labels, conf) in zip(images, preds):
        assert labels.shape == conf.shape == image.shape[:2]
        assert labels.min() >= 0 and labels.max() < len(CLASSES) and ((conf > 0) & (conf <= 1)).all()
    x = torch.from_numpy(images[2]).permute(2, 0, 1)[None].float() / 255
    assert np.array_equal(preds[2][0], seg.predict(x)[0].numpy())  # one prediction everywhere (eval-seg too)


def test_listing_records_name_files_relative_to_the_root(tmp_path: Path):
    for name in ("b.png", "a.jpg", "sub/c.PNG", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    records = listing_records(str(tmp_path))
    assert [(r.image_id, r.file_name, r.width, r.parts) for r in records] == [
        (1, "a.jpg", 0, []), (2, "b.png", 0, []), (3, "sub/c.PNG", 0, [])]


def test_a_segmenter_failure_on_one_image_fails_only_that_row(tmp_path: Path):
    from nstray.data.masksource import PartLabels
    from nstray.pipeline.stages import StageOptions, prepare_batch, segment_rows

    paths = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (12, 8), colour).save(paths[-1])
    records = listing_records(str(tmp_path))
    rows = [r.to_row() for r in records]
    opts = StageOptions(output=str(tmp_path / "out"), segment_model="any", images_root=str(tmp_path))
    batch = prepare_batch({k: np.asarray([r[k] for r in rows], dtype=object) for k in rows[0]}, opts)
    assert batch["deferred"].all() and list(batch["height"]) == [8, 8, 8]

    class Flaky:  # fails on the green image, labels the others as one "body" part
        def labels(self, record, image):
            if image[0, 0, 1] == 200:
                raise RuntimeError("segmenter blew up")
            return PartLabels(np.zeros(image.shape[:2], np.int32), ["body"], "segmenter", [{"category": "body"}])

        def labels_batch(self, records, images):
            return [self.labels(r, i) for r, i in zip(records, images)]

    out = segment_rows(Flaky(), batch, opts)
    assert list(out["stage"]) == ["", "segment", ""] and "blew up" in out["error"][1]
    assert [out["mask_source"][i] for i in (0, 2)] == ["segmenter"] * 2
    assert json.loads(out["categories"][0]) == ["body"] and len(out["labels"][0]) == 8 * 12


@pytest.mark.parametrize("change, expected", [
    ({"segment": {"size": 320}}, "segment.model: required"),
    ({"input": {"images": "imgs"}}, "input.annotations: required unless a segmentation model"),
    ({"input": {"images": "imgs"}, "segment": {"boxes": "grabcut"}}, "input.annotations: required"),
    ({"segment": {"model": "m.pt", "boxes": "magic"}},
     "segment.boxes: must be one of 'auto', 'segmenter', 'grabcut' or 'box' (got 'magic')"),
    ({"segment": {"model": "m.pt", "size": 4}}, "segment.size: must be ≥ 16"),
    ({"segment": {"model": "m.pt", "colour": 1}}, "segment.colour: unknown key; valid keys: model, size, boxes"),
])
def test_segment_config_errors_name_the_field(change: dict, expected: str):
    cfg = {"input": {"annotations": "a.json", "images": "imgs"}, "output": "out", "plan": PLAN, **change}
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert expected in str(info.value)


def test_segment_config_resolves_a_checkpoint_path_and_enters_the_fingerprint(tmp_path: Path):
    base = {"input": {"images": "imgs"}, "output": "out", "plan": PLAN}
    cfg = load_config(dict(base, segment={"model": "models/best.pt"}), base_dir=tmp_path)
    assert cfg.segment.model == str(tmp_path / "models" / "best.pt") and cfg.segment.size == 520
    assert cfg.input.annotations is None
    named = load_config(dict(base, segment={"model": "deeplabv3_resnet50"}), base_dir=tmp_path)
    assert named.segment.model == "deeplabv3_resnet50"  # a registry name stays a name
    ckpt = {"sha256": "1" * 64, "bytes": 10}
    fps = {cfg.fingerprint(ckpt), cfg.fingerprint(dict(ckpt, sha256="2" * 64)), named.fingerprint(ckpt),
           load_config(dict(base, segment={"model": "models/best.pt", "size": 256}), base_dir=tmp_path).fingerprint(ckpt),
           load_config(dict(base, segment={"model": "models/best.pt", "boxes": "box"}), base_dir=tmp_path).fingerprint(ckpt)}
    assert len(fps) == 5
    # a job without a segmenter keeps the fingerprint it had before segmenters existed
    plain = load_config({"input": {"annotations": "a.json", "images": "imgs"}, "output": "out", "plan": PLAN},
                        base_dir=tmp_path)
    assert plain.fingerprint() == plain.fingerprint(ckpt)


# ---------------------------------------------------------------- the job on Ray


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> synth.SynthDataset:
    return synth.generate(tmp_path_factory.mktemp("segdata"), 3, seed=5, width=SIZE[0], height=SIZE[1])


@pytest.fixture(scope="module")
def unlabeled(ray_cluster, dataset, tmp_path_factory):
    """An image folder without annotations (the 3 synth images + one broken file), styled with a segmenter."""
    from nstray.pipeline import run_job

    root = tmp_path_factory.mktemp("unlabeled")
    folder = root / "photos"
    shutil.copytree(dataset.images_dir, folder)
    (folder / "zz_broken.png").write_bytes(b"not a png at all\n" * 8)
    model = save_segmenter(root / "seg_a.pt", seed=0)
    cfg = {"input": {"images": str(folder)}, "output": str(root / "styled"), "plan": PLAN, "seed": 3,
           "segment": {"model": str(model), "size": 32}, "resources": {"actors": 1, "batch_size": 4},
           "contact_sheet": 0}
    summary = run_job(cfg)
    return summary, root, folder, cfg


def _manifest(out: Path) -> list[dict]:
    from nstray.pipeline.outputs import read_manifest

    return sorted(read_manifest(str(out)).to_pylist(), key=lambda r: (r["image_id"], r["variant"]))


def test_an_unlabeled_folder_comes_out_styled_and_labeled(unlabeled):
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils

    from nstray.segmentation import load_segmenter

    summary, root, folder, cfg = unlabeled
    out = root / "styled"
    assert (summary.records, summary.done, summary.failed) == (4, 3, 1)
    rows = _manifest(out)
    assert [r["mask_source"] for r in rows if r["status"] == "done"] == ["segmenter"] * 3
    assert json.loads(rows[0]["models"])[-1]["sha256"]  # the segmenter is among the models of every output
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert [(e["file_name"], e["stage"]) for e in errors] == [("zz_broken.png", "decode")]

    coco = COCO(str(out / "annotations.json"))  # pycocotools loads it
    doc = coco.dataset
    assert [c["name"] for c in doc["categories"]] == CLASSES[1:]
    assert len(doc["images"]) == 3 and doc["annotations"]
    seg = load_segmenter(cfg["segment"]["model"])
    names = {c["id"]: c["name"] for c in doc["categories"]}
    for img in doc["images"]:
        src = rgb(folder / img["nstray"]["source_file"])
        assert (img["width"], img["height"]) == (src.shape[1], src.shape[0]) and img["nstray"]["mask_source"] == "segmenter"
        labels, conf = predict_images(seg, [src], size=32)[0]
        predicted = np.zeros(src.shape[:2], np.int64)
        for ann in coco.imgToAnns[img["id"]]:
            assert ann["predicted"] is True and 0 < ann["score"] <= 1 and ann["mask_source"] == "segmenter"
            mask = mask_utils.decode(coco.annToRLE(ann)).astype(bool)
            assert mask.shape == src.shape[:2] and ann["area"] == mask.sum()
            predicted[mask] = CLASSES.index(names[ann["category_id"]])
        assert (predicted == labels).mean() > 0.99  # the actor's prediction is this one (threads may break ties)
        styled = rgb(out / img["file_name"])
        unstyled = ~np.isin(labels, [CLASSES.index(c) for c in ("body", "window", "wheel")])  # hood: not in the plan
        assert (styled[unstyled] == src[unstyled]).mean() > 0.99
        if (~unstyled).any():
            assert np.abs(styled[~unstyled].astype(int) - src[~unstyled]).mean() > 3


def test_another_model_redoes_the_outputs_and_the_same_one_skips_them(unlabeled):
    from nstray.pipeline import run_job

    summary, root, folder, cfg = unlabeled
    again = run_job(cfg)
    assert (again.done, again.skipped) == (0, 3)
    before = {r["image_id"]: r["fingerprint"] for r in _manifest(root / "styled") if r["status"] == "done"}
    other = dict(cfg, segment=dict(cfg["segment"], model=str(save_segmenter(root / "seg_b.pt", seed=3))))
    redone = run_job(other)
    assert (redone.done, redone.skipped) == (3, 0)
    after = {r["image_id"]: r["fingerprint"] for r in _manifest(root / "styled") if r["status"] == "done"}
    assert set(after) == set(before) and not set(after.values()) & set(before.values())


@pytest.mark.parametrize("segment, allowed", [(None, {"grabcut", "box"}), ({"boxes": "box"}, {"box"}),
                                              ({"model": "SEG", "size": 32}, {"segmenter", "grabcut", "box"})])
def test_box_only_annotations_get_masks_inside_their_boxes(ray_cluster, dataset, tmp_path, segment, allowed):
    """(The segmenter case runs with the CPU stages as separate Ray tasks: deferred rows cross the object store.)"""
    from pycocotools.coco import COCO
    from pycocotools import mask as mask_utils

    from nstray.pipeline import run_job

    plan = {"styles": PLAN["styles"], "parts": {"body": {"style": "a"}, "wheel": {"style": "b"},
                                                "background": {"style": "none"}}}
    cfg = {"input": {"annotations": str(dataset.annotations_boxes), "images": str(dataset.images_dir)},
           "output": str(tmp_path / "styled"), "plan": plan, "resources": {"actors": 1, "batch_size": 4},
           "contact_sheet": 0}
    if segment is not None:
        model = str(save_segmenter(tmp_path / "seg.pt", seed=0)) if "model" in segment else None
        cfg["segment"] = {k: (model if v == "SEG" else v) for k, v in segment.items()}
        if model:
            cfg["resources"]["fuse_stages"] = False
    summary = run_job(cfg)
    assert (summary.done, summary.failed) == (3, 0)
    rows = _manifest(tmp_path / "styled")
    used = {s for r in rows for s in r["mask_source"].split("+")}
    assert used <= allowed and used
    if segment is None:
        assert "grabcut" in used  # GrabCut finds the parts of the synthetic cars
    if "segmenter" in allowed:
        assert "segmenter" in used  # the model's pixels of the box's category, inside the box

    coco = COCO(str(tmp_path / "styled" / "annotations.json"))
    boxes = {a["id"]: a for a in load_coco(str(dataset.annotations_boxes))["annotations"]}
    truth, _ = read_records(load_coco(str(dataset.annotations)), str(dataset.images_dir))
    true_masks = {p.ann_id: decode_part(p, r.height, r.width) for r in truth for p in r.parts}
    filled = 0
    for img in coco.dataset["images"]:
        h, w = img["height"], img["width"]
        for ann in coco.imgToAnns[img["id"]]:
            if not ann.get("predicted"):
                assert ann["segmentation"] == [] and allowed & {"box"}  # kept as a box
                continue
            filled += 1
            mask = mask_utils.decode(coco.annToRLE(ann)).astype(bool)
            x, y, bw, bh = ann["bbox"]
            inside = np.zeros((h, w), bool)
            inside[int(np.floor(y)):int(np.ceil(y + bh)), int(np.floor(x)):int(np.ceil(x + bw))] = True
            assert mask.any() and not (mask & ~inside).any(), ann["id"]
            assert ann["mask_source"] in allowed - {"box"}
            src = boxes[next(a["id"] for a in boxes.values() if a["bbox"] == ann["bbox"]
                             and a["category_id"] == ann["category_id"])]
            assert src["segmentation"] == [] and true_masks[src["id"]].shape == mask.shape
    assert (filled > 0) == bool(allowed - {"box"})
