"""The mask-source seam: record → image + part label map + part categories (data layer; no Ray).

Every way of saying "which pixels are which part" answers the same question for one record (an
image, or one frame of a video) whose pixels the caller has already decoded::

    labels = source.labels(record, image)   # -> PartLabels(label_map, categories)

* :class:`PartLabels`: ``label_map`` int32 ``[H, W]`` (−1 = background, ``k`` = part ``k``) and
  ``categories[k]``, the category of part ``k`` — exactly what
  :meth:`nstray.stylize.parts.PartStylizer.stylize_batch` takes.
* :class:`WholeFrame`: no labels — every pixel is ``background`` (styled by the plan's background entry).
* :class:`CocoParts`: a COCO :class:`~nstray.data.coco.ImageRecord` (its parts' polygons / RLE / boxes,
  overlaps by the plan's ``overlaps`` order); :func:`coco_record` finds one image's record by id.
  Used by the image job (``pipeline/stages.py``), ``nstray stylize --coco``, ``nstray optimize``,
  ``nstray datasets stats`` and the benchmarks.
* :class:`LabelImage`: a single-channel label PNG whose pixel values are category ids
  (``nstray stylize --masks``); the record is the PNG's URI (or its decoded values).
* Video sources (:mod:`nstray.data.video_annotations`): per-frame YouTube-VIS masks, COCO files whose
  images are frames (``video_id`` / ``frame_id``), and keyframes propagated along optical flow
  (:mod:`nstray.video.masks`).
* :class:`SegmenterParts`: a segmentation model (:class:`~nstray.models.segmentation.Segmenter`, loaded by
  the caller once): images without parts get its predicted classes as parts, box-only parts a mask
  inside their box (the segmenter's pixels of the part's category, else GrabCut, else the box);
  :meth:`SegmenterParts.labels_batch` predicts a batch at once. The image job runs it inside its
  stylizer actors. :class:`CocoParts` with ``boxes="grabcut"``/``"auto"`` gives box-only parts GrabCut
  masks without a model.

Every source also says where each image's masks came from (:attr:`PartLabels.provenance`: ``coco``,
``segmenter``, ``grabcut``, ``box`` or a ``+`` of them) and, for masks it made, ``PartLabels.predicted``:
COCO-style annotations (RLE ``segmentation``, ``area``, ``bbox``, ``score``, ``mask_source``) that name
their ``category`` (a whole-image prediction) or the ``ann_id`` of the box-only part they fill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["PartLabels", "MaskSource", "MaskSourceError", "WholeFrame", "CocoParts", "SegmenterParts", "LabelImage",
           "coco_record", "check_labels", "filled_boxes", "needs_segmenter"]


class MaskSourceError(ValueError):
    """A record whose labels cannot be produced; the message names the record, the problem and the fix."""


@dataclass
class PartLabels:
    """One record's parts: ``label_map`` int32 [H, W] (−1 background, ``k`` part ``k``); ``categories[k]``;
    ``provenance`` (where the masks came from) and ``predicted`` (annotations of masks the source made)."""

    label_map: np.ndarray
    categories: list[str]
    provenance: str = ""
    predicted: list[dict] = field(default_factory=list)


class MaskSource(Protocol):
    """Anything that labels the parts of a decoded record (see the module docstring)."""

    def labels(self, record: Any, image: np.ndarray) -> PartLabels:
        """The part labels of ``record`` whose decoded pixels are ``image`` (uint8 [H, W, 3])."""
        ...


def check_labels(labels: PartLabels, image: np.ndarray, where: str) -> PartLabels:
    """``labels`` if it fits ``image`` (same size, values −1..K−1); else a :class:`MaskSourceError` naming ``where``."""
    lm = labels.label_map
    if lm.shape != image.shape[:2]:
        raise MaskSourceError(f"{where}: the label map is {lm.shape[1]}x{lm.shape[0]} but the image is "
                              f"{image.shape[1]}x{image.shape[0]} (width x height); give masks of the image's size")
    k = len(labels.categories)
    if lm.size and (int(lm.min()) < -1 or int(lm.max()) >= k):
        raise MaskSourceError(f"{where}: label values run {int(lm.min())}..{int(lm.max())} but there are {k} "
                              f"parts; labels must be -1 (background) or 0..{k - 1}")
    return labels


class WholeFrame:
    """No labels: the whole image is ``background``."""

    def labels(self, record: Any, image: np.ndarray) -> PartLabels:
        return PartLabels(np.full(image.shape[:2], -1, dtype=np.int32), [])


class CocoParts:
    """Labels of a COCO :class:`~nstray.data.coco.ImageRecord`; overlaps by ``order`` (see :func:`nstray.masks.label_map`).

    ``boxes``: masks of box-only parts: ``box`` (the box itself), or ``grabcut``/``auto`` (GrabCut from the box,
    the box where GrabCut cannot say; needs the image, so :meth:`labels_at` always draws boxes).
    """

    def __init__(self, order: str | Sequence[str] = "smaller-on-top", boxes: str = "box") -> None:
        self.order = order
        self.boxes = boxes

    def labels(self, record: Any, image: np.ndarray) -> PartLabels:
        h, w = image.shape[:2]
        if (record.height, record.width) != (h, w):
            raise MaskSourceError(f"{_where(record)}: the annotations say {record.width}x{record.height} but the image "
                                  f"is {w}x{h}; is it the right image? If so, fix its width/height in the annotations")
        if self.boxes != "box" and any(p.box_only for p in record.parts):
            return check_labels(filled_boxes(record, image, self.order, "grabcut"), image, _where(record))
        return check_labels(self.labels_at(record, h, w), image, _where(record))

    def labels_at(self, record: Any, height: int, width: int) -> PartLabels:
        """The labels at ``height`` x ``width`` without the decoded image (callers that keep it encoded)."""
        from nstray.masks import MaskError, label_map, mask_sources

        try:
            lm = label_map(record.parts, height, width, self.order)
        except MaskError as exc:
            raise MaskSourceError(f"{_where(record)}: {exc}") from None
        return PartLabels(lm, [p.category for p in record.parts],
                          mask_sources(*("box" if p.box_only else "coco" for p in record.parts)))


def needs_segmenter(parts: Sequence[Any], boxes: str) -> bool:
    """Whether a record with ``parts`` needs a segmenter's prediction: it has no parts at all, or box-only
    parts that ``boxes`` (``auto``/``segmenter``) fills from the segmenter."""
    return not parts or (boxes in ("auto", "segmenter") and any(p.box_only for p in parts))


def filled_boxes(record: Any, image: np.ndarray, order: str | Sequence[str], mode: str,
                 labels: np.ndarray | None = None, confidence: np.ndarray | None = None,
                 classes: Sequence[str] = ()) -> PartLabels:
    """``record``'s labels with each box-only part given a mask inside its box (:func:`nstray.masks.box_masks`:
    from the segmenter's ``labels``/``classes`` when given and ``mode`` allows, else GrabCut, else the box)."""
    from nstray.masks import MaskError, box_masks, encode_mask, label_map, mask_sources, with_masks

    h, w = image.shape[:2]
    masks, sources = box_masks(image, record.parts, mode, labels=labels, classes=classes)
    try:
        lm = label_map(with_masks(record.parts, masks), h, w, order)
    except MaskError as exc:
        raise MaskSourceError(f"{_where(record)}: {exc}") from None
    predicted = []
    for k, mask in masks.items():
        score = None
        if sources[k] == "segmenter" and confidence is not None:
            score = round(float(confidence[mask].mean()), 6)
        predicted.append({"ann_id": int(record.parts[k].ann_id), "segmentation": encode_mask(mask),
                          "area": float(mask.sum()), "score": score, "mask_source": sources[k]})
    prov = mask_sources(*(sources.get(k, "coco") for k in range(len(record.parts))))
    return PartLabels(lm, [p.category for p in record.parts], prov, predicted)


