"""COCO annotations → one record per image with its parts, and validation with reasons.

Two kinds of problems:

* whole-file (not JSON, no ``images`` list, malformed categories ...) → :class:`DatasetError`,
  one clear message; nothing else can be trusted;
* per-record (a missing or broken image, a bad polygon, an unknown category ...) →
  :class:`RecordError` rows. A record with any problem is left out of the good records
  and every problem it has is listed; the other records are unaffected.

Images are read (through ``nstray.storage``, so local paths and ``s3://`` both work)
only when ``check_files`` is set, in a thread pool, and only after the ``file_name``
has been checked not to escape the images root.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nstray import masks, storage
from nstray.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageDecodeError, decode_image, probe_image

__all__ = [
    "BOX_TOLERANCE_PX",
    "DEFAULT_MAX_PIXELS",
    "DatasetError",
    "Part",
    "ImageRecord",
    "RecordError",
    "ValidationReport",
    "check_structure",
    "unsafe_file_name",
    "load_coco",
    "read_records",
    "list_image_files",
    "listing_records",
    "validate",
]

BOX_TOLERANCE_PX = 1.0
"""How far (pixels) a bbox may reach past the image edge: exporters round polygon extents."""


class DatasetError(ValueError):
    """The annotations file as a whole cannot be used; the message names it, the problem and the fix."""


# ---------------------------------------------------------------- records


@dataclass
class Part:
    """One annotated part of one image (a COCO annotation, with its category name resolved).

    ``segmentation`` is a list of polygons, an RLE dict (``counts`` a string or a list
    of ints), or ``None`` for a box-only part.
    """

    ann_id: int
    category_id: int
    category: str
    segmentation: list[list[float]] | dict | None
    bbox: tuple[float, float, float, float]
    iscrowd: bool = False
    area: float = 0.0

    @property
    def box_only(self) -> bool:
        """True when the part has no segmentation: its mask is its box (flagged so users know)."""
        seg = self.segmentation
        return seg is None or (isinstance(seg, (list, tuple)) and len(seg) == 0)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (RLE ``counts`` bytes become str)."""
        seg = self.segmentation
        if isinstance(seg, dict):
            counts = seg.get("counts")
            seg = {"size": list(seg.get("size", [])), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
        return {
            "ann_id": self.ann_id,
            "category_id": self.category_id,
            "category": self.category,
            "segmentation": seg,
            "bbox": list(self.bbox),
            "iscrowd": bool(self.iscrowd),
            "area": self.area,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Part:
        seg = d.get("segmentation")
        if isinstance(seg, Mapping):
            seg = dict(seg)
        return cls(
            ann_id=int(d["ann_id"]),
            category_id=int(d["category_id"]),
            category=str(d["category"]),
            segmentation=seg,
            bbox=tuple(float(v) for v in d["bbox"]),  # type: ignore[arg-type]
            iscrowd=bool(d.get("iscrowd", False)),
            area=float(d.get("area", 0.0)),
        )


@dataclass
class ImageRecord:
    """One image and its parts. ``uri`` is where its bytes are (images root + ``file_name``).

    ``width``/``height`` 0: not known until the image is decoded (a record of an image listing,
    :func:`listing_records`)."""

    image_id: int
    file_name: str
    width: int
    height: int
    parts: list[Part] = field(default_factory=list)
    uri: str = ""

    def to_row(self) -> dict:
        """A flat, Parquet-friendly row; ``parts`` is a JSON string (lossless), the rest are scalars.

        ``num_parts``, ``box_only_parts`` and ``categories`` are derived, for filtering
        without parsing ``parts``; :meth:`from_row` ignores them.
        """
        return {
            "image_id": int(self.image_id),
            "file_name": self.file_name,
            "uri": self.uri,
            "width": int(self.width),
            "height": int(self.height),
            "num_parts": len(self.parts),
            "box_only_parts": sum(p.box_only for p in self.parts),
            "categories": sorted({p.category for p in self.parts}),
            "parts": json.dumps([p.to_dict() for p in self.parts], separators=(",", ":"), allow_nan=False),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ImageRecord:
        """Inverse of :meth:`to_row` (accepts numpy scalars, as Ray Data rows hold)."""
        parts = row["parts"]
        if isinstance(parts, (str, bytes)):
            parts = json.loads(parts)
        return cls(
            image_id=int(row["image_id"]),
            file_name=str(row["file_name"]),
            width=int(row["width"]),
            height=int(row["height"]),
            parts=[Part.from_dict(p) for p in parts],
            uri=str(row.get("uri") or ""),
        )


@dataclass(frozen=True)
class RecordError:
    """One problem of one record: which image (id may be ``None`` when it has none), what is wrong, how to fix it."""

    image_id: int | None
    file_name: str
    problem: str
    fix: str

    def to_dict(self) -> dict:
        return {"image_id": self.image_id, "file_name": self.file_name, "problem": self.problem, "fix": self.fix}

    def __str__(self) -> str:
        return f"image {self.image_id} ({self.file_name or '-'}): {self.problem}; fix: {self.fix}"


@dataclass
class ValidationReport:
    """Good records, every problem found, and counts (images, annotations, usable, bad, parts ...)."""

    records: list[ImageRecord]
    errors: list[RecordError]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.errors

    def bad_records(self) -> list[dict]:
        """Problems grouped per record, in the order found: ``{image_id, file_name, problems: [{problem, fix}]}``."""
        grouped: dict[tuple, dict] = {}
        for err in self.errors:
            key = (err.image_id, err.file_name)
            entry = grouped.setdefault(key, {"image_id": err.image_id, "file_name": err.file_name, "problems": []})
            entry["problems"].append({"problem": err.problem, "fix": err.fix})
        return list(grouped.values())

    def to_dict(self) -> dict:
        return {"ok": self.ok, "counts": dict(self.counts), "bad_records": self.bad_records()}


# ---------------------------------------------------------------- whole file


def _fail(source: str, what: str, fix: str) -> DatasetError:
    return DatasetError(f"{source}: {what}; fix: {fix}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_structure(coco: Any, source: str = "<annotations>") -> dict[int, str]:
    """Check the whole-file shape of a COCO dict; return ``{category_id: name}``. Raises :class:`DatasetError`."""
    if not isinstance(coco, dict):
        raise _fail(source, f"the top level is a JSON {type(coco).__name__}, not an object",
                    "a COCO file is an object with 'images', 'annotations' and 'categories' lists")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            extra = " (use an empty list if the images have no parts)" if key == "annotations" else ""
            raise _fail(source, f"no {key!r} list", f"add the {key!r} list of COCO{extra}; is this a COCO annotations file?")
        if not isinstance(coco[key], list):
            raise _fail(source, f"{key!r} is a {type(coco[key]).__name__}, not a list", f"make {key!r} a JSON list")
    if not coco["images"]:
        raise _fail(source, "'images' is empty: there is nothing to use", "point at the annotations of a non-empty dataset")
    cats: dict[int, str] = {}
    for i, cat in enumerate(coco["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise _fail(source, f"categories[{i}] = {str(cat)[:80]} is not an object with an integer 'id' and a string 'name'",
                        "fix that category entry")
        if cat["id"] in cats:
            raise _fail(source, f"category id {cat['id']} is defined twice ({cats[cat['id']]!r} and {cat['name']!r})",
                        "give every category a unique id")
        cats[cat["id"]] = cat["name"]
    ids_of: dict[str, list[int]] = {}
    for cid, name in cats.items():
        ids_of.setdefault(name, []).append(cid)
    twice = {name: ids for name, ids in ids_of.items() if len(ids) > 1}
    if twice:  # the plan styles parts by name: two ids of one name would be merged silently
        shown = "; ".join(f"{name!r} (ids {', '.join(map(str, ids))})" for name, ids in list(twice.items())[:5])
        raise _fail(source, f"{len(twice)} category name(s) defined more than once: {shown}",
                    "rename or merge the categories (give every category a unique name, and point the "
                    "annotations of merged ones at one id)")
    return cats


def load_coco(uri: str) -> dict:
    """Read and parse a COCO JSON (local path or ``s3://``); whole-file problems raise :class:`DatasetError`."""
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise DatasetError(f"{exc}; fix: check the annotations path or URI") from None
    try:
        coco = json.loads(data)
    except json.JSONDecodeError as exc:
        raise _fail(str(uri), f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                    "re-export the annotations; the file is cut short or is not COCO JSON") from None
    except UnicodeDecodeError as exc:
        raise _fail(str(uri), f"not text JSON ({exc.reason} at byte {exc.start})",
                    "point at the COCO .json file, not an image or archive") from None
    check_structure(coco, str(uri))
    return coco


# ---------------------------------------------------------------- per record

_DRIVE = re.compile(r"^[A-Za-z]:")
Problem = tuple[str, str]  # (problem, fix)


def unsafe_file_name(name: Any) -> str | None:
    """Why ``name`` may not be used under an images root (``None`` when safe). Never touches the file."""
    if name is None or name == "":
        return "file_name is missing or empty"
    if not isinstance(name, str):
        return f"file_name is a {type(name).__name__} ({name!r}), not a string"
    if "\x00" in name:
        return f"file_name {name!r} contains a NUL character"
    if "\\" in name:
        return f"file_name {name!r} contains a backslash (a Windows separator that can escape the image root)"
    if name.startswith("/") or _DRIVE.match(name):
        return f"file_name {name!r} is an absolute path; it must be relative to the images root"
    if "://" in name:
        return f"file_name {name!r} is a URI; it must be a path relative to the images root"
    if any(seg == ".." for seg in name.split("/")):
        return f"file_name {name!r} contains '..' and would escape the images root"
    return None


@dataclass
class _Candidate:
    index: int
    image_id: int | None
    file_name: str
    raw_name: Any
    width: int | None
    height: int | None
    parts: list[Part] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    uri: str = ""


_FIX_BOX = "recompute the bbox from the segmentation (or the real object), or drop the annotation"
_FIX_SEG = "fix the segmentation (polygons: x,y pairs of >= 3 points; RLE: the image's [height, width]) or drop the annotation"


def _check_bbox(bbox: Any, width: int | None, height: int | None, box_only: bool) -> list[Problem]:
    """Problems of a COCO ``[x, y, w, h]`` box (empty list when fine)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return [(f"bbox {str(bbox)[:60]} is not four numbers [x, y, w, h]", _FIX_BOX)]
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return [(f"bbox {list(bbox)} has a NaN or infinite value", _FIX_BOX)]
    out: list[Problem] = []
    if w < 0 or h < 0:
        out.append((f"bbox {list(bbox)} has a negative width or height", _FIX_BOX))
    elif box_only and (w == 0 or h == 0):
        out.append((f"bbox {list(bbox)} is empty and the part has no segmentation, so it has no pixels",
                    "give the part a real box or a segmentation, or drop it"))
    if x < -BOX_TOLERANCE_PX or y < -BOX_TOLERANCE_PX:
        out.append((f"bbox {list(bbox)} starts outside the image (negative x or y)",
                    "clip the box to the image, or check the annotation belongs to this image"))
    if width is not None and height is not None and (x + w > width + BOX_TOLERANCE_PX or y + h > height + BOX_TOLERANCE_PX):
        out.append((f"bbox {list(bbox)} reaches past the image edge ({width}x{height})",
                    "clip the box to the image, or check the image's declared width/height"))
    return out


def _normalize_segmentation(seg: Any) -> Any:
    """Polygons → lists of floats; RLE → {size, counts (str or list)}; empty → None. Leaves odd shapes for the checks."""
    if seg is None or (isinstance(seg, list) and len(seg) == 0):
        return None
    if isinstance(seg, list) and all(isinstance(p, list) and all(_is_number(v) for v in p) for p in seg):
        return [[float(v) for v in p] for p in seg]
    if isinstance(seg, dict):
        counts = seg.get("counts")
        if isinstance(counts, bytes):
            counts = counts.decode("ascii", errors="replace")
        return {"size": seg.get("size"), "counts": counts}
    return seg


def _parse_part(ann: dict, label: str, cats: Mapping[int, str], width: int | None, height: int | None) -> tuple[Part | None, list[Problem]]:
    """One annotation → a :class:`Part`, or the problems that stop it."""
    problems: list[Problem] = []
    ann_id = ann.get("id")
    if not _is_int(ann_id):
        problems.append((f"has no integer 'id' (got {ann_id!r})", "give every annotation a unique integer id"))
    cat_id = ann.get("category_id")
    if not _is_int(cat_id) or cat_id not in cats:
        known = sorted(cats)
        shown = ", ".join(map(str, known[:20])) + (" ..." if len(known) > 20 else "")
        problems.append((f"unknown category id {cat_id!r} (known ids: {shown or 'none'})",
                         f"add category {cat_id!r} to categories, or set category_id to a known id"))
    seg = _normalize_segmentation(ann.get("segmentation"))
    box_only = seg is None
    bbox = ann.get("bbox")
    iscrowd = ann.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # True/False compare equal to 1/0
        problems.append((f"iscrowd is {iscrowd!r}; it must be 0 or 1", "set iscrowd to 0 (polygons) or 1 (crowd RLE)"))

    rle = None
    if not box_only and width and height:
        if isinstance(seg, list) and not all(isinstance(p, list) for p in seg):
            problems.append(("segmentation is a list but not a list of polygons [[x1, y1, x2, y2, ...], ...]",
                             "wrap each polygon in its own list: [[x1, y1, x2, y2, ...]]"))
        elif isinstance(seg, list) and not all(all(_is_number(v) for v in p) for p in seg):
            problems.append(("a polygon holds a value that is not a number", _FIX_SEG))
        else:
            stub = Part(0, 0, "", seg, (0.0, 0.0, 0.0, 0.0))
            try:
                rle = masks.part_rle(stub, height, width)
            except masks.MaskError as exc:
                problems.append((f"segmentation: {exc}", _FIX_SEG))
    if bbox is None and not box_only and rle is not None:
        from pycocotools import mask as mask_utils

        bbox = [float(v) for v in mask_utils.toBbox(rle)]  # COCO requires bbox; derive it when only a mask is given
    if bbox is None:
        if box_only:
            problems.append(("has neither a bbox nor a segmentation", "add the part's bbox [x, y, w, h] or its polygons"))
    else:
        problems.extend(_check_bbox(bbox, width, height, box_only))

    if problems:
        return None, [(f"{label} {p}", f) for p, f in problems]

    area = ann.get("area")
    if not (_is_number(area) and math.isfinite(area) and area >= 0):
        from pycocotools import mask as mask_utils

        area = float(mask_utils.area(rle)) if rle is not None else float(bbox[2]) * float(bbox[3])
    part = Part(
        ann_id=int(ann_id),
        category_id=int(cat_id),
        category=cats[cat_id],
        segmentation=seg,
        bbox=tuple(float(v) for v in bbox),  # type: ignore[arg-type]
        iscrowd=bool(iscrowd),
        area=float(area),
    )
    return part, []


def _check_file(uri: str, file_name: str, width: int | None, height: int | None, max_pixels: int, images_root: str) -> list[Problem]:
    """Read one image and report every problem: unreadable, not an image, too large, size mismatch, truncated."""
    try:
        data = storage.read_bytes(uri, within=None if storage.is_s3(images_root) else images_root)
    except storage.StorageError as exc:
        return [(f"image file cannot be read ({exc})",
                 f"check that --images ({images_root}) is the folder file_name is relative to, or fix file_name")]
    try:
        info = probe_image(data, file_name)
    except ImageDecodeError as exc:
        return [(exc.reason, exc.fix)]
    if info.pixels > max_pixels:
        return [(f"the image is {info.width}x{info.height} = {info.pixels:,} pixels, above the limit of {max_pixels:,} (not decoded)",
                 "downscale the image, or raise --max-pixels if it is genuine")]
    problems: list[Problem] = []
    if width is not None and height is not None and (info.width, info.height) != (width, height):
        if (info.height, info.width) == (width, height) and info.orientation_swaps_axes:
            fix = (f"the file has EXIF orientation {info.orientation}: nstray (like pycocotools) uses the stored pixels, "
                   "so re-save the image with the rotation applied (PIL ImageOps.exif_transpose) or annotate the stored pixels")
        else:
            fix = "set width/height in the images entry to the file's size, and check the annotations were made on this file"
        problems.append((f"declared size {width}x{height} differs from the file's {info.width}x{info.height}", fix))
    try:
        decode_image(data, name=file_name, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        problems.append((exc.reason, exc.fix))
    return problems


def _within(path: str, real_root: str) -> bool:
    """Whether ``path``'s real path (symlinks resolved) is under ``real_root`` (itself a real path)."""
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def read_records(
    coco: dict,
    images_root: str,
    *,
    check_files: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 8,
    source: str = "<annotations>",
) -> tuple[list[ImageRecord], list[RecordError]]:
    """COCO dict → good records (in ``images`` order) and every per-record problem.

    ``images_root`` is a local folder or ``s3://`` prefix that ``file_name`` is relative to.
    With ``check_files`` each image is read and decoded (in ``workers`` threads; S3 clients pool 10 connections).
    """
    cats = check_structure(coco, source)
    if not storage.is_s3(images_root):  # absolute, so the URIs in an index work from any working directory
        images_root = os.path.abspath(storage.parse(images_root).path or ".")
    errors: list[RecordError] = []
    cands: list[_Candidate] = []

    for i, entry in enumerate(coco["images"]):
        if not isinstance(entry, dict):
            errors.append(RecordError(None, "", f"images[{i}] is not an object", "make every images entry an object with id, file_name, width, height"))
            continue
        raw_name = entry.get("file_name")
        cand = _Candidate(i, None, raw_name if isinstance(raw_name, str) else "", raw_name, None, None)
        if _is_int(entry.get("id")):
            cand.image_id = entry["id"]
        else:
            cand.problems.append((f"images[{i}] has no integer id (got {entry.get('id')!r})", "give every image a unique integer id"))
        for key in ("width", "height"):
            v = entry.get(key)
            if _is_int(v) and v > 0:
                setattr(cand, key, v)
            else:
                cand.problems.append((f"declared {key} is {v!r}, not a positive integer", f"set {key} to the image's {key} in pixels"))
        cands.append(cand)

    files_by_id: dict[int, list[str]] = {}
    for cand in cands:
        if cand.image_id is not None:
            files_by_id.setdefault(cand.image_id, []).append(cand.file_name)
    by_id: dict[int, _Candidate] = {}
    for cand in cands:
        if cand.image_id is None:
            continue
        files = files_by_id[cand.image_id]
        if len(files) > 1:
            shown = ", ".join(files[:5]) + (" ..." if len(files) > 5 else "")
            cand.problems.append((f"image id {cand.image_id} is used by {len(files)} images entries (files: {shown})",
                                  "give every image a unique id (annotations cannot tell which image they belong to)"))
        by_id.setdefault(cand.image_id, cand)

    for j, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            errors.append(RecordError(None, "", f"annotations[{j}] is not an object", "make every annotation an object"))
            continue
        label = f"annotation {ann['id']}" if _is_int(ann.get("id")) else f"annotations[{j}]"
        img_id = ann.get("image_id")
        if not _is_int(img_id):
            errors.append(RecordError(None, "", f"{label} has no integer image_id (got {img_id!r})", "set image_id to the id of its image"))
            continue
        cand = by_id.get(img_id)
        if cand is None:
            errors.append(RecordError(img_id, "", f"{label} refers to image id {img_id}, which is not in images",
                                      "add that image to images, or fix or remove the annotation"))
            continue
        part, problems = _parse_part(ann, label, cats, cand.width, cand.height)
        if part is not None:
            cand.parts.append(part)
        cand.problems.extend(problems)

    real_root = None if storage.is_s3(images_root) else os.path.realpath(images_root)
    for cand in cands:
        why = unsafe_file_name(cand.raw_name)
        if why:
            cand.problems.append((why, "make file_name a plain relative path under the images root (forward slashes, no '..')"))
        elif real_root is not None and not _within(storage.join(images_root, cand.file_name), real_root):
            real = os.path.realpath(storage.join(images_root, cand.file_name))
            cand.problems.append((f"file_name {cand.file_name!r} resolves to {real}, outside the images root {real_root} "
                                  "(a symlink pointing out of it); it is not read",
                                  "copy the file into the images root instead of linking to it, or fix file_name"))
        else:
            cand.uri = storage.join(images_root, cand.file_name)
            if not check_files and cand.width and cand.height and cand.width * cand.height > max_pixels:
                cand.problems.append((f"declared size {cand.width}x{cand.height} is above the pixel limit of {max_pixels:,}",
                                      "downscale the image, or raise --max-pixels if it is genuine"))

    if check_files:
        todo = [c for c in cands if c.uri]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool:
                results = pool.map(lambda c: _check_file(c.uri, c.file_name, c.width, c.height, max_pixels, images_root), todo)
                for cand, problems in zip(todo, results):
                    cand.problems.extend(problems)

    records: list[ImageRecord] = []
    cand_errors: list[RecordError] = []
    for cand in cands:
        if cand.problems:
            cand_errors.extend(RecordError(cand.image_id, cand.file_name, p, f) for p, f in cand.problems)
        else:
            records.append(ImageRecord(cand.image_id, cand.file_name, cand.width, cand.height, cand.parts, cand.uri))  # type: ignore[arg-type]
    return records, cand_errors + errors


def validate(
    annotations_uri: str,
    images_root: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_files: bool = True,
    workers: int = 8,
) -> ValidationReport:
    """Load, check and read a COCO dataset; whole-file problems raise :class:`DatasetError`."""
    coco = load_coco(annotations_uri)
    if check_files and not storage.is_s3(images_root):
        if not os.path.isdir(storage.parse(images_root).path):
            raise _fail(str(images_root), "the images folder does not exist", "pass --images the folder that file_name values are relative to")
    records, errors = read_records(coco, images_root, check_files=check_files, max_pixels=max_pixels,
                                   workers=workers, source=str(annotations_uri))
    bad = {(e.image_id, e.file_name) for e in errors}
    counts = {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": len(coco["categories"]),
        "usable_images": len(records),
        "bad_records": len(bad),
        "problems": len(errors),
        "parts": sum(len(r.parts) for r in records),
        "box_only_parts": sum(p.box_only for r in records for p in r.parts),
    }
    return ValidationReport(records=records, errors=errors, counts=counts)


# ---------------------------------------------------------------- records of an image listing


def list_image_files(root: str) -> list[str]:
    """Sorted URIs of every image file (:data:`~nstray.data.images.IMAGE_EXTENSIONS`) below the folder or
    ``s3://`` prefix ``root``; none, or an unreadable root, raises :class:`DatasetError`."""
    try:
        uris = sorted(u for u in storage.list_files(root) if u.lower().endswith(IMAGE_EXTENSIONS))
    except storage.StorageError as exc:
        raise DatasetError(f"{exc}; fix: check the images folder or prefix") from None
    if not uris:
        raise _fail(str(root), f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found",
                    "give a folder or s3:// prefix of images, or a COCO annotations .json")
    return uris


def listing_records(root: str, uris: list[str] | None = None) -> list[ImageRecord]:
    """One record per image file under ``root`` (``uris``, default :func:`list_image_files`): no parts, size
    unknown (0) until decoded, ``file_name`` relative to ``root``, ids 1, 2, ... in sorted order (the ids
    ``nstray segment`` gives). Sits where :func:`read_records` does for an image folder without annotations."""
    base = str(root).rstrip("/") + "/"
    if not storage.is_s3(root):
        base = os.path.abspath(storage.parse(root).path).rstrip(os.sep) + os.sep
    out = []
    for i, uri in enumerate(sorted(uris if uris is not None else list_image_files(root))):
        path = uri if storage.is_s3(uri) else os.path.abspath(storage.parse(uri).path)
        rel = path[len(base):] if path.startswith(base) else path.rsplit("/", 1)[-1]
        out.append(ImageRecord(i + 1, rel.replace(os.sep, "/"), 0, 0, [], uri))
    return out
