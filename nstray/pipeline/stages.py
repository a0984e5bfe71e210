"""The stages of the dataset job, as Ray Data batch functions and one callable actor class.

Every stage takes and returns a batch (``dict[str, np.ndarray]``, one entry per column) and never
raises for a single record: a record that fails keeps flowing with ``stage``/``error`` set, so it
becomes a manifest row and an ``errors.parquet`` row while the rest of its batch goes on.

- :func:`prepare_batch` (CPU task): read the image bytes, decode, build the part label map (COCO parts;
  box-only parts through GrabCut unless ``boxes: box``); a record that needs the segmenter is only read.
- :class:`Stylizer` (actor; models loaded once in ``__init__``): with ``segment.model``, first label the
  records that need it (:func:`segment_rows`, the segmenter mask source, batched), then style every
  pending variant.
- :func:`encode_write_batch` (CPU task): encode PNG/JPEG and write it under its deterministic key
  (``images/<image_id>/<variant>.<ext>``, atomic), returning the manifest rows.

Images of different sizes flow as raw bytes + shape columns (never stacked), so a batch may hold any
mix of sizes. With ``fused=True`` the actor runs all three stages itself: no pixels cross the
object store, which is what a CPU-only job wants.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "StageOptions",
    "output_key",
    "encode_image",
    "prepare_batch",
    "segment_rows",
    "stylize_rows",
    "encode_write_batch",
    "model_ids",
    "worker_info",
    "WorkerTag",
    "Stylizer",
]

Batch = dict[str, np.ndarray]

# networks (weights registry names) each style kind runs on: recorded per output in the manifest
_KIND_WEIGHTS: dict[str, tuple[str, ...]] = {
    "multistyle": ("multistyle26",),
    "arbitrary": ("arbitrary_predict", "arbitrary_transform"),
}


@dataclass(frozen=True)
class StageOptions:
    """What every stage needs to know about the job (small, picklable; shipped to every task/actor).

    ``variants``: the variants to make for an image unless ``exceptions`` lists others for its id
    (a resumed job redoes only what is not done yet).
    """

    output: str
    ext: str = "png"
    quality: int = 95
    max_pixels: int = 50_000_000
    overlaps: str | tuple[str, ...] = "smaller-on-top"
    seed: int = 0
    fingerprint: str = ""
    variants: tuple[int, ...] = (0,)
    exceptions: dict[int, tuple[int, ...]] = field(default_factory=dict)
    device_codec: bool = False  # JPEGs are decoded/encoded by the stylizer on its device (nvjpeg on a GPU)
    images_root: str | None = None  # local: a file whose real path is outside it is never read (symlinks)
    boxes: str = "auto"  # box-only parts: auto | segmenter | grabcut | box (JobConfig.segment.boxes)
    segment_model: str | None = None  # the segmenter the actors load (segment.model), if any
    segment_size: int = 520
    segment_id: tuple[tuple[str, str], ...] = ()  # its identity for the manifest's models column

    def needs_model(self, parts: Sequence[Any]) -> bool:
        """Whether a record with ``parts`` is labeled by the segmenter in the actor (no parts at all, or
        box-only parts the segmenter fills)."""
        from nstray.data.masksource import needs_segmenter

        return bool(self.segment_model) and needs_segmenter(parts, self.boxes)

    def pending(self, image_id: int) -> tuple[int, ...]:
        """The variants still to make for ``image_id``."""
        return self.exceptions.get(int(image_id), self.variants)


def output_key(image_id: int, variant: int, ext: str) -> str:
    """The output's key relative to the output root: ``images/<image_id>/<variant>.<ext>``."""
    return f"images/{int(image_id)}/{int(variant)}.{ext}"


