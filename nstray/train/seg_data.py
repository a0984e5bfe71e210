"""Segmentation training data: COCO part records → class label maps, class maps, splits and augmented crops.

* Classes: index 0 is ``background``; then the dataset's categories (in category-id order) as renamed by
  an optional class map, each target class once. A class map (YAML, local or ``s3://``) maps a source
  category to a target class (``front_left_door: front_door`` merges left and right), to ``background``,
  or to ``ignore`` (its pixels count for neither loss nor IoU); unlisted categories keep their name.
* Label maps come from the data layer's mask-source seam (:class:`nstray.data.masksource.CocoParts`: the
  documented overlap rule, smaller part on top), then part → class. A box-only part has no true mask, so its box is ``ignore``.
* Augmentation (torchvision's reference recipe, ``size`` = crop side): the shorter side resized to a
  random ``[0.5, 2] × size``, a horizontal flip half of the time, then a random ``size × size`` crop
  (padded with 0 in the image and ``ignore`` in the target where the image is smaller). Every random
  choice comes from ``(seed, position)``, so a resumed run sees exactly the crops the uninterrupted
  run would have seen.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from nstray import storage
from nstray.data.coco import ImageRecord
from nstray.data.masksource import CocoParts, MaskSourceError
from nstray.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from nstray.models.segmentation import IGNORE_INDEX

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "SegDataError",
    "class_index",
    "load_class_map",
    "load_split",
    "split_records",
    "target_map",
    "SegCrops",
    "read_example",
]

log = logging.getLogger(__name__)

BACKGROUND = "background"
IGNORE = "ignore"
_MAX_SKIPS = 16


class SegDataError(ValueError):
    """Unusable segmentation data or class map; the message says which file, what is wrong and how to fix it."""


def load_class_map(uri: str) -> dict[str, str]:
    """A class map YAML ``{source category: target class | background | ignore}`` (local or ``s3://``)."""
    import yaml

    try:
        doc = yaml.safe_load(storage.read_bytes(uri).decode("utf-8"))
    except storage.StorageError as exc:
        raise SegDataError(f"class map: {exc}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SegDataError(f"class map {uri}: not valid YAML ({exc}); write lines like `front_left_door: front_door`") from None
    if not isinstance(doc, dict) or not doc:
        raise SegDataError(f"class map {uri}: expected a mapping `source category: target class`, got "
                           f"{type(doc).__name__}; e.g. `front_left_door: front_door`")
    out: dict[str, str] = {}
    for key, value in doc.items():
        target = BACKGROUND if value is None else value
        if not isinstance(key, str) or not isinstance(target, str) or not target.strip():
            raise SegDataError(f"class map {uri}: entry {key!r}: {value!r} must map a category name to a class name "
                               f"(or `{BACKGROUND}` / `{IGNORE}`)")
        out[key] = target.strip()
    return out


def class_index(categories: Sequence[str], class_map: Mapping[str, str] | None = None, *,
                source: str = "class map") -> tuple[list[str], dict[str, int]]:
    """``(classes, category -> class index)``: classes start with ``background``; ignored categories map to 255."""
    mapping = dict(class_map or {})
    unknown = sorted(set(mapping) - set(categories))
    if unknown:
        raise SegDataError(f"{source}: categories {unknown} are not in the dataset (it has {list(categories)}); "
                           "fix the names or remove those lines")
    classes = [BACKGROUND]
    index: dict[str, int] = {}
    for cat in categories:
        target = mapping.get(cat, cat)
        if target == IGNORE:
            index[cat] = IGNORE_INDEX
            continue
        if target == BACKGROUND:
            index[cat] = 0
            continue
        if target not in classes:
            classes.append(target)
        index[cat] = classes.index(target)
    if len(classes) < 2:
        raise SegDataError(f"{source}: every category maps to background or ignore; nothing to learn")
    if len(classes) > IGNORE_INDEX:
        raise SegDataError(f"{len(classes)} classes: at most {IGNORE_INDEX} fit a uint8 label map")
    return classes, index


def load_split(annotations: str, images_root: str) -> tuple[list[ImageRecord], list[str], list[str]]:
    """``(usable records, category names in id order, problems)`` of a COCO file; files are read later."""
    from nstray.data.coco import DatasetError, check_structure, load_coco, read_records

    try:
        coco = load_coco(annotations)
        cats = check_structure(coco, annotations)
    except DatasetError as exc:
        raise SegDataError(str(exc)) from None
    records, errors = read_records(coco, images_root, check_files=False, source=annotations)
    if not records:
        first = f"; first problem: {errors[0]}" if errors else ""
        raise SegDataError(f"{annotations}: no usable images under {images_root}{first}")
    return records, [cats[k] for k in sorted(cats)], [str(e) for e in errors]


def split_records(records: Sequence[ImageRecord], fraction: float, seed: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(train, val)``: a seeded ``fraction`` of the images (at least one) held out, by image id."""
    if not 0 < fraction < 1:
        raise SegDataError(f"--val-fraction must be between 0 and 1, got {fraction}")
    ordered = sorted(records, key=lambda r: r.image_id)
    if len(ordered) < 2:
        raise SegDataError(f"{len(ordered)} usable image(s): a validation split needs at least 2 (or pass --val)")
    n_val = min(len(ordered) - 1, max(1, math.ceil(fraction * len(ordered))))
    order = list(range(len(ordered)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return ([r for i, r in enumerate(ordered) if i not in held], [r for i, r in enumerate(ordered) if i in held])


def target_map(record: ImageRecord, index: Mapping[str, int]) -> np.ndarray:
    """``uint8[H, W]`` class per pixel of a record (0 background, 255 ignore), overlaps by the data layer's rule."""
    parts = record.parts
    labels = CocoParts().labels_at(record, record.height, record.width).label_map
    lut = np.array([IGNORE_INDEX if p.box_only else index[p.category] for p in parts] + [0], dtype=np.uint8)
    return lut[labels]  # label -1 (background) picks the trailing 0


def read_example(record: ImageRecord, index: Mapping[str, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Tensor, Tensor]:
    """``(float[3, H, W] in [0, 1], int64[H, W])`` of a record at its full size."""
    image = decode_image(storage.read_bytes(record.uri), name=record.uri, max_pixels=max_pixels)
    if image.shape[:2] != (record.height, record.width):
        raise ImageDecodeError(record.uri, f"is {image.shape[1]}x{image.shape[0]}, the annotations say "
                               f"{record.width}x{record.height}", "fix width/height in the annotations")
    x = torch.tensor(image).permute(2, 0, 1).float().div_(255.0)
    return x, torch.from_numpy(target_map(record, index)).long()


def augment(image: Tensor, target: Tensor, size: int, rng: random.Random) -> tuple[Tensor, Tensor]:
    """torchvision's training transform: random resize (shorter side 0.5–2× ``size``), flip, ``size`` crop."""
    h, w = image.shape[-2:]
    side = rng.randint(int(0.5 * size), int(2.0 * size))
    scale = side / min(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)[0].clamp_(0, 1)
    y = F.interpolate(target[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    ph, pw = max(0, size - nh), max(0, size - nw)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=0.0)
        y = F.pad(y, (0, pw, 0, ph), value=IGNORE_INDEX)
    y0 = rng.randint(0, x.shape[-2] - size)
    x0 = rng.randint(0, x.shape[-1] - size)
    return x[:, y0:y0 + size, x0:x0 + size].contiguous(), y[y0:y0 + size, x0:x0 + size].contiguous()


class SegCrops(Dataset):
    """``dataset[(index, position)] -> (float[3, size, size], int64[size, size])``: augmented crop of record ``index``.

    An unreadable image is replaced by the next record, with a warning; many in a row stop the run.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], index: Mapping[str, int], size: int, *, seed: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, styled: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
                 styled_ratio: float = 0.5, style: Mapping[str, Any] | None = None) -> None:
        if not rows:
            raise SegDataError("no training images")
        self.records = [ImageRecord.from_row(r) for r in rows]
        self.index, self.size, self.seed, self.max_pixels = dict(index), int(size), int(seed), int(max_pixels)
        # offline augmentation: a sample of image i is one of its styled variants with probability styled_ratio
        self.styled = {int(k): [ImageRecord.from_row(r) for r in v] for k, v in (styled or {}).items()}
        self.styled_ratio = float(styled_ratio)
        self.style_spec = dict(style) if style else None  # online augmentation, built once per loader process
        self._style: Any = None

    def _online_style(self) -> Any:
        """The :class:`~nstray.augment.PartStyle` of this process (models loaded on first use, not pickled)."""
        if self._style is None:
            from nstray.augment import PartStyle

            spec = self.style_spec or {}
            plan = assets = None
            if spec.get("plan"):
                from nstray.assets import load_plan_assets
                from nstray.plan import load_plan

                plan = load_plan(spec["plan"])
                assets = load_plan_assets(plan, max_pixels=self.max_pixels)
            self._style = PartStyle(plan, p=float(spec.get("p", 0.5)), class_names=spec.get("classes"),
                                    assets=assets, seed=0)
        return self._style

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_style": None}

    def __len__(self) -> int:
        return len(self.records)

    def pick(self, record: ImageRecord, rng: random.Random) -> ImageRecord:
        """The record a sample reads: one of ``record``'s styled variants with probability ``styled_ratio``."""
        variants = self.styled.get(record.image_id)
        if variants and rng.random() < self.styled_ratio:
            return variants[rng.randrange(len(variants))]
        return record

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, position = key
        rng = random.Random(self.seed * 1_000_003 + position)
        problems = []
        for k in range(_MAX_SKIPS):
            record = self.pick(self.records[(index + k) % len(self.records)], rng)
            try:
                image, target = read_example(record, self.index, self.max_pixels)
            except (storage.StorageError, ImageDecodeError, MaskSourceError) as exc:
                problems.append(str(exc))
                log.warning("skipping unreadable training image: %s", exc)
                continue
            if self.style_spec is not None:
                style = self._online_style()
                style.generator.manual_seed(self.seed * 1_000_003 + position)  # a function of the step: exact resume
                image, target = style(image, target)
            return augment(image, target, self.size, rng)
        raise SegDataError(f"{_MAX_SKIPS} training images in a row are unreadable; e.g. {problems[0]}")
