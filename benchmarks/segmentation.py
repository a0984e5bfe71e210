"""Segmentation benchmark: inference images/s per architecture, and a real ``train-seg`` run on generated data.

    python benchmarks/segmentation.py --device cuda --infer-size 512 --train-images 2000 --size 512 --epochs 3

* Inference: every architecture (random weights: speed does not depend on them) on ``batch`` images of
  ``infer_size``², timed after warm-up, side by side in one process; peak memory (CUDA allocator peak, or the
  process's peak RSS on CPU).
* Training: ``--train-images`` synthetic images (:func:`nstray.data.synth.generate`, made in parallel
  chunks), then :func:`nstray.train.seg_trainer.train_segmenter` — the ``nstray train-seg`` path, Ray Train
  with ``--workers`` workers — with random initial weights; prints images/s per worker per epoch, the
  validation mIoU and per-class IoU, and the all-background predictor's mIoU on the same validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def infer(archs: list[str], size: int, batch: int, repeats: int, device: torch.device) -> list[dict]:
    from nstray.models.segmentation import Segmenter, build

    rows = []
    x = torch.rand(batch, 3, size, size, device=device)
    for arch in archs:
        torch.manual_seed(0)
        seg = Segmenter(build(arch, 15).to(device).eval(), arch, [str(i) for i in range(15)], size)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(3):
            seg.predict(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(repeats):
            seg.predict(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t
        rows.append({"arch": arch, "size": size, "batch": batch, "images_per_s": batch * repeats / dt,
                     "peak_mb": _peak_mb(device)})
        print(json.dumps(rows[-1]), flush=True)
        del seg
    return rows


def _chunk(args: tuple[str, int, int, int, int]) -> str:
    from nstray.data.synth import generate

    out, n, seed, width, height = args
    return str(generate(out, n, seed, width, height).annotations)


def make_dataset(root: Path, n: int, width: int, height: int, procs: int) -> Path:
    """``n`` synthetic images made in ``procs`` parallel chunks, merged into one COCO file under ``root``."""
    per = -(-n // procs)
    jobs = [(str(root / f"c{i}"), min(per, n - i * per), 100 + i, width, height) for i in range(procs) if n - i * per > 0]
    with ProcessPoolExecutor(len(jobs)) as pool:
        files = list(pool.map(_chunk, jobs))
    merged: dict = {"images": [], "annotations": [], "categories": None}
    for i, f in enumerate(files):
        doc = json.loads(Path(f).read_text())
        offset_img, offset_ann = len(merged["images"]), len(merged["annotations"])
        ids = {}
        for img in doc["images"]:
            ids[img["id"]] = offset_img + len(ids) + 1
            merged["images"].append({**img, "id": ids[img["id"]], "file_name": f"c{i}/images/{img['file_name']}"})
        for k, ann in enumerate(doc["annotations"]):
            merged["annotations"].append({**ann, "id": offset_ann + k + 1, "image_id": ids[ann["image_id"]]})
        merged["categories"] = doc["categories"]
    path = root / "annotations.json"
    path.write_text(json.dumps(merged))
    return path


def background_miou(val_records, index: dict[str, int], n: int) -> float:
    """mIoU of predicting background everywhere on ``val_records`` (same IoU rules as training's)."""
    from nstray.models.segmentation import confusion_matrix, iou_scores
    from nstray.train.seg_data import target_map

    cm = torch.zeros(n, n, dtype=torch.int64)
    for rec in val_records:
        t = torch.from_numpy(target_map(rec, index)).long()
        cm += confusion_matrix(torch.zeros_like(t), t, n)
    return iou_scores(cm)["miou"]


def train(args: argparse.Namespace) -> dict:
    from nstray.train.seg_data import class_index, load_split, split_records
    from nstray.train.seg_trainer import SegTrainConfig, train_segmenter

    root = Path(args.work)
    t = time.perf_counter()
    ann = make_dataset(root / "data", args.train_images, args.width, args.height, args.procs)
    gen_s = time.perf_counter() - t
    print(f"generated {args.train_images} images in {gen_s:.1f} s", flush=True)
    gpus = 1.0 if args.device == "cuda" else 0.0
    cfg = SegTrainConfig(data=str(ann), images=str(root / "data"), out=str(root / "runs"), arch=args.arch,
                         size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         backbone_weights=None, workers=args.workers, gpus_per_worker=gpus,
                         cpus_per_worker=args.cpus_per_worker, loader_workers=args.loader_workers, val_fraction=0.1,
                         precise_bn=args.precise_bn)
    t = time.perf_counter()
    summary = train_segmenter(cfg, notify=lambda m: print(m, flush=True))
    train_s = time.perf_counter() - t
    history = json.loads(Path(summary.curves_csv).with_suffix(".json").read_text())["history"]
    records, cats, _ = load_split(str(ann), str(root / "data"))
    _, val = split_records(records, 0.1, cfg.seed)
    classes, index = class_index(cats)
    out = {"arch": args.arch, "precise_bn": args.precise_bn, "size": args.size, "images": args.train_images, "epochs": args.epochs,
           "batch_per_worker": args.batch_size, "workers": args.workers, "device": args.device,
           "generate_s": gen_s, "train_s": train_s,
           "images_per_s_per_worker": [r["images_per_s"] / args.workers for r in history],
           "miou": [r["miou"] for r in history], "pixel_accuracy": [r["pixel_accuracy"] for r in history],
           "per_class_last": {c: history[-1].get(f"iou_{c}") for c in classes},
           "background_only_miou": background_miou(val, index, len(classes)), "val_images": len(val)}
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--archs", nargs="*", default=None, help="inference architectures [default: all]")
    p.add_argument("--infer-size", type=int, default=512)
    p.add_argument("--infer-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-infer", action="store_true")
    p.add_argument("--train-images", type=int, default=0, help="0: no training run")
    p.add_argument("--arch", default="deeplabv3_mobilenet_v3_large")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--precise-bn", type=int, default=8, help="batch-norm recalibration batches before validation")
    p.add_argument("--loader-workers", type=int, default=8)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="processes generating the data")
    p.add_argument("--work", default="/tmp/nstray-segbench")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    from nstray.models.segmentation import ARCHS

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    if not args.no_infer:
        result["inference"] = infer(args.archs or list(ARCHS), args.infer_size, args.infer_batch, args.repeats, device)
    if args.train_images:
        result["training"] = train(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
