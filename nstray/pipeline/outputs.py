"""What a dataset job leaves under its output URI, besides the images.

- ``manifest/part-<run>-<seq>.parquet``: one row per output attempt (image, variant, key, styles per
  part, models, seed, status, seconds …). Written in parts while the job streams, so an interrupted
  run keeps everything it finished; the latest row per (image, variant) wins when read back.
- ``errors.parquet``: one row per failed record of the latest run (image id, file, stage, reason, fix).
- ``annotations.json``: COCO of the styled set: one image per output, the source's annotations copied
  onto each, the masks the job made (predicted by the segmenter, or filled into boxes) as RLE annotations
  with ``predicted: true``, ``score`` and ``mask_source``, and ``nstray`` provenance (source image,
  variant, styles, mask source) per image.
- ``contact_sheet.png``: a few results, original | variants.
- ``_state.json``: digests of what the three files above were built from, so a rerun that changes
  nothing rewrites nothing.

Storage goes through :mod:`nstray.storage` (atomic writes), so all of this works on local folders and S3.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nstray import storage

__all__ = [
    "MANIFEST_DIR",
    "ERRORS_FILE",
    "ANNOTATIONS_FILE",
    "CONTACT_SHEET_FILE",
    "STATE_FILE",
    "manifest_schema",
    "errors_schema",
    "new_run_id",
    "read_manifest",
    "ManifestWriter",
    "compact_manifest",
    "output_sizes",
    "check_outputs",
    "stale_outputs",
    "error_rows",
    "write_errors",
    "build_coco",
    "render_contact_sheet",
    "read_state",
    "write_state",
    "digest",
]

log = logging.getLogger(__name__)

MANIFEST_DIR = "manifest"
ERRORS_FILE = "errors.parquet"
ANNOTATIONS_FILE = "annotations.json"
CONTACT_SHEET_FILE = "contact_sheet.png"
STATE_FILE = "_state.json"


def manifest_schema():
    """Arrow schema of a manifest part file (one row per output attempt)."""
    import pyarrow as pa

    return pa.schema([
        ("image_id", pa.int64()),
        ("variant", pa.int64()),
        ("source_file", pa.string()),
        ("output_key", pa.string()),  # relative to the output root
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("styles", pa.string()),  # JSON {category: style name}
        ("models", pa.string()),  # JSON [{name, uri, sha256}]
        # JSON {node, actor, pid, device, cuda_visible_devices, restarted} (stages.worker_info), + gpu_util on GPUs
        ("worker", pa.string()),
        ("mask_source", pa.string()),  # where the image's masks came from: coco, segmenter, grabcut, box, coco+grabcut ...
        ("predicted", pa.string()),  # JSON list of the masks the job made (PartLabels.predicted), for annotations.json
        ("seed", pa.int64()),
        ("fingerprint", pa.string()),  # hash of plan + seed + format (+ segmenter) (JobConfig.fingerprint)
        ("status", pa.string()),  # done | failed
        ("stage", pa.string()),  # where it failed: read, decode, masks, stylize, encode, write
        ("error", pa.string()),
        ("size", pa.int64()),  # bytes of the written object (resume checks it against a listing)
        ("sha256", pa.string()),  # of the written object (``nstray run --verify`` re-reads and checks it)
        ("seconds", pa.float64()),
        ("prepare_s", pa.float64()),
        ("stylize_s", pa.float64()),
        ("write_s", pa.float64()),
        ("finished_at", pa.string()),
        ("run_id", pa.string()),
    ])


def errors_schema():
    """Arrow schema of ``errors.parquet`` (one row per failed record)."""
    import pyarrow as pa

    return pa.schema([
        ("image_id", pa.int64()),  # null when the problem has no image (e.g. an annotation without image_id)
        ("file_name", pa.string()),
        ("stage", pa.string()),  # coco (the annotations), read, decode, masks, stylize, encode, write
        ("reason", pa.string()),
        ("fix", pa.string()),
    ])


def new_run_id() -> str:
    """A run id that sorts by start time (so later manifest parts override earlier ones)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def digest(obj: Any) -> str:
    """A stable hash of JSON-able data."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _read_parquet(uri: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


# ---------------------------------------------------------------- manifest


def read_manifest(output: str, schema: Any = None, key: Sequence[str] = ("image_id", "variant")):
    """The latest manifest row per ``key`` (an image job's: (image_id, variant)) across every part file,
    as an Arrow table of ``schema`` (default :func:`manifest_schema`; the video job passes its own).

    Part files are read in name order (run ids sort by time), later rows override earlier ones.
    An unreadable part is skipped with a warning: its outputs are simply redone.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = schema if schema is not None else manifest_schema()
    tables = []
    for uri in sorted(storage.list_files(storage.join(output, MANIFEST_DIR))):
        if not uri.endswith(".parquet"):
            continue
        try:
            t = _read_parquet(uri)
            for name in schema.names:  # parts written before a column existed
                if name not in t.column_names:
                    t = t.append_column(name, pa.nulls(len(t), schema.field(name).type))
            tables.append(t.select(schema.names).cast(schema))
        except Exception as exc:  # noqa: BLE001 - a damaged part only means redoing its outputs
            log.warning("skipping unreadable manifest part %s (%s); its outputs will be redone", uri, exc)
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    table = table.append_column("_row", pa.array(np.arange(len(table), dtype=np.int64)))
    last = table.group_by(list(key)).aggregate([("_row", "max")])
    keep = pc.sort_indices(last["_row_max"])
    rows = pc.take(last["_row_max"], keep)
    return table.take(rows).drop_columns(["_row"])


def compact_manifest(output: str, run_id: str, max_parts: int = 16, *, force: bool = False, schema: Any = None,
                     key: Sequence[str] = ("image_id", "variant")) -> str | None:
    """Merge the manifest into one part when it has more than ``max_parts`` part files, or with ``force``
    (rows of this run superseded older rows: the manifest keeps one row per output); returns the new part.

    The merged part holds the latest row per output and is named to sort after every part it replaces,
    so a crash between writing it and deleting the old parts leaves a manifest that reads the same.
    """
    folder = storage.join(output, MANIFEST_DIR)
    parts = sorted(u for u in storage.list_files(folder) if u.endswith(".parquet"))
    if len(parts) <= max_parts and not (force and len(parts) > 1):
        return None
    merged = storage.join(folder, f"part-{run_id}-zz-compacted.parquet")
    storage.write_bytes(merged, _parquet_bytes(read_manifest(output, schema, key)))
    for uri in parts:
        if uri != merged:
            storage.delete(uri)
    return merged


@dataclass
class ManifestWriter:
    """Collects manifest rows streamed back from the job and writes them as Parquet part files.

    A part is flushed every ``flush_rows`` rows or ``flush_seconds`` seconds, so an interrupted run
    keeps what it finished. A failure identical to the one already recorded for that output (same
    stage and reason) is not written again: a rerun that fails the same way writes nothing.
    ``schema`` and ``key``: the manifest's columns and the columns naming one output (default: the image
    job's :func:`manifest_schema`, (image_id, variant)).
    """

    output: str
    run_id: str
    previous: dict[tuple[int, int], tuple[str, str, str]] = field(default_factory=dict)
    flush_rows: int = 500
    flush_seconds: float = 30.0
    done: int = 0
    failed: int = 0
    rows: list[dict] = field(default_factory=list)  # every row of this run, ``keep`` columns only
    keep: tuple[str, ...] | None = None
    parts: list[str] = field(default_factory=list)
    superseded: int = 0  # rows written for outputs that already had a row (compaction keeps one per output)
    schema: Any = None
    key: tuple[str, ...] = ("image_id", "variant")
    _buffer: list[dict] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    def add(self, rows: Iterable[dict]) -> None:
        for row in rows:
            row = dict(row, run_id=self.run_id)
            if row.get("size") is not None and int(row["size"]) < 0:  # a failed row: nothing was written
                row["size"], row["sha256"] = None, None
            self.rows.append(row if self.keep is None else {k: row[k] for k in self.keep})
            if row["status"] == "done":
                self.done += 1
            else:
                self.failed += 1
            key = tuple(row[k] for k in self.key)
            if row["status"] != "done" and self.previous.get(key) == (row["status"], row["stage"], row["error"]):
                continue
            self.superseded += key in self.previous
            self._buffer.append(row)
        if len(self._buffer) >= self.flush_rows or (self._buffer and time.monotonic() - self._last_flush > self.flush_seconds):
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        """Write the buffered rows as a new part. A periodic flush (``final=False``) that cannot reach the
        storage keeps the rows for the next one (the job goes on); the final flush raises."""
        import pyarrow as pa

        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema if self.schema is not None else manifest_schema())
        uri = storage.join(self.output, MANIFEST_DIR, f"part-{self.run_id}-{len(self.parts):05d}.parquet")
        try:
            storage.write_bytes(uri, _parquet_bytes(table))
        except storage.StorageError as exc:
            if final:
                raise
            log.warning("could not record %d finished output(s) yet (%s); retrying at the next flush",
                        len(self._buffer), exc)
            return
        self.parts.append(uri)
        self._buffer = []


