"""Segmenters at the edge: load one by name or URI, evaluate it on COCO records, predict COCO part masks.

* :func:`load_segmenter` — a pretrained name (``deeplabv3_resnet50``, … see
  :data:`nstray.models.segmentation.PRETRAINED`) through the weights registry (torch hub cache, or an
  ``s3://`` copy staged with ``nstray weights push``), or an nstray checkpoint from ``nstray train-seg``
  (local file or ``s3://``, cached by the registry); always ``torch.load(weights_only=True)``.
* :func:`segmenter_identity` — what a job needs to know of a segmenter before Ray starts (its class list,
  checksum and size) without building its network.
* :func:`evaluate` — one confusion matrix over records, each image predicted at full size.
* :func:`predict_coco` — a COCO dict of predicted masks: one RLE annotation per (image, class present),
  ``score`` = the mean probability of the class over its mask, ``predicted: true``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from nstray import storage
from nstray.data.coco import ImageRecord
from nstray.data.images import DEFAULT_MAX_PIXELS, decode_image
from nstray.models.segmentation import PRETRAINED, SegmentationError, Segmenter, confusion_matrix

__all__ = ["load_segmenter", "segmenter_identity", "model_class_index", "evaluate", "predict_coco"]


def load_segmenter(ref: str, device: str | torch.device = "cpu") -> Segmenter:
    """A segmenter from a pretrained name or a checkpoint file / ``s3://`` URI; errors say how to get it."""
    from nstray import weights
    from nstray.models.segmentation import read_segmenter, segmenter_from_pretrained

    try:
        path = weights.resolve(ref)
        loaded = weights.load_checkpoint(path, ref)
    except (weights.WeightsNotFound, weights.WeightsChecksumError, weights.WeightsLoadError) as exc:
        raise SegmentationError(str(exc)) from None
    if ref in PRETRAINED:
        seg = segmenter_from_pretrained(ref, loaded)
    else:
        seg = read_segmenter(loaded, label=ref)
    seg.model.to(device)
    return seg


def segmenter_identity(ref: str) -> dict[str, Any]:
    """``{"uri", "sha256", "bytes", "arch", "classes"}`` of the segmenter ``ref`` (a pretrained name or a
    checkpoint), read without building its network (a checkpoint is memory-mapped); a missing or wrong file
    raises :class:`SegmentationError` saying how to get or fix it."""
    from pathlib import Path

    from nstray import weights
    from nstray.models.segmentation import CHECKPOINT_FORMAT

    try:
        path = weights.resolve(ref)
        entry = weights.REGISTRY.get(ref)
        sha = entry.sha256 if entry and entry.sha256 else weights.sha256_file(path)
        if ref in PRETRAINED:
            info = PRETRAINED[ref]
            arch, classes = info.arch, ["background", *info.categories[1:]]
        else:
            ckpt = weights.load_checkpoint(path, ref, mmap=True)
            if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT or "classes" not in ckpt:
                raise SegmentationError(f"{ref} is not an nstray segmenter checkpoint; train one with `nstray "
                                        "train-seg`, or give a pretrained name such as deeplabv3_resnet50")
            arch, classes = str(ckpt.get("arch")), [str(c) for c in ckpt["classes"]]
    except (weights.WeightsNotFound, weights.WeightsChecksumError, weights.WeightsLoadError) as exc:
        raise SegmentationError(str(exc)) from None
    return {"uri": entry.uri if entry else ref, "sha256": sha, "bytes": Path(path).stat().st_size, "arch": arch,
            "classes": classes}


def model_class_index(seg: Segmenter, categories: Sequence[str], class_map: Mapping[str, str] | None = None) -> dict[str, int]:
    """Dataset category -> the segmenter's class index, through the class map it was trained with (or ``class_map``).

    A category the segmenter does not know is an error naming it (pass a class map mapping it to
    ``background`` or ``ignore``).
    """
    from nstray.models.segmentation import IGNORE_INDEX
    from nstray.train.seg_data import BACKGROUND, IGNORE

    mapping = dict(seg.meta.get("class_map") or {}) if class_map is None else dict(class_map)
    out: dict[str, int] = {}
    unknown = []
    for cat in categories:
        target = mapping.get(cat, cat)
        if target == IGNORE:
            out[cat] = IGNORE_INDEX
        elif target == BACKGROUND:
            out[cat] = 0
        elif target in seg.classes:
            out[cat] = seg.classes.index(target)
        else:
            unknown.append(cat)
    if unknown:
        raise SegmentationError(f"the segmenter ({seg.arch}, classes {seg.classes[1:]}) does not know the dataset's "
                                f"categories {unknown}; pass --classes MAP.yaml mapping them to its classes, "
                                "`background` or `ignore`")
    return out


def evaluate(seg: Segmenter, records: Sequence[ImageRecord], index: Mapping[str, int], *, size: int | None = None,
             device: str | torch.device = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS,
             progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The confusion matrix ``int64[C, C]`` of ``seg`` over ``records`` (true class rows, predicted columns)."""
    from nstray.train.seg_data import read_example

    n = len(seg.classes)
    cm = torch.zeros(n, n, dtype=torch.int64)
    seg.model.eval()
    for i, record in enumerate(records):
        image, target = read_example(record, index, max_pixels)
        pred = seg.predict(image[None].to(device), size)[0].cpu()
        cm += confusion_matrix(pred, target, n)
        if progress:
            progress(i + 1)
    return cm


def predict_coco(seg: Segmenter, root: str, uris: Sequence[str], *, model_ref: str, size: int | None = None,
                 device: str | torch.device = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """A COCO dict of ``seg``'s masks for the images ``uris`` under ``root`` (``file_name`` relative to it).

    Predictions come from :func:`~nstray.models.segmentation.predict_images` and become annotations through
    :func:`nstray.masks.mask_annotations`, exactly as in the dataset job's segmenter mask source."""
    from nstray.data.coco import listing_records
    from nstray.masks import mask_annotations
    from nstray.models.segmentation import predict_images

    categories = [{"id": k, "name": name, "supercategory": "vehicle_part"} for k, name in enumerate(seg.classes) if k]
    ids = {c["name"]: c["id"] for c in categories}
    images: list[dict] = []
    annotations: list[dict] = []
    for i, record in enumerate(listing_records(root, list(uris))):  # ids and file names as the dataset job gives
        image = decode_image(storage.read_bytes(record.uri), name=record.uri, max_pixels=max_pixels)
        h, w = image.shape[:2]
        labels, conf = predict_images(seg, [image], size, device)[0]
        image_id = record.image_id
        images.append({"id": image_id, "file_name": record.file_name, "width": w, "height": h})
        for ann in mask_annotations(labels, conf, seg.classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[ann.pop("category")],
                                **ann, "iscrowd": 0, "predicted": True})
        if progress:
            progress(i + 1)
    info = {"description": "nstray predicted part masks", "model": model_ref, "arch": seg.arch,
            "size": int(size or seg.size)}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}
