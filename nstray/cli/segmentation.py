"""``nstray train-seg``, ``nstray eval-seg``, ``nstray segment``: train, evaluate and use a parts segmenter.

MODEL everywhere is a pretrained name (``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``: COCO with VOC labels, whole vehicles;
trucks are background) or a checkpoint written by ``train-seg`` (``OUT/NAME/best.pt``, local or ``s3://``).
"""

from __future__ import annotations

import json
import math
import os

import click

from nstray.cli.common import DEVICE_HELP, check_device

_ARCHS = ["deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException(f"--device {name}: no CUDA device here; use --device cpu")
    return name


def _load(model: str, device: str):
    from nstray.models.segmentation import SegmentationError
    from nstray.segmentation import load_segmenter

    try:
        return load_segmenter(model, device)
    except SegmentationError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("train-seg")
@click.option("--data", required=True, help="COCO annotations .json of the training images (local or s3://).")
@click.option("--images", required=True, help="Images root that file_name values are relative to (folder or s3:// prefix).")
@click.option("--out", required=True, help="Output folder or s3:// prefix; the run goes to OUT/NAME.")
@click.option("--val", default=None, help="Validation annotations .json [default: hold out --val-fraction of --data].")
@click.option("--val-images", default=None, help="Images root of --val [default: --images].")
@click.option("--val-fraction", type=float, default=None, help="Share of --data held out for validation [default: 0.1].")
@click.option("--arch", type=click.Choice(_ARCHS), default="deeplabv3_resnet50", show_default=True)
@click.option("--name", default=None, help="Run name [default: the architecture]. The same OUT/NAME resumes.")
@click.option("--size", type=click.IntRange(min=32), default=480, show_default=True,
              help="Training crop side (px); validation and inference resize the shorter side to it.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True, help="Total epochs (a resumed run trains up to this).")
@click.option("--batch-size", type=click.IntRange(min=2), default=4, show_default=True, help="Crops per step per worker.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True, help="SGD learning rate (poly schedule).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Ray Train workers (DDP).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--backbone-weights", default="imagenet", show_default=True,
              help="Backbone start: 'imagenet' (the arch's torchvision ImageNet weights: resnet50, resnet101 or "
                   "mobilenet_v3_large in `nstray weights list`), a registry name, a file, an s3:// URI, or 'none' (random).")
@click.option("--classes", "classes_map", default=None, help="Class map YAML (source category: target class | background | ignore).")
@click.option("--precise-bn", type=click.IntRange(min=0), default=8, show_default=True,
              help="Recompute batch-norm statistics with the current weights on this many training batches before "
                   "each validation, so checkpoints carry statistics of their own weights (0 = off, as torchvision's "
                   "reference; short runs from scratch then predict background in evaluation mode).")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue OUT/NAME from its last checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--loader-workers", type=click.IntRange(min=0), default=2, show_default=True, help="Image-reading processes per worker.")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--augment", default=None, metavar="STYLED_OUTPUT_URI",
              help="Offline augmentation: the output folder of a `nstray run` over the training annotations; styled "
                   "variants of training images replace them in --augment-ratio of the samples (never validation).")
@click.option("--augment-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of training samples taken from --augment's styled variants.")
@click.option("--style-augment", default=None, metavar="PLAN|random",
              help="Online augmentation (nstray.augment.PartStyle): parts styled on the fly by a plan YAML, or "
                   "'random' (style randomization: no style images needed).")
@click.option("--style-p", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Probability a training image is styled online by --style-augment.")
@click.option("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local Ray).")
def train_seg(data: str, images: str, out: str, val: str | None, val_images: str | None, val_fraction: float | None,
              arch: str, name: str | None, size: int, epochs: int, batch_size: int, lr: float, workers: int,
              gpus_per_worker: float, cpus_per_worker: float, backbone_weights: str, classes_map: str | None,
              precise_bn: int, keep_checkpoints: int, resume: bool, seed: int, loader_workers: int, max_failures: int,
              augment: str | None, augment_ratio: float, style_augment: str | None, style_p: float,
              address: str | None) -> None:
    """Train (or fine-tune) a parts segmenter on a COCO dataset with Ray Train; OUT/NAME/best.pt is the result."""
    from nstray.train.ray_run import TrainConfigError, TrainingError
    from nstray.train.seg_data import SegDataError, load_class_map
    from nstray.train.seg_trainer import SegTrainConfig, train_segmenter
    from nstray.weights import WeightsChecksumError, WeightsNotFound

    bw = None if backbone_weights.lower() == "none" else backbone_weights
    try:
        mapping = load_class_map(classes_map) if classes_map else {}
        config = SegTrainConfig(
            data=data, images=images, out=out, val=val, val_images=val_images, val_fraction=val_fraction, arch=arch,
            name=name, size=size, epochs=epochs, batch_size=batch_size, lr=lr, backbone_weights=bw,
            class_map=mapping, class_map_source=classes_map, workers=workers, gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker, precise_bn=precise_bn, keep_checkpoints=keep_checkpoints, resume=resume, seed=seed,
            loader_workers=loader_workers, max_failures=max_failures, augment=augment, augment_ratio=augment_ratio,
            style_augment=style_augment, style_p=style_p,
        )
        summary = train_segmenter(config, address=address, notify=lambda m: click.echo(m, err=True))
    except (TrainConfigError, TrainingError, SegDataError, WeightsNotFound, WeightsChecksumError) as exc:
        raise click.ClickException(str(exc)) from None
    m = summary.metrics
    if summary.trained and "miou" in m:
        click.echo(f"trained {arch} to epoch {summary.epoch} (from {summary.resumed_from}): val mIoU {m['miou']:.4f}, "
                   f"pixel accuracy {m['pixel_accuracy']:.4f}")
    click.echo(f"classes:     {', '.join(summary.classes)}")
    click.echo(f"best model:  {summary.best_uri}")
    click.echo(f"last model:  {summary.model_uri}")
    click.echo(f"curves:      {summary.curves_csv} (losses.png, miou.png beside it)")
    click.echo(f"use it:      nstray segment IMAGES --model {summary.best_uri} --out predictions.json")


@click.command("eval-seg")
@click.argument("model")
@click.option("--data", required=True, help="COCO annotations .json with the true part masks (local or s3://).")
@click.option("--images", required=True, help="Images root of --data (folder or s3:// prefix).")
@click.option("--classes", "classes_map", default=None,
              help="Class map YAML from dataset categories to the model's classes [default: the one it was trained with].")
@click.option("--size", type=click.IntRange(min=16), default=None, help="Working size (shorter side) [default: the model's].")
@click.option("--device", default=None, callback=check_device, help=DEVICE_HELP + " [default: cuda if available].")
@click.option("--confusion", "confusion_png", default=None, help="Write the confusion matrix as a PNG here (local or s3://).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: miou, pixel_accuracy, per_class, confusion.")
def eval_seg(model: str, data: str, images: str, classes_map: str | None, size: int | None, device: str | None,
             confusion_png: str | None, as_json: bool) -> None:
    """Per-class IoU, mIoU and pixel accuracy of MODEL on a COCO dataset (each image at full size)."""
    from nstray import storage
    from nstray.masks import MaskError
    from nstray.models.segmentation import SegmentationError, iou_scores
    from nstray.plots import render_confusion
    from nstray.segmentation import evaluate, model_class_index
    from nstray.train.seg_data import SegDataError, load_class_map, load_split

    dev = _device(device)
    seg = _load(model, dev)
    try:
        records, categories, problems = load_split(data, images)
        mapping = load_class_map(classes_map) if classes_map else None
        index = model_class_index(seg, categories, mapping)
        if problems:
            click.echo(f"note: {len(problems)} problem(s) in {data}, those images are left out; first: {problems[0]}",
                       err=True)
        cm = evaluate(seg, records, index, size=size, device=dev)
    except (SegDataError, SegmentationError, MaskError, storage.StorageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    scores = iou_scores(cm)
    per_class = {c: (None if math.isnan(v) else v) for c, v in zip(seg.classes, scores["iou"])}
    if confusion_png:
        try:
            storage.write_bytes(confusion_png, render_confusion(cm.tolist(), seg.classes, f"{model} on {data}"))
        except storage.StorageError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"model": model, "images": len(records), "miou": scores["miou"],
                               "pixel_accuracy": scores["pixel_accuracy"], "per_class": per_class,
                               "classes": seg.classes, "confusion": cm.tolist()}, indent=2))
        return
    click.echo(f"{model} on {len(records)} image(s) of {data}")
    width = max(len(c) for c in seg.classes)
    for c, v in per_class.items():
        click.echo(f"  {c:<{width}}  IoU {'-' if v is None else f'{v:.4f}'}")
    click.echo(f"mIoU {scores['miou']:.4f}   pixel accuracy {scores['pixel_accuracy']:.4f}")
    if confusion_png:
        click.echo(f"confusion matrix: {confusion_png}")