# ---------------------------------------------------------------- verified resume


def output_sizes(output: str, folder: str = "images") -> dict[str, int]:
    """``{key relative to the output root: size}`` of every object under ``<output>/<folder>``, in one listing."""
    root = storage.join(output, folder)
    sizes = storage.list_sizes(root)
    if storage.is_s3(output):
        base = output.rstrip("/") + "/"
        return {uri[len(base):]: n for uri, n in sizes.items() if uri.startswith(base)}
    import os

    base = os.path.abspath(storage.parse(output).path)
    return {os.path.relpath(path, base).replace(os.sep, "/"): n for path, n in sizes.items()}


def check_outputs(output: str, rows: dict[tuple[int, int], dict], sizes: dict[str, int], *,
                  deep: bool = False, workers: int = 8) -> dict[tuple[int, int], str]:
    """Which outputs that the manifest records as done are not there as recorded: ``{(image, variant): why}``.

    ``sizes`` is :func:`output_sizes` (one listing): a missing object or one of another size than recorded
    is bad. With ``deep`` every object is also read back and its SHA-256 compared with the manifest's.
    Rows written before sizes were recorded are checked for existence only.
    """
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    bad: dict[tuple[int, int], str] = {}
    present: list[tuple[tuple[int, int], dict]] = []
    for key, row in rows.items():
        size = sizes.get(str(row["output_key"]))
        if size is None:
            bad[key] = "missing"
        elif row.get("size") is not None and int(row["size"]) != size:
            bad[key] = f"{size} bytes, {int(row['size'])} recorded"
        else:
            present.append((key, row))
    if deep:
        def check(item: tuple[tuple[int, int], dict]) -> str | None:
            key, row = item
            if not row.get("sha256"):
                return None
            try:
                data = storage.read_bytes(storage.join(output, str(row["output_key"])))
            except storage.StorageError as exc:
                return f"unreadable ({exc})"
            return None if hashlib.sha256(data).hexdigest() == row["sha256"] else "checksum differs from the manifest's"

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for (key, _), why in zip(present, pool.map(check, present)):
                if why:
                    bad[key] = why
    return bad