def encode_image(image: np.ndarray, ext: str, quality: int = 95) -> bytes:
    """``uint8[H,W,3]`` → PNG (lossless) or JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(image, "RGB")
    if ext == "png":
        im.save(buf, format="PNG")
    elif ext in ("jpg", "jpeg"):
        im.save(buf, format="JPEG", quality=int(quality))
    else:
        raise ValueError(f"unsupported output format {ext!r}; valid: png, jpg")
    return buf.getvalue()


def model_ids(plan: Any) -> list[dict]:
    """Identity (name, uri, sha256) of every weights file the plan runs on: the builtin networks of its
    style kinds and each trained ``feedforward`` checkpoint it uses."""
    from nstray.weights import describe

    refs = [name for kind in sorted(plan.kinds()) for name in _KIND_WEIGHTS.get(kind, ())]
    for style in sorted(plan.used_styles()):
        spec = plan.styles[style]
        if spec.kind == "feedforward" and spec.weights not in refs:
            refs.append(spec.weights)
    return [describe(ref) for ref in refs]


def _objects(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array (numpy must not turn equal-length bytes/lists into a 2-D array)."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)  # ImageDecodeError carries a clean reason (+ fix)
    if reason:
        fix = getattr(exc, "fix", "")
        return f"{reason}; fix: {fix}" if fix else str(reason)
    return f"{type(exc).__name__}: {exc}" if not str(exc).startswith(type(exc).__name__) else str(exc)


def _labels_dtype(num_parts: int) -> np.dtype:
    """The smallest signed type that holds labels −1..num_parts−1 (label maps cross the object store)."""
    if num_parts <= np.iinfo(np.int8).max:
        return np.dtype(np.int8)
    if num_parts <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


# ---------------------------------------------------------------- stage 1: read + decode + masks

PREPARED_COLUMNS = ("image_id", "file_name", "uri", "height", "width", "pixels", "encoding", "labels",
                    "labels_dtype", "categories", "parts", "deferred", "mask_source", "predicted", "stage", "error",
                    "prepare_s")


def _check_size(image: np.ndarray, height: int, width: int) -> None:
    """Raise when the decoded pixels are not the size the annotations declare (masks would not fit)."""
    if image.shape[:2] != (height, width):
        raise ValueError(f"declared size {width}x{height} differs from the file's {image.shape[1]}x{image.shape[0]}; "
                         "fix: correct width/height in the images entry")


def _keep_jpeg(data: bytes, rec: Any, max_pixels: int) -> bool:
    """Whether a file goes to the stylizer still compressed (``opts.device_codec``): a JPEG whose header
    is sound, within the pixel limit, of its declared size and RGB/grayscale. Anything else is decoded
    here, so its errors read exactly as on the CPU path."""
    from nstray.data.images import probe_image
    from nstray.data.jpeg import is_jpeg

    if not is_jpeg(data):
        return False
    try:
        info = probe_image(data, rec.file_name)
    except Exception:  # noqa: BLE001 - the CPU decoder reports it properly
        return False
    return (info.width * info.height <= max_pixels and (info.width, info.height) == (rec.width, rec.height)
            and info.mode in ("RGB", "L"))


def prepare_batch(batch: Batch, opts: StageOptions) -> Batch:
    """Index rows → decoded pixels + label maps (bytes columns); a failing record carries its stage and reason."""
    from nstray import storage
    from nstray.data.coco import ImageRecord
    from nstray.data.images import decode_image
    from nstray.data.masksource import CocoParts

    n = len(batch["image_id"])
    cols: dict[str, list] = {c: [] for c in PREPARED_COLUMNS}
    source = CocoParts(opts.overlaps if isinstance(opts.overlaps, str) else list(opts.overlaps))
    for i in range(n):
        t0 = time.perf_counter()
        row = {k: batch[k][i] for k in ("image_id", "file_name", "uri", "width", "height", "parts")}
        rec = ImageRecord.from_row(row)
        stage, error = "", ""
        pixels = labels = b""
        encoding = "raw"
        ldtype = "int8"
        h, w = rec.height, rec.width
        categories: list[str] = [p.category for p in rec.parts]
        deferred = opts.needs_model(rec.parts)
        grabcut = not deferred and opts.boxes != "box" and any(p.box_only for p in rec.parts)
        mask_source, predicted = "", "[]"
        try:
            stage = "read"
            data = storage.read_bytes(rec.uri, within=opts.images_root)
            stage = "decode"
            if opts.device_codec and not grabcut and _keep_jpeg(data, rec, opts.max_pixels):
                pixels, encoding = data, "jpeg"
            else:
                image = decode_image(data, name=rec.file_name, max_pixels=opts.max_pixels)
                if rec.width:
                    _check_size(image, rec.height, rec.width)
                else:  # a record of an image listing: its size is the file's
                    h, w = image.shape[:2]
                pixels = image.tobytes()
            stage = "masks"
            if not deferred:  # the pixels are checked against rec above
                pl = CocoParts(source.order, boxes="grabcut").labels(rec, image) if grabcut else source.labels_at(rec, h, w)
                dt = _labels_dtype(len(pl.categories))
                labels, ldtype = pl.label_map.astype(dt).tobytes(), dt.name
                mask_source, predicted = pl.provenance, json.dumps(pl.predicted)
            stage = ""
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the batch
            error = _reason(exc)
        cols["image_id"].append(rec.image_id)
        cols["file_name"].append(rec.file_name)
        cols["uri"].append(rec.uri)
        cols["height"].append(h)
        cols["width"].append(w)
        cols["pixels"].append(pixels)
        cols["encoding"].append(encoding)
        cols["labels"].append(labels)
        cols["labels_dtype"].append(ldtype)
        cols["categories"].append(json.dumps(categories))
        cols["parts"].append(str(batch["parts"][i]) if deferred else "[]")
        cols["deferred"].append(deferred)
        cols["mask_source"].append(mask_source)
        cols["predicted"].append(predicted)
        cols["stage"].append(stage)
        cols["error"].append(error)
        cols["prepare_s"].append(time.perf_counter() - t0)
    return {
        "image_id": np.asarray(cols["image_id"], dtype=np.int64),
        "file_name": _objects(cols["file_name"]),
        "uri": _objects(cols["uri"]),
        "height": np.asarray(cols["height"], dtype=np.int64),
        "width": np.asarray(cols["width"], dtype=np.int64),
        "pixels": _objects(cols["pixels"]),
        "encoding": _objects(cols["encoding"]),
        "labels": _objects(cols["labels"]),
        "labels_dtype": _objects(cols["labels_dtype"]),
        "categories": _objects(cols["categories"]),
        "parts": _objects(cols["parts"]),
        "deferred": np.asarray(cols["deferred"], dtype=bool),
        "mask_source": _objects(cols["mask_source"]),
        "predicted": _objects(cols["predicted"]),
        "stage": _objects(cols["stage"]),
        "error": _objects(cols["error"]),
        "prepare_s": np.asarray(cols["prepare_s"], dtype=np.float64),
    }


# ---------------------------------------------------------------- stage 1b: the segmenter (in the actor)


def segment_rows(source: Any, batch: Batch, opts: StageOptions, device: Any = "cpu") -> Batch:
    """Label the prepared rows that wait for the segmenter (``deferred``) with ``source`` (a
    :class:`~nstray.data.masksource.SegmenterParts`), all in one batched call; if that fails each row is
    retried alone, so only the culprit fails (stage ``segment``). Labeled rows leave with raw pixels."""
    from nstray.data.coco import ImageRecord

    todo = [i for i in range(len(batch["image_id"])) if bool(batch["deferred"][i]) and not str(batch["error"][i])]
    if not todo:
        return batch
    t0 = time.perf_counter()
    batch = {k: (v.copy() if k in ("pixels", "encoding", "labels", "labels_dtype", "categories", "mask_source",
                                   "predicted", "stage", "error", "prepare_s") else v) for k, v in batch.items()}
    host = _host_images({k: batch[k][todo] for k in ("image_id", "file_name", "height", "width", "pixels", "encoding",
                                                     "error")}, device)
    records, images, rows = [], [], []
    for i, image in zip(todo, host):
        if isinstance(image, BaseException):
            batch["stage"][i], batch["error"][i] = "decode", _reason(image)
            continue
        records.append(ImageRecord.from_row({k: batch[k][i] for k in ("image_id", "file_name", "uri", "width",
                                                                     "height", "parts")}))
        images.append(image)
        rows.append(i)
    try:
        results: list[Any] = source.labels_batch(records, images)
    except Exception:  # noqa: BLE001 - find the one that failed: one at a time
        _release_gpu_memory()
        results = []
        for rec, image in zip(records, images):
            try:
                results.append(source.labels(rec, image))
            except Exception as exc:  # noqa: BLE001
                _release_gpu_memory()
                results.append(exc)
    each = (time.perf_counter() - t0) / max(1, len(todo))
    for i, image, res in zip(rows, images, results):
        if isinstance(res, BaseException):
            batch["stage"][i], batch["error"][i] = "segment", _reason(res)
            continue
        dt = _labels_dtype(len(res.categories))
        batch["pixels"][i], batch["encoding"][i] = np.ascontiguousarray(image, dtype=np.uint8).tobytes(), "raw"
        batch["labels"][i], batch["labels_dtype"][i] = res.label_map.astype(dt).tobytes(), dt.name
        batch["categories"][i] = json.dumps(res.categories)
        batch["mask_source"][i], batch["predicted"][i] = res.provenance, json.dumps(res.predicted)
    for i in todo:
        batch["prepare_s"][i] += each
    return batch


# ---------------------------------------------------------------- stage 2: stylize

STYLED_COLUMNS = ("image_id", "variant", "file_name", "uri", "height", "width", "pixels", "encoded", "styles",
                  "models", "worker", "mask_source", "predicted", "stage", "error", "prepare_s", "stylize_s")


def _host_images(batch: Batch, device: Any) -> list[np.ndarray | BaseException | None]:
    """Each row's pixels as ``uint8[H, W, 3]`` (None for a row that already failed): raw rows as they are,
    JPEG rows (``encoding == "jpeg"``) decoded together on ``device``; a list that fails is retried one
    file at a time, and a file the device cannot decode goes to the CPU decoder (clean error or pixels)."""
    from nstray.data import jpeg
    from nstray.data.images import decode_image

    n = len(batch["image_id"])
    out: list[np.ndarray | BaseException | None] = [None] * n
    encoded: list[int] = []
    for i in range(n):
        if str(batch["error"][i]):
            continue
        if "encoding" in batch and str(batch["encoding"][i]) == "jpeg":
            encoded.append(i)
        else:
            h, w = int(batch["height"][i]), int(batch["width"][i])
            out[i] = np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(h, w, 3)
    if not encoded:
        return out
    datas = [bytes(batch["pixels"][i]) for i in encoded]
    try:
        decoded: list[Any] = jpeg.decode_jpegs(datas, device)
    except Exception:  # noqa: BLE001 - one bad file fails the list: find it
        decoded = []
        for i, data in zip(encoded, datas):
            try:
                decoded.append(jpeg.decode_jpegs([data], device)[0])
            except Exception:  # noqa: BLE001
                try:
                    decoded.append(decode_image(data, name=str(batch["file_name"][i])))
                except Exception as exc:  # noqa: BLE001
                    decoded.append(exc)
    for i, image in zip(encoded, decoded):
        if isinstance(image, np.ndarray):
            try:
                _check_size(image, int(batch["height"][i]), int(batch["width"][i]))
            except ValueError as exc:
                image = exc
        out[i] = image
    return out


def stylize_rows(stylizer: Any, batch: Batch, opts: StageOptions, models: str = "[]", worker: str = "{}") -> Batch:
    """Prepared images → one styled row per pending variant (``stylizer`` is a :class:`PartStylizer`).

    All good images × variants go through one ``stylize_batch`` call (same-size images share forward
    passes); if that call fails, each item is retried alone so only the culprit fails. With
    ``opts.device_codec`` JPEG inputs are decoded and JPEG outputs encoded on the stylizer's device.
    """
    device = getattr(stylizer, "device", "cpu")
    host = _host_images(batch, device)
    items: list[dict] = []  # one per (image, variant)
    for i in range(len(batch["image_id"])):
        base = {
            "image_id": int(batch["image_id"][i]), "file_name": str(batch["file_name"][i]), "uri": str(batch["uri"][i]),
            "height": int(batch["height"][i]), "width": int(batch["width"][i]),
            "stage": str(batch["stage"][i]), "error": str(batch["error"][i]),
            "prepare_s": float(batch["prepare_s"][i]), "pixels": b"", "encoded": False, "styles": "{}",
            "stylize_s": 0.0,
            "mask_source": str(batch["mask_source"][i]) if "mask_source" in batch else "",
            "predicted": str(batch["predicted"][i]) if "predicted" in batch else "[]",
        }
        variants = opts.pending(base["image_id"])
        image = host[i]
        if isinstance(image, BaseException):
            base["stage"], base["error"] = "decode", _reason(image)
        if not base["error"]:
            h, w = base["height"], base["width"]
            labels = np.frombuffer(batch["labels"][i], dtype=np.dtype(str(batch["labels_dtype"][i])))
            labels = labels.reshape(h, w).astype(np.int32)
            categories = json.loads(batch["categories"][i])
        for v in variants:
            item = dict(base, variant=int(v))
            if not base["error"]:
                item["_in"] = (image, labels, categories)
            items.append(item)

    todo = [it for it in items if "_in" in it]
    if todo:
        t0 = time.perf_counter()
        try:
            results = stylizer.stylize_batch(
                [it["_in"][0] for it in todo], [it["_in"][1] for it in todo], [it["_in"][2] for it in todo],
                variants=[it["variant"] for it in todo], seeds=[opts.seed] * len(todo),
                keys=[it["image_id"] for it in todo],
            )
            each = (time.perf_counter() - t0) / len(todo)
            for it, res in zip(todo, results):
                it["_out"], it["styles"], it["stylize_s"] = res.image, json.dumps(res.styles, sort_keys=True), each
        except Exception:  # noqa: BLE001 - find the one that failed: one at a time
            _release_gpu_memory()
            for it in todo:
                t1 = time.perf_counter()
                try:
                    res = stylizer.stylize_batch([it["_in"][0]], [it["_in"][1]], [it["_in"][2]], variants=[it["variant"]],
                                                 seeds=[opts.seed], keys=[it["image_id"]])[0]
                    it["_out"], it["styles"] = res.image, json.dumps(res.styles, sort_keys=True)
                except Exception as exc:  # noqa: BLE001
                    _release_gpu_memory()
                    it["stage"], it["error"] = "stylize", _reason(exc)
                it["stylize_s"] = time.perf_counter() - t1
        _encode_on_device([it for it in todo if "_out" in it], opts, device)

    out: Batch = {
        "image_id": np.asarray([it["image_id"] for it in items], dtype=np.int64),
        "variant": np.asarray([it["variant"] for it in items], dtype=np.int64),
        "height": np.asarray([it["height"] for it in items], dtype=np.int64),
        "width": np.asarray([it["width"] for it in items], dtype=np.int64),
        "prepare_s": np.asarray([it["prepare_s"] for it in items], dtype=np.float64),
        "stylize_s": np.asarray([it["stylize_s"] for it in items], dtype=np.float64),
        "encoded": np.asarray([it["encoded"] for it in items], dtype=bool),
        "models": _objects([models] * len(items)),
        "worker": _objects([worker] * len(items)),
    }
    for c in ("file_name", "uri", "pixels", "styles", "mask_source", "predicted", "stage", "error"):
        out[c] = _objects([it[c] for it in items])
    return out


def _encode_on_device(items: list[dict], opts: StageOptions, device: Any) -> None:
    """Set each item's ``pixels``: JPEG bytes encoded on ``device`` (``opts.device_codec`` and a jpg
    output) or raw pixels for the write stage to encode. A device encoder failure only moves the work
    to the CPU encoder."""
    if opts.device_codec and opts.ext in ("jpg", "jpeg") and items:
        from nstray.data import jpeg

        t0 = time.perf_counter()
        try:
            datas = jpeg.encode_jpegs([it["_out"] for it in items], opts.quality, device)
        except Exception:  # noqa: BLE001 - the CPU encoder takes over
            _release_gpu_memory()
        else:
            each = (time.perf_counter() - t0) / len(items)
            for it, data in zip(items, datas):
                it["pixels"], it["encoded"] = data, True
                it["stylize_s"] += each
            return
    for it in items:
        it["pixels"] = _styled(it["_out"])


def _styled(image: np.ndarray) -> bytes:
    img = np.ascontiguousarray(image, dtype=np.uint8)
    return img.tobytes()


def _release_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass


# ---------------------------------------------------------------- stage 3: encode + write

def encode_write_batch(batch: Batch, opts: StageOptions) -> Batch:
    """Styled rows → encoded objects written under their keys → manifest rows (see ``outputs.MANIFEST_SCHEMA``)."""
    from nstray import storage

    n = len(batch["image_id"])
    keys, status, stage, error, write_s = [], [], [], [], []
    sizes: list[int | None] = []
    sums: list[str | None] = []
    for i in range(n):
        image_id, variant = int(batch["image_id"][i]), int(batch["variant"][i])
        key = output_key(image_id, variant, opts.ext)
        err, stg = str(batch["error"][i]), str(batch["stage"][i])
        t0 = time.perf_counter()
        size: int | None = None
        checksum: str | None = None
        if not err:
            try:
                stg = "encode"
                if "encoded" in batch and bool(batch["encoded"][i]):
                    data = bytes(batch["pixels"][i])  # encoded on the stylizer's device
                else:
                    h, w = int(batch["height"][i]), int(batch["width"][i])
                    image = np.frombuffer(batch["pixels"][i], dtype=np.uint8).reshape(h, w, 3)
                    data = encode_image(image, opts.ext, opts.quality)
                stg = "write"
                storage.write_bytes(storage.join(opts.output, key), data)
                size, checksum = len(data), hashlib.sha256(data).hexdigest()
                stg = ""
            except Exception as exc:  # noqa: BLE001
                err = _reason(exc)
        keys.append(key)
        status.append("failed" if err else "done")
        stage.append(stg if err else "")
        error.append(err)
        sizes.append(size if not err else None)
        sums.append(checksum if not err else None)
        write_s.append(time.perf_counter() - t0)
    prep = np.asarray(batch["prepare_s"], dtype=np.float64)
    styl = np.asarray(batch["stylize_s"], dtype=np.float64)
    wr = np.asarray(write_s, dtype=np.float64)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "image_id": np.asarray(batch["image_id"], dtype=np.int64),
        "variant": np.asarray(batch["variant"], dtype=np.int64),
        "source_file": _objects([str(x) for x in batch["file_name"]]),
        "output_key": _objects(keys),
        "width": np.asarray(batch["width"], dtype=np.int64),
        "height": np.asarray(batch["height"], dtype=np.int64),
        "styles": _objects([str(x) for x in batch["styles"]]),
        "models": _objects([str(x) for x in batch["models"]]),
        "worker": _objects([str(x) for x in batch["worker"]] if "worker" in batch else ["{}"] * n),
        "mask_source": _objects([str(x) for x in batch["mask_source"]] if "mask_source" in batch else [""] * n),
        "predicted": _objects([str(x) for x in batch["predicted"]] if "predicted" in batch else ["[]"] * n),
        "seed": np.full(n, opts.seed, dtype=np.int64),
        "fingerprint": _objects([opts.fingerprint] * n),
        "status": _objects(status),
        "stage": _objects(stage),
        "error": _objects(error),
        "size": np.asarray([-1 if x is None else x for x in sizes], dtype=np.int64),
        "sha256": _objects(["" if x is None else x for x in sums]),
        "seconds": prep + styl + wr,
        "prepare_s": prep,
        "stylize_s": styl,
        "write_s": wr,
        "finished_at": _objects([now] * n),
    }


# ---------------------------------------------------------------- the actor

def worker_info(device: str) -> dict:
    """Where a stylizer runs: Ray node and actor ids, whether Ray restarted it, its process, the torch
    device it uses and the GPUs Ray gave it (``CUDA_VISIBLE_DEVICES``). Recorded per output in the manifest."""
    import os

    info: dict[str, Any] = {"pid": os.getpid(), "device": device,
                            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        import ray

        if ray.is_initialized():
            import warnings

            ctx = ray.get_runtime_context()
            with warnings.catch_warnings():  # Ray 2.60 warns about its own use of a deprecated property here
                warnings.simplefilter("ignore")
                restarted = bool(ctx.was_current_actor_reconstructed)
            info.update(node=ctx.get_node_id(), actor=ctx.get_actor_id(), restarted=restarted,
                        gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    except Exception:  # noqa: BLE001 - outside an actor there is no Ray context to describe
        pass
    return info


class WorkerTag:
    """The ``worker`` JSON an actor stamps on its output rows: :func:`worker_info`, and on a GPU whose
    utilisation ``nvidia-smi`` can read, ``gpu_util``: its mean utilisation (%) since the actor started
    (sampled in the background, see :mod:`nstray.pipeline.gpu_usage`); ``job_report.json`` keeps each
    actor's latest figure. ``precision``: the arithmetic its multi-style network really runs (after any
    fallback to fp32), recorded beside the device."""

    def __init__(self, device: str, precision: str | None = None) -> None:
        self.info = worker_info(device)
        if precision is not None:
            self.info["precision"] = precision
        self._static = json.dumps(self.info, sort_keys=True)
        self.usage = None
        if device == "cuda":
            import torch

            from nstray.pipeline.gpu_usage import GpuUtilization, visible_gpu

            usage = GpuUtilization(visible_gpu(torch.cuda.current_device()))
            self.usage = usage if usage.start() else None

    def json(self) -> str:
        util = self.usage.mean() if self.usage is not None else None
        return self._static if util is None else json.dumps({**self.info, "gpu_util": util}, sort_keys=True)


class Stylizer:
    """Ray Data actor: loads the plan's networks once, then styles batches (optionally all stages fused).

    ``gpus``: GPUs this actor reserved; it runs on CUDA when that is > 0 and a GPU is really visible,
    otherwise on the CPU (a GPU node whose driver is missing still finishes the job, slowly).
    ``threads``: torch intra-op threads on the CPU.
    """

    def __init__(self, plan: dict, opts: StageOptions, *, gpus: float = 0.0, threads: int = 1,
                 fused: bool = False, precision: str = "fp32") -> None:
        import torch

        from nstray.assets import load_plan_assets
        from nstray.plan import load_plan
        from nstray.stylize.parts import PartStylizer

        if threads > 0:
            torch.set_num_threads(int(threads))
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        parsed = load_plan(plan)
        self.stylizer = PartStylizer(parsed, device=self.device,
                                     assets=load_plan_assets(parsed, max_pixels=opts.max_pixels),
                                     precision=precision)
        models = model_ids(parsed)
        self.segmenter = None
        if opts.segment_model:  # one more mask source, loaded once like the style networks
            from nstray.data.masksource import SegmenterParts
            from nstray.plan import BACKGROUND
            from nstray.segmentation import load_segmenter

            self.segmenter = SegmenterParts(
                load_segmenter(opts.segment_model, self.device), size=opts.segment_size,
                parts=[c for c in parsed.parts if c != BACKGROUND], boxes=opts.boxes, device=self.device,
                order=opts.overlaps if isinstance(opts.overlaps, str) else list(opts.overlaps))
            models.append(dict(opts.segment_id))
        self.models = json.dumps(models, sort_keys=True)
        self.worker = WorkerTag(self.device, self.stylizer.precision)
        self.opts = opts
        self.fused = fused

    def __call__(self, batch: Batch) -> Batch:
        if self.fused:
            batch = prepare_batch(batch, self.opts)
        if self.segmenter is not None:
            batch = segment_rows(self.segmenter, batch, self.opts, self.device)
        out = stylize_rows(self.stylizer, batch, self.opts, self.models, self.worker.json())
        if self.fused:
            out = encode_write_batch(out, self.opts)
        return out