@click.command("segment")
@click.argument("images")
@click.option("--model", required=True, help="Pretrained name or train-seg checkpoint (local or s3://).")
@click.option("--out", required=True, help="Predictions COCO .json to write (local or s3://).")
@click.option("--size", type=click.IntRange(min=16), default=None, help="Working size (shorter side) [default: the model's].")
@click.option("--device", default=None, callback=check_device, help=DEVICE_HELP + " [default: cuda if available].")
def segment(images: str, model: str, out: str, size: int | None, device: str | None) -> None:
    """Predict part masks for every image under IMAGES (folder or s3:// prefix) into a COCO file (RLE, with scores)."""
    from nstray import storage
    from nstray.data.images import ImageDecodeError
    from nstray.segmentation import predict_coco
    from nstray.train.data import TrainDataError, list_content_images

    root = images if storage.is_s3(images) else os.path.abspath(images)
    if not storage.is_s3(root) and not os.path.isdir(root):
        raise click.ClickException(f"{images}: not a folder; give a folder or s3:// prefix of images")
    dev = _device(device)
    seg = _load(model, dev)
    try:
        uris = list_content_images(root)
        coco = predict_coco(seg, root, uris, model_ref=model, size=size, device=dev)
        storage.write_bytes(out, (json.dumps(coco, separators=(",", ":")) + "\n").encode())
    except (TrainDataError, ImageDecodeError, storage.StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(coco['annotations'])} predicted mask(s) on {len(coco['images'])} image(s) -> {out}")