_OUTPUT_KEY = re.compile(r"^images/(\d+)/(\d+)\.([A-Za-z0-9]+)$")


def stale_outputs(sizes: dict[str, int], done: dict[tuple[int, int], dict]) -> tuple[list[str], list[str]]:
    """Objects under ``images/`` that are not the current output of their (image, variant): ``(superseded,
    other)``. *Superseded*: another file of an output that is done under a new key (the format changed, e.g.
    ``0.png`` left behind by ``0.jpg``); safe to remove. *Other*: outputs of variants or images the job no
    longer makes, or files nstray did not write; only reported."""
    current = {str(r["output_key"]) for r in done.values()}
    superseded, other = [], []
    for key in sorted(sizes):
        if key in current:
            continue
        m = _OUTPUT_KEY.match(key)
        if m and (int(m.group(1)), int(m.group(2))) in done:
            superseded.append(key)
        else:
            other.append(key)
    return superseded, other


# ---------------------------------------------------------------- errors


_DEFAULT_FIX = {
    "read": "check that input.images is the folder or prefix file_name is relative to, and that the file exists "
            "and is readable with these credentials",
    "decode": "re-export the image as RGB PNG or JPEG",
    "masks": "fix the annotation's segmentation (polygons of >= 3 points inside the image, or RLE of the image size)",
    "segment": "check the image and segment.model; rerun the job to retry (out-of-memory: lower segment.size or "
               "resources.batch_size)",
    "stylize": "check the image and the plan; rerun the job to retry (out-of-memory: lower resources.batch_size)",
    "encode": "rerun the job to retry",
    "write": "check that the output location is writable (permissions, free space, bucket) and rerun the job",
}


