"""The mask-source seam: record → image + part label map + part categories (data layer; no Ray).

Every way of saying "which pixels are which part" answers the same question for one record (an
image, or one frame of a video) whose pixels the caller has already decoded::

    labels = source.labels(record, image)   # -> PartLabels(label_map, categories)

* :class:`PartLabels`: ``label_map`` int32 ``[H, W]`` (−1 = background, ``k`` = part ``k``) and
  ``categories[k]``, the category of part ``k`` — exactly what
  :meth:`nstray.stylize.parts.PartStylizer.stylize_batch` takes.
* :class:`WholeFrame`: no labels — every pixel is ``background`` (styled by the plan's background entry).
* :class:`CocoParts`: a COCO :class:`~nstray.data.coco.ImageRecord` (its parts' polygons / RLE / boxes,
  overlaps by the plan's ``overlaps`` order) — the logic today written out in ``pipeline/stages.py``,
  ``cli/styling.py`` and ``cli/optimize.py``, which can each move onto it by replacing their
  ``masks.label_map(rec.parts, ...)`` + ``[p.category for p in rec.parts]`` pair with
  ``CocoParts(order).labels(rec, image)``.
* Video sources (:mod:`nstray.data.video_annotations`): per-frame YouTube-VIS masks, and keyframes
  propagated along optical flow (:mod:`nstray.video.masks`).
* A segmentation model joins later as one more implementation of :class:`MaskSource`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["PartLabels", "MaskSource", "MaskSourceError", "WholeFrame", "CocoParts", "check_labels"]


class MaskSourceError(ValueError):
    """A record whose labels cannot be produced; the message names the record, the problem and the fix."""


@dataclass
class PartLabels:
    """One record's parts: ``label_map`` int32 [H, W] (−1 background, ``k`` part ``k``); ``categories[k]``."""

    label_map: np.ndarray
    categories: list[str]


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
    """Labels of a COCO :class:`~nstray.data.coco.ImageRecord`; overlaps by ``order`` (see :func:`nstray.masks.label_map`)."""

    def __init__(self, order: str | Sequence[str] = "smaller-on-top") -> None:
        self.order = order

    def labels(self, record: Any, image: np.ndarray) -> PartLabels:
        from nstray.masks import MaskError, label_map

        h, w = image.shape[:2]
        where = f"image {record.image_id} ({record.file_name})"
        if (record.height, record.width) != (h, w):
            raise MaskSourceError(f"{where}: the annotations say {record.width}x{record.height} but the image is "
                                  f"{w}x{h}; fix the image's width/height in the annotations")
        try:
            lm = label_map(record.parts, h, w, self.order)
        except MaskError as exc:
            raise MaskSourceError(f"{where}: {exc}") from None
        return check_labels(PartLabels(lm, [p.category for p in record.parts]), image, where)