class SegmenterParts:
    """Labels from a segmentation model (see the module docstring): a record without parts gets one part per
    predicted class named in ``parts`` (classes outside it are background: label −1) and one predicted
    annotation per class present; a record with box-only parts gets masks inside its boxes (``boxes``
    mode, see :func:`nstray.masks.box_masks`); other records keep their COCO parts.

    ``segmenter``: a loaded :class:`~nstray.models.segmentation.Segmenter`; ``size``: its working size
    (default its own); ``parts``: category names to keep (None: every class).
    """

    def __init__(self, segmenter: Any, *, size: int | None = None, parts: Sequence[str] | None = None,
                 boxes: str = "auto", order: str | Sequence[str] = "smaller-on-top", device: Any = "cpu") -> None:
        self.segmenter = segmenter
        self.size = size
        self.keep = None if parts is None else set(parts)
        self.boxes = boxes
        self.order = order
        self.device = device

    def needs_model(self, record: Any) -> bool:
        return needs_segmenter(record.parts, self.boxes)

    def labels(self, record: Any, image: np.ndarray) -> PartLabels:
        return self.labels_batch([record], [image])[0]

    def labels_batch(self, records: Sequence[Any], images: Sequence[np.ndarray]) -> list[PartLabels]:
        """Labels of each record; the images that need the model go through it together (same-size images in
        one forward pass). Raises on the first failure: callers retry one at a time to find the culprit."""
        from nstray.models.segmentation import predict_images

        todo = [i for i, r in enumerate(records) if self.needs_model(r)]
        preds = dict(zip(todo, predict_images(self.segmenter, [images[i] for i in todo], self.size, self.device)))
        out = []
        for i, (record, image) in enumerate(zip(records, images)):
            where = _where(record)
            if i not in preds:
                out.append(CocoParts(self.order, boxes="box" if self.boxes == "box" else "grabcut").labels(record, image))
            elif record.parts:
                lab, conf = preds[i]
                out.append(check_labels(filled_boxes(record, image, self.order, self.boxes, lab, conf,
                                                     self.segmenter.classes), image, where))
            else:
                out.append(check_labels(self._whole(*preds[i]), image, where))
        return out

    def _whole(self, labels: np.ndarray, confidence: np.ndarray) -> PartLabels:
        from nstray.masks import mask_annotations

        classes = self.segmenter.classes
        present = [k for k in np.unique(labels).tolist()
                   if 0 < k < len(classes) and (self.keep is None or classes[k] in self.keep)]
        lut = np.full(len(classes), -1, dtype=np.int32)
        lut[present] = np.arange(len(present), dtype=np.int32)
        predicted = [dict(a, mask_source="segmenter") for a in mask_annotations(labels, confidence, classes)]
        return PartLabels(lut[labels], [classes[k] for k in present], "segmenter", predicted)