def error_rows(record_errors: Sequence[Any], failed: Sequence[dict]) -> list[dict]:
    """One row per failed record: COCO problems (``RecordError``) grouped per record, then job failures.

    ``failed`` are manifest rows with status ``failed``; the variants of one image failing the same way
    make one row.
    """
    grouped: dict[tuple, dict] = {}
    for e in record_errors:
        key = ("coco", e.image_id, e.file_name)
        row = grouped.setdefault(key, {"image_id": e.image_id, "file_name": e.file_name, "stage": "coco",
                                       "reason": [], "fix": []})
        if e.problem not in row["reason"]:
            row["reason"].append(e.problem)
        if e.fix not in row["fix"]:
            row["fix"].append(e.fix)
    for r in failed:
        reason, _, fix = str(r["error"]).partition("; fix: ")
        key = ("job", int(r["image_id"]), r["source_file"])
        row = grouped.setdefault(key, {"image_id": int(r["image_id"]), "file_name": r["source_file"],
                                       "stage": r["stage"], "reason": [], "fix": []})
        if reason not in row["reason"]:
            row["reason"].append(reason)
        fix = fix or _DEFAULT_FIX.get(str(r["stage"]), "rerun the job to retry")
        if fix not in row["fix"]:
            row["fix"].append(fix)
    rows = [dict(r, reason="; ".join(r["reason"]), fix="; ".join(r["fix"])) for r in grouped.values()]
    rows.sort(key=lambda r: (r["image_id"] is not None, r["image_id"] or 0, r["file_name"], r["stage"], r["reason"]))
    return rows


def write_errors(output: str, rows: list[dict]) -> str:
    """Write ``errors.parquet`` (always, even empty, so tools can rely on it); returns its URI."""
    import pyarrow as pa

    uri = storage.join(output, ERRORS_FILE)
    storage.write_bytes(uri, _parquet_bytes(pa.Table.from_pylist(rows, schema=errors_schema())))
    return uri


# ---------------------------------------------------------------- COCO of the styled set


