"""``nstray train-seg`` on real Ray Train (2 CPU workers, DDP) with checkpoints on real S3, resume, and
``eval-seg`` / ``segment`` on the result. Tiny synthetic set (96x64 images, 64 px crops, LR-ASPP with random
weights), so the numbers are not a quality measure; they check the plumbing and the maths agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nstray import storage
from nstray.cli import main
from nstray.data.synth import generate

ARGS = ["--arch", "lraspp_mobilenet_v3_large", "--size", "64", "--batch-size", "2", "--workers", "2",
        "--backbone-weights", "none", "--loader-workers", "0", "--val-fraction", "0.25"]


def _job(argv: list[str]) -> int:
    """The Ray job entrypoint ``jobs/train_segmentation.py`` (it runs ``nstray train-seg``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_segmentation_job",
                                                  Path(__file__).parents[1] / "jobs" / "train_segmentation.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job.main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, s3_server, ray_cluster):
    """One run trained for 1 epoch, then resumed to 2; what each step left behind."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
        mp.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        root = tmp_path_factory.mktemp("segdata")
        ds = generate(root / "ds", 8, seed=5, width=96, height=64)
        out = s3_server.bucket("seg-train") + "/runs"
        base = ["--data", str(ds.annotations), "--images", str(ds.images_dir), "--out", out, *ARGS]
        assert _job([*base, "--epochs", "1"]) == 0
        run = f"{out}/lraspp_mobilenet_v3_large"
        after_one = {"curves": storage.read_bytes(f"{run}/curves.json"), "files": set(storage.list_files(run))}
        assert _job([*base, "--epochs", "2", "--precise-bn", "1"]) == 0
        yield {"ds": ds, "run": run, "base": base, "after_one": after_one}


def test_checkpoints_every_epoch_on_s3_and_resume_continues_the_epochs_and_curves(trained, capsys):
    run = trained["run"]
    first = json.loads(trained["after_one"]["curves"])["history"]
    assert [r["epoch"] for r in first] == [1]
    assert f"{run}/checkpoint_0000001/state.pt" in trained["after_one"]["files"]
    assert f"{run}/best.pt" in trained["after_one"]["files"]

    doc = json.loads(storage.read_bytes(f"{run}/curves.json"))
    history = doc["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["step"] for r in history] == [2, 4]  # 6 training images / (2 per worker x 2 workers) = 2 steps an epoch
    assert history[0] == first[0]  # the resumed run continued the curves, it did not restart them
    assert doc["classes"][0] == "background" and "wheel" in doc["classes"]
    for row in history:
        assert 0 <= row["miou"] <= 1 and 0 <= row["pixel_accuracy"] <= 1 and row["total"] > 0
    files = set(storage.list_files(run))
    for name in ("checkpoint_0000002/state.pt", "checkpoint_0000002/model.pt", "model.pt", "best.pt", "curves.csv",
                 "losses.png", "miou.png"):
        assert f"{run}/{name}" in files, name
    state = torch_load(storage.read_bytes(f"{run}/checkpoint_0000002/state.pt"))
    assert state["epoch"] == 2 and len(state["history"]) == 2

    from nstray.models.segmentation import read_segmenter

    seg = read_segmenter(storage.read_bytes(f"{run}/model.pt"))
    assert seg.classes == doc["classes"] and seg.meta["epoch"] == 2 and seg.size == 64

    # the same command again: already at --epochs, nothing to do and nothing started
    assert _job([*trained["base"], "--epochs", "2"]) == 0
    assert "already trained to epoch 2" in capsys.readouterr().err


def torch_load(data: bytes) -> dict:
    import io

    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def test_eval_seg_agrees_with_an_independent_iou_of_segments_rle(trained, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from nstray.data.coco import load_coco, read_records
    from nstray.masks import label_map

    ds, model = trained["ds"], f"{trained['run']}/best.pt"
    confusion = tmp_path / "confusion.png"
    r = CliRunner().invoke(main, ["eval-seg", model, "--data", str(ds.annotations), "--images", str(ds.images_dir),
                                  "--json", "--confusion", str(confusion), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert {"miou", "pixel_accuracy", "per_class"} <= set(report)
    assert confusion.read_bytes()[:4] == b"\x89PNG"

    pred_path = tmp_path / "pred.json"
    r = CliRunner().invoke(main, ["segment", str(ds.images_dir), "--model", model, "--out", str(pred_path),
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    coco_pred = COCO(str(pred_path))  # pycocotools loads it
    pred_doc = json.loads(pred_path.read_text())
    assert all(a["predicted"] and 0 < a["score"] <= 1 for a in pred_doc["annotations"])

    # independent IoU: truth from the annotations, prediction from the RLE, counts with numpy
    classes = report["classes"]
    n = len(classes)
    truth = {rec.file_name: rec for rec in read_records(load_coco(str(ds.annotations)), str(ds.images_dir))[0]}
    cm = np.zeros((n, n), np.int64)
    for img in coco_pred.dataset["images"]:
        rec = truth[img["file_name"]]
        labels = label_map(rec.parts, rec.height, rec.width)
        t = np.array([classes.index(p.category) for p in rec.parts] + [0])[labels]
        p = np.zeros((rec.height, rec.width), np.int64)
        for ann in coco_pred.imgToAnns[img["id"]]:
            p[mask_utils.decode(coco_pred.annToRLE(ann)).astype(bool)] = ann["category_id"]
        cm += np.bincount(t.ravel() * n + p.ravel(), minlength=n * n).reshape(n, n)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    for k, name in enumerate(classes):
        expected = tp[k] / union[k] if union[k] else None
        got = report["per_class"][name]
        assert (got is None and expected is None) or got == pytest.approx(expected), name
    assert report["pixel_accuracy"] == pytest.approx(tp.sum() / cm.sum())
    ious = [tp[k] / union[k] for k in range(n) if union[k]]
    assert report["miou"] == pytest.approx(float(np.mean(ious)))


def test_train_seg_errors_before_ray(tmp_path):
    ds = generate(tmp_path / "ds", 2, seed=1, width=48, height=32)
    base = ["train-seg", "--data", str(ds.annotations), "--images", str(ds.images_dir), "--out", str(tmp_path / "o")]
    (tmp_path / "map.yaml").write_text("left_wheel: wheel\n")
    cases = [
        (["--classes", str(tmp_path / "map.yaml")], "['left_wheel'] are not in the dataset"),
        (["--val", str(ds.annotations), "--val-fraction", "0.5"], "not both"),
        (["--backbone-weights", str(tmp_path / "missing.pth")], "no file at"),
    ]
    for extra, message in cases:
        r = CliRunner().invoke(main, [*base, *extra])
        assert r.exit_code == 1 and message in r.output, (extra, r.output)
    r = CliRunner().invoke(main, ["train-seg", "--data", str(tmp_path / "nope.json"), "--images", str(tmp_path),
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "nope.json" in r.output
    r = CliRunner().invoke(main, ["eval-seg", str(Path(tmp_path / "none.pt")), "--data", str(ds.annotations),
                                  "--images", str(ds.images_dir)])
    assert r.exit_code == 1 and "none.pt" in r.output and "Traceback" not in r.output