def _where(record: Any) -> str:
    return f"image {record.image_id} ({record.file_name})"


def coco_record(doc: dict, source: str, image_id: int, images_root: str = "") -> Any:
    """The :class:`~nstray.data.coco.ImageRecord` of ``image_id`` in the COCO document ``doc`` (read from ``source``).

    A missing id names the valid ids; an image whose record is invalid gives that record's problem and fix.
    """
    from nstray.data.coco import read_records

    records, errors = read_records(doc, images_root, check_files=False, source=source)
    record = next((r for r in records if r.image_id == image_id), None)
    if record is not None:
        return record
    bad = [e for e in errors if e.image_id == image_id]
    if bad:
        raise MaskSourceError(f"image id {image_id} in {source}: {bad[0].problem}; fix: {bad[0].fix}")
    ids = [r.image_id for r in records]
    shown = ", ".join(map(str, ids[:20])) + (f" ... ({len(ids)} in all)" if len(ids) > 20 else "")
    raise MaskSourceError(f"no image with id {image_id} in {source}; valid ids: {shown or 'none'} "
                          f"(is image id {image_id} from another annotations file?)")


_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


class LabelImage:
    """Labels from a single-channel label image whose pixel values are category ids (0 = background).

    8- or 16-bit grey, or a palette PNG read by index. All pixels of one value form one part; parts
    are numbered in increasing value. ``names`` maps ids to categories; build it with
    :meth:`from_coco` (the COCO file's ``categories``), :meth:`from_list` (value 1 = the first name)
    or :meth:`from_plan` (the plan's ``parts`` in the order listed, ``background`` skipped) — the
    naming rules of ``nstray stylize --masks``. The record is the label image's URI (local or
    ``s3://``) or its decoded values (int [H, W]).
    """

    def __init__(self, names: dict[int, str]) -> None:
        self.names = dict(names)

    @classmethod
    def from_coco(cls, doc: dict) -> LabelImage:
        return cls({int(c["id"]): str(c["name"]) for c in doc.get("categories", [])})

    @classmethod
    def from_list(cls, names: Sequence[str]) -> LabelImage:
        return cls({i + 1: c for i, c in enumerate(names)})

    @classmethod
    def from_plan(cls, plan: Any) -> LabelImage:
        from nstray.plan import BACKGROUND

        return cls.from_list([c for c in plan.parts if c != BACKGROUND])

    @staticmethod
    def read(uri: str) -> np.ndarray:
        """The pixel values (int64 [H, W]) of the label image at ``uri``; errors name it and the fix."""
        import io

        from PIL import Image

        from nstray import storage

        try:
            im = Image.open(io.BytesIO(storage.read_bytes(uri)))
            im.load()
        except (storage.StorageError, OSError) as exc:
            raise MaskSourceError(f"{uri}: cannot read it: {exc}") from None
        if im.mode not in _LABEL_MODES:
            raise MaskSourceError(f"{uri}: a {im.mode} image; the masks must be a single-channel label PNG (grey or "
                                  "palette) whose pixel values are category ids (0 = background)")
        return np.asarray(im).astype(np.int64)

    def labels(self, record: str | np.ndarray, image: np.ndarray) -> PartLabels:
        where = record if isinstance(record, str) else "the label image"
        values = self.read(record) if isinstance(record, str) else np.asarray(record).astype(np.int64)
        h, w = image.shape[:2]
        if values.shape != (h, w):
            raise MaskSourceError(f"{where} is {values.shape[1]}x{values.shape[0]}, the image is {w}x{h}; "
                                  "give masks of the image's size")
        ids = [int(v) for v in np.unique(values) if v > 0]
        unknown = [v for v in ids if v not in self.names]
        if unknown:
            known = ", ".join(f"{k}={v}" for k, v in sorted(self.names.items()))
            raise MaskSourceError(f"{where}: values {unknown} name no category; known ids: {known}")
        lm = np.where(values > 0, np.searchsorted(np.asarray(ids, dtype=np.int64), values), -1).astype(np.int32)
        return check_labels(PartLabels(lm, [self.names[v] for v in ids]), image, where)