def build_coco(source: dict, done: Sequence[dict], *, description: str = "") -> dict:
    """The styled set as COCO: one image per done output (sorted by source id, variant), the source
    image's annotations copied onto it with new ids, ``file_name`` = the output key (relative to the
    output root) and ``nstray`` provenance (source image id and file, variant, styles, mask source).

    The masks a row's ``predicted`` lists (JSON) join them: a box-only annotation gets the mask made
    inside its box, and a whole-image prediction becomes a new annotation of the category of that name
    (none when ``source`` has no such category); both carry ``predicted: true`` and ``mask_source``."""
    images_by_id = {img["id"]: img for img in source.get("images", []) if isinstance(img, dict) and "id" in img}
    anns_by_image: dict[Any, list[dict]] = {}
    for ann in source.get("annotations", []):
        if isinstance(ann, dict):
            anns_by_image.setdefault(ann.get("image_id"), []).append(ann)

    cat_ids = {c["name"]: c["id"] for c in source.get("categories", []) if isinstance(c, dict)}
    images: list[dict] = []
    annotations: list[dict] = []
    for row in sorted(done, key=lambda r: (int(r["image_id"]), int(r["variant"]))):
        src = images_by_id.get(int(row["image_id"]))
        if src is None:
            continue
        new_id = len(images) + 1
        entry = {k: v for k, v in src.items() if k not in ("id", "file_name", "width", "height", "nstray")}
        entry.update({
            "id": new_id,
            "file_name": row["output_key"],
            "width": int(row["width"]),
            "height": int(row["height"]),
            "nstray": {
                "source_image_id": int(row["image_id"]),
                "source_file": row["source_file"],
                "variant": int(row["variant"]),
                "styles": json.loads(row["styles"]) if isinstance(row["styles"], str) else row["styles"],
                "seed": int(row["seed"]),
                **({"mask_source": row["mask_source"]} if row.get("mask_source") else {}),  # absent in old manifests
            },
        })
        images.append(entry)
        predicted = json.loads(row.get("predicted") or "[]")
        filled = {int(p["ann_id"]): p for p in predicted if "ann_id" in p}
        for ann in anns_by_image.get(int(row["image_id"]), []):
            fill = filled.get(ann.get("id"))  # a box-only annotation whose mask the job made
            extra = {} if fill is None else {"segmentation": fill["segmentation"], "area": fill["area"],
                                             "predicted": True, "mask_source": fill["mask_source"],
                                             **({"score": fill["score"]} if fill.get("score") is not None else {})}
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=new_id, **extra))
        for p in predicted:  # whole-image predictions: categories matched by name
            if "category" in p and p["category"] in cat_ids:
                annotations.append({"id": len(annotations) + 1, "image_id": new_id, "category_id": cat_ids[p["category"]],
                                    "segmentation": p["segmentation"], "area": p["area"], "bbox": p["bbox"],
                                    "iscrowd": 0, "predicted": True, "score": p["score"],
                                    "mask_source": p.get("mask_source", "segmenter")})
    info = dict(source.get("info") or {}) if isinstance(source.get("info"), dict) else {}
    info["description"] = description or f"nstray styled set of {info.get('description', 'a COCO dataset')}"
    out = {"info": info, "images": images, "annotations": annotations, "categories": source.get("categories", [])}
    if "licenses" in source:
        out["licenses"] = source["licenses"]
    return out


# ---------------------------------------------------------------- contact sheet


def render_contact_sheet(rows: Sequence[tuple[str, str | np.ndarray, list[tuple[int, str | np.ndarray]]]], *,
                         thumb_height: int = 160, max_pixels: int = 50_000_000) -> bytes:
    """PNG of ``rows``: each ``(label, original, [(variant, styled), ...])`` becomes one line,
    original | variant 0 | variant 1 … scaled to ``thumb_height``; each picture an image URI or RGB pixels."""
    from PIL import Image, ImageDraw

    from nstray.data.images import decode_image

    def thumb(uri: str | np.ndarray) -> Image.Image:
        arr = uri if isinstance(uri, np.ndarray) else decode_image(storage.read_bytes(uri), name=uri,
                                                                   max_pixels=max_pixels)
        im = Image.fromarray(arr)
        w = max(1, round(im.width * thumb_height / im.height))
        return im.resize((w, thumb_height), Image.Resampling.LANCZOS)

    pad, caption = 6, 14
    lines: list[tuple[str, list[tuple[str, Image.Image]]]] = []
    for label, original, styled in rows:
        cells = [("original", thumb(original))] + [(f"variant {v}", thumb(u)) for v, u in styled]
        lines.append((label, cells))
    if not lines:
        return b""
    width = max(sum(im.width for _, im in cells) + pad * (len(cells) + 1) for _, cells in lines)
    height = len(lines) * (thumb_height + caption + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for label, cells in lines:
        x = pad
        for name, im in cells:
            draw.text((x, y), f"{label} {name}" if name == "original" else name, fill=(40, 40, 40))
            sheet.paste(im, (x, y + caption))
            x += im.width + pad
        y += thumb_height + caption + pad
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- state


def read_state(output: str) -> dict:
    """``_state.json`` (digests of the derived files), or ``{}``."""
    uri = storage.join(output, STATE_FILE)
    try:
        return json.loads(storage.read_bytes(uri))
    except (storage.StorageError, ValueError):
        return {}


def write_state(output: str, state: dict) -> None:
    storage.write_bytes(storage.join(output, STATE_FILE), json.dumps(state, sort_keys=True, indent=1).encode())
