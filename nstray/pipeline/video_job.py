"""The video dataset job: videos → chunks → Ray Data actor pool → chunk files → joined MP4s with audio.

The driver probes every video (a bad one is an error row; the rest goes on), cuts each into chunks of
``video.chunk_frames`` frames and works out, from the manifest, which chunks and joins are still to do.
A chunk (video, variant, index) covers frames ``[start, end)``; its actor also styles the
``video.overlap_frames`` (k) frames before ``start``, so the stabilizer's state is warm at the boundary,
and the join cross-fades those warm-up outputs into the previous chunk's last k frames (:func:`crossfade`):
two stabilizer histories never quite agree, and the fade spreads their difference over k frames instead
of one flickering step (no warping-error spike where two chunks meet).

    chunk rows → from_items → VideoChunkStylizer (actor pool: models loaded once; decode from start−k,
    the shared frame loop nstray.video.style, frames [start−k, end) → <output>/_chunks/<video>/<variant>/<c>.npz)
    → manifest rows → driver → join tasks (one per finished (video, variant): chunks in order → H.264,
    source audio copied → videos/<video_id>/<variant>.mp4) → manifest rows, errors, contact sheet, report

Chunk files are lossless (compressed ``.npz`` of RGB frames and their source timestamps), so the joined
video is encoded once. A video's chunk files are removed once its MP4 is recorded done.

Resume: a chunk recorded done (same fingerprint) whose file is there with its size is not redone; a
(video, variant) whose MP4 is recorded done and is there with its size is not touched. A finished job's
rerun writes nothing. Exactly once under an actor kill: Ray Data restarts the actor and retries its
chunk; every write is atomic under a deterministic key, and the driver records one row per chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from nstray import storage
from nstray.config import VideoJobConfig, load_config
from nstray.pipeline import outputs
from nstray.pipeline.report import REPORT_FILE, RunStats, RunSummary
from nstray.pipeline.safety import job_inputs
from nstray.pipeline.skeleton import ProgressFn, connect, flush_seconds, guarded, pool_strategy, stage_env, stream

__all__ = ["VIDEO_EXTS", "VideoSource", "Chunk", "list_videos", "plan_chunks", "video_manifest_schema",
           "VideoJobSummary", "run_video_job", "VideoChunkStylizer", "join_chunks", "CHUNKS_DIR", "VIDEOS_DIR"]

log = logging.getLogger("nstray.job")

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
CHUNKS_DIR = "_chunks"
VIDEOS_DIR = "videos"
_KEY = ("video_id", "variant", "chunk")  # chunk −1: the joined video of (video_id, variant)
_JOINED = -1


def video_manifest_schema():
    """Arrow schema of the video job's manifest parts: one row per chunk attempt and per joined video."""
    import pyarrow as pa

    return pa.schema([
        ("kind", pa.string()),  # chunk | video
        ("video_id", pa.string()),
        ("variant", pa.int64()),
        ("chunk", pa.int64()),  # −1 on a joined video's row
        ("start", pa.int64()),  # first frame of the chunk (video rows: 0)
        ("end", pa.int64()),  # one past its last frame (video rows: the frame count)
        ("frames", pa.int64()),  # frames written (chunk) / in the joined video
        ("source_file", pa.string()),
        ("output_key", pa.string()),  # relative to the output root
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("fps", pa.string()),
        ("audio", pa.string()),  # the audio codec copied into the joined video, or null
        ("styles", pa.string()),
        ("worker", pa.string()),
        ("seed", pa.int64()),
        ("fingerprint", pa.string()),
        ("status", pa.string()),
        ("stage", pa.string()),  # read, labels, stylize, write, join
        ("error", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("seconds", pa.float64()),
        ("prepare_s", pa.float64()),  # decode + labels
        ("stylize_s", pa.float64()),  # network + stabilizer
        ("write_s", pa.float64()),  # chunk file / join encode + write
        ("finished_at", pa.string()),
        ("run_id", pa.string()),
    ])


# ---------------------------------------------------------------- videos and chunks


@dataclass(frozen=True)
class VideoSource:
    """One input video: its id (from its path under the input), URI, and what the probe found."""

    video_id: str
    uri: str
    name: str  # path relative to the input folder / prefix
    frames: int = 0
    width: int = 0
    height: int = 0
    fps: str = ""
    time_base: str = ""
    audio: str | None = None
    annotation_id: int | None = None  # the video of input.annotations that holds its masks


@dataclass(frozen=True)
class Chunk:
    """Frames ``[start, end)`` of a video for one variant, styled after ``warm`` (≤ start) warm-up frames."""

    video_id: str
    variant: int
    chunk: int
    warm: int
    start: int
    end: int

    @property
    def key(self) -> str:
        return f"{CHUNKS_DIR}/{self.video_id}/{self.variant}/{self.chunk:05d}.npz"


def _video_id(name: str) -> str:
    """A file-name-safe id from a path relative to the input: ``cams/a b.mp4`` → ``cams__a_b``."""
    stem = name.rsplit(".", 1)[0]
    vid = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).lstrip(".")
    return vid or hashlib.sha256(name.encode()).hexdigest()[:12]


def list_videos(uri: str) -> list[tuple[str, str]]:
    """``[(uri, name relative to the input)]`` of the video files under ``uri`` (or ``uri`` itself), sorted."""
    if uri.lower().endswith(VIDEO_EXTS) and storage.exists(uri):
        return [(uri, uri.rstrip("/").rsplit("/", 1)[-1])]
    root = uri.rstrip("/") + "/"
    found = []
    for f in storage.list_files(uri):
        if f.lower().endswith(VIDEO_EXTS):
            name = f[len(root):] if f.startswith(root) else os.path.relpath(f, storage.parse(uri).path)
            found.append((f, name.replace(os.sep, "/")))
    return sorted(found, key=lambda t: t[1])


def plan_chunks(video_id: str, frames: int, variants: int, chunk_frames: int, overlap: int) -> list[Chunk]:
    """Every chunk of a video of ``frames`` frames, for each variant."""
    return [Chunk(video_id, v, c, max(0, s - overlap), s, min(s + chunk_frames, frames))
            for v in range(variants) for c, s in enumerate(range(0, frames, chunk_frames))]


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path of ``uri`` (itself when local; an ``s3://`` object downloaded to a temporary file)."""
    if not storage.is_s3(uri):
        yield storage.parse(uri).path
        return
    suffix = "." + uri.rsplit(".", 1)[-1] if "." in uri.rsplit("/", 1)[-1] else ""
    fd, path = tempfile.mkstemp(prefix="nstray-video-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(storage.read_bytes(uri))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _count_frames(path: str) -> int:
    """Frames of the first video stream by demuxing (no decoding), for containers whose header has no count."""
    import av

    with av.open(path) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.size)


def _probe(uri: str, name: str, max_pixels: int) -> VideoSource:
    """What a video holds (a :class:`~nstray.video.io.VideoError` for a bad one)."""
    from nstray.video.io import VideoError, probe

    with local_copy(uri) as path:
        info = probe(path, max_pixels=max_pixels)
        frames = info.frames or _count_frames(path)
    if frames <= 0:
        raise VideoError(f"{name}: the video stream holds no frames; re-export it")
    return VideoSource(_video_id(name), uri, name, frames, info.width, info.height, str(info.fps),
                       str(info.time_base), info.audio_codec)


def _match_annotations(videos: list[VideoSource], annotations) -> tuple[list[VideoSource], list[str]]:
    """Each video with the id of its annotated video (a folder named like the file holds its frames); notes."""
    by_folder: dict[str, int] = {}
    for vid, rec in annotations.videos.items():
        if rec.file_names:
            by_folder.setdefault(rec.file_names[0].replace("\\", "/").rsplit("/", 1)[0] if "/" in rec.file_names[0]
                                 else "", vid)
    notes = []
    out = []
    for v in videos:
        stem = v.name.rsplit(".", 1)[0]
        ann = by_folder.get(stem, by_folder.get(stem.rsplit("/", 1)[-1]))
        if ann is None and len(videos) == 1 and len(annotations.videos) == 1:
            ann = next(iter(annotations.videos))
        if ann is None:
            notes.append(f"{v.name}: no video of the annotations has its frames in a folder named {stem!r}: "
                         "styled whole-frame (background)")
        out.append(VideoSource(**dict(asdict(v), annotation_id=ann)))
    return out, notes


# ---------------------------------------------------------------- the actor


def _npz_bytes(frames: list[np.ndarray], pts: list[int | None], index: list[int]) -> bytes:
    buf = io.BytesIO()
    arr = np.stack(frames) if frames else np.zeros((0, 2, 2, 3), np.uint8)
    np.savez_compressed(buf, frames=arr, pts=np.array([-1 if p is None else p for p in pts], np.int64),
                        index=np.array(index, np.int64))
    return buf.getvalue()


def _full_row(row: dict) -> dict:
    """``row`` with every manifest column (absent ones null)."""
    return {n: row.get(n) for n in video_manifest_schema().names if n != "run_id"}


def _fail_row(row: dict, stage: str, exc: BaseException, fix: str) -> dict:
    msg = str(exc) or type(exc).__name__
    return dict(row, status="failed", stage=stage, error=f"{msg}; fix: {fix}", size=None, sha256=None)


class VideoChunkStylizer:
    """Ray Data actor: loads the plan's networks (and the video annotations) once, then styles chunks.

    Each input row is a chunk (see :class:`Chunk` and :func:`_chunk_row`); each output row its manifest row.
    ``gpus``/``threads`` as :class:`nstray.pipeline.stages.Stylizer`.
    """

    def __init__(self, plan: dict, *, output: str, annotations: str | None, video: dict, seed: int,
                 fingerprint: str, max_pixels: int, gpus: float = 0.0, threads: int = 1,
                 precision: str = "fp32") -> None:
        import torch

        from nstray.assets import load_plan_assets
        from nstray.pipeline.stages import WorkerTag
        from nstray.plan import load_plan
        from nstray.stylize.parts import PartStylizer

        if threads > 0:
            torch.set_num_threads(int(threads))
        self.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
        parsed = load_plan(plan)
        self.stylizer = PartStylizer(parsed, device=self.device, assets=load_plan_assets(parsed, max_pixels=max_pixels),
                                     precision=precision)
        self.annotations = None
        if annotations:
            from nstray.data.video_annotations import load_video_annotations

            self.annotations = load_video_annotations(annotations)
        self.output, self.video, self.seed, self.fingerprint = output, video, seed, fingerprint
        self.max_pixels = max_pixels
        self.worker = WorkerTag(self.device, self.stylizer.precision)

    def __call__(self, batch):
        import pyarrow as pa

        schema = video_manifest_schema()
        out = [_full_row(self._one(r)) for r in batch.to_pylist()]
        return pa.Table.from_pylist(out, schema=schema.remove(schema.get_field_index("run_id")))

    def _masks(self, annotation_id: Any):
        if self.annotations is None or annotation_id is None or annotation_id < 0:
            return None, False
        from nstray.data.video_annotations import VideoMasks

        rec = self.annotations.videos[int(annotation_id)]
        return VideoMasks(rec), len(rec.annotated_frames()) < rec.length

    def _one(self, r: dict) -> dict:
        from nstray.video.io import VideoReader
        from nstray.video.stabilize import Stabilizer
        from nstray.video.style import StageTimes, style_frames

        t0 = time.perf_counter()
        row = {"kind": "chunk", "video_id": r["video_id"], "variant": int(r["variant"]), "chunk": int(r["chunk"]),
               "start": int(r["start"]), "end": int(r["end"]), "frames": 0, "source_file": r["source_file"],
               "output_key": r["output_key"], "width": None, "height": None, "fps": r["fps"], "audio": None,
               "styles": None, "worker": self.worker.json(), "seed": self.seed, "fingerprint": self.fingerprint,
               "status": "done", "stage": None, "error": None, "size": None, "sha256": None}
        v = self.video
        styles: dict[str, str] = {}
        frames: list[np.ndarray] = []
        pts: list[int | None] = []
        index: list[int] = []
        times = StageTimes()
        try:
            masks, keyframes = self._masks(r.get("annotation_id"))
            categories = masks.categories if masks is not None else []
            key = f"video:{r['video_id']}"

            def network(x: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
                lm = np.full(x.shape[:2], -1, np.int32) if labels is None else labels
                res = self.stylizer(x, lm, categories, variant=row["variant"], seed=self.seed, key=key)
                styles.update(res.styles)
                return res.image

            stab = Stabilizer(v["strength"]) if v["stabilize"] == "flow" and v["strength"] > 0 else None
            with local_copy(r["uri"]) as path, VideoReader(path, start=int(r["warm"]), max_frames=row["end"],
                                                            size=v["size"], max_pixels=self.max_pixels) as reader:
                row["width"], row["height"] = reader.out_size
                for sf in style_frames(reader, network, stab, masks=masks, keyframes=keyframes, times=times):
                    frames.append(sf.output)  # warm-up frames too: the join cross-fades them in
                    pts.append(sf.pts)
                    index.append(sf.index)
        except Exception as exc:  # noqa: BLE001 - one bad chunk fails alone, with its reason
            return dict(_fail_row(row, "stylize", exc, "check the video and the annotations; rerun the job to retry"),
                        seconds=time.perf_counter() - t0)
        own = sum(1 for i in index if i >= row["start"])
        if own < row["end"] - row["start"]:
            log.warning("%s: chunk %d has %d of %d frames (the stream ends early)", r["source_file"], row["chunk"],
                        own, row["end"] - row["start"])
        t1 = time.perf_counter()
        try:
            data = _npz_bytes(frames, pts, index)
            storage.write_bytes(storage.join(self.output, row["output_key"]), data)
        except Exception as exc:  # noqa: BLE001
            return _fail_row(row, "write", exc, "check the output's storage; rerun the job to retry")
        t2 = time.perf_counter()
        s = times.seconds
        return dict(row, frames=own, styles=json.dumps(styles, sort_keys=True), size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(), seconds=t2 - t0,
                    prepare_s=s.get("decode", 0.0) + s.get("labels", 0.0),
                    stylize_s=s.get("style", 0.0) + s.get("stabilize", 0.0), write_s=t2 - t1,
                    finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _chunk_row(c: Chunk, src: VideoSource) -> dict:
    return {"video_id": c.video_id, "variant": c.variant, "chunk": c.chunk, "warm": c.warm, "start": c.start,
            "end": c.end, "uri": src.uri, "source_file": src.name, "output_key": c.key, "fps": src.fps,
            "annotation_id": -1 if src.annotation_id is None else src.annotation_id}


# ---------------------------------------------------------------- join


def crossfade(held: dict[int, np.ndarray], index: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """``frames`` (a chunk's outputs, frame numbers ``index``) with its warm-up frames — those also in
    ``held``, the previous chunk's last outputs — faded in: frame ``warm + j`` of ``k`` overlapping frames
    is ``(1 − w)·previous + w·this`` with ``w = (j + 1) / (k + 1)``. The two stabilizer histories differ
    where they meet; the fade spreads that difference over the overlap instead of one flickering step."""
    overlap = [j for j, i in enumerate(index) if int(i) in held]
    if not overlap:
        return frames
    out = frames.copy()
    k = len(overlap)
    for n, j in enumerate(overlap):
        w = (n + 1) / (k + 1)
        mixed = (1 - w) * held[int(index[j])].astype(np.float32) + w * frames[j].astype(np.float32)
        out[j] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def join_chunks(output: str, src: VideoSource, variant: int, chunks: list[tuple[str, int, int]], crf: int,
                fingerprint: str, seed: int) -> dict:
    """Join the chunk files of (video, variant), in order, into ``videos/<video_id>/<variant>.mp4`` with the
    source's audio copied; returns its manifest row. ``chunks``: ``(key, warm, start)`` of each. The overlap of
    two chunks is cross-faded (:func:`crossfade`). Runs as a Ray task (storage and PyAV only)."""
    from fractions import Fraction

    from nstray.video.io import VideoWriter

    t0 = time.perf_counter()
    key = f"{VIDEOS_DIR}/{src.video_id}/{variant}.mp4"
    row = {"kind": "video", "video_id": src.video_id, "variant": variant, "chunk": _JOINED, "start": 0,
           "end": src.frames, "frames": 0, "source_file": src.name, "output_key": key, "fps": src.fps,
           "audio": src.audio, "seed": seed, "fingerprint": fingerprint, "status": "done", "stage": None,
           "error": None, "worker": json.dumps({"pid": os.getpid()})}
    fd, tmp = tempfile.mkstemp(prefix="nstray-join-", suffix=".mp4")
    os.close(fd)
    try:
        with local_copy(src.uri) as source:
            writer = None
            held: dict[int, np.ndarray] = {}  # the previous chunk's last frames, which this one overlaps
            held_pts: dict[int, int] = {}

            def write(f: np.ndarray, p: int) -> None:
                nonlocal writer
                if writer is None:
                    h, w = f.shape[:2]
                    row["width"], row["height"] = w, h
                    writer = VideoWriter(tmp, w, h, Fraction(src.fps), time_base=Fraction(src.time_base), crf=crf,
                                         audio_from=source if src.audio else None)
                writer.write(f, None if p < 0 else int(p))

            for n, (k, _, start) in enumerate(chunks):
                with np.load(io.BytesIO(storage.read_bytes(storage.join(output, k)))) as z:
                    frames, pts, index = z["frames"], z["pts"], [int(i) for i in z["index"]]
                for i in sorted(set(held) - set(index)):  # not overlapped (this chunk's stream ended early)
                    write(held[i], held_pts[i])
                frames = crossfade(held, np.array(index), frames)
                next_warm = chunks[n + 1][1] if n + 1 < len(chunks) else None
                new_held: dict[int, np.ndarray] = {}
                new_pts: dict[int, int] = {}
                for f, p, i in zip(frames, pts, index):
                    if i < start:  # a warm-up frame: written faded, in place of the previous chunk's
                        if i in held:
                            write(f, int(p))
                    elif next_warm is not None and i >= next_warm:
                        new_held[i], new_pts[i] = f, int(p)
                    else:
                        write(f, int(p))
                held, held_pts = new_held, new_pts
            for i in sorted(held):
                write(held[i], held_pts[i])
            if writer is None:
                raise ValueError(f"{src.name}: no styled frames to join")
            row["frames"] = writer.frames_written
            # a stream cut short: as much audio as video
            writer.close(audio_until_s=writer.duration_s if writer.frames_written < src.frames else None)
        data = open(tmp, "rb").read()
        t1 = time.perf_counter()
        storage.write_bytes(storage.join(output, key), data)
        return dict(row, size=len(data), sha256=hashlib.sha256(data).hexdigest(), seconds=time.perf_counter() - t0,
                    write_s=time.perf_counter() - t1,
                    finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    except Exception as exc:  # noqa: BLE001 - a failed join fails alone
        return dict(_fail_row(row, "join", exc, "rerun the job to retry (its chunks are kept)"),
                    seconds=time.perf_counter() - t0)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# ---------------------------------------------------------------- the job


@dataclass
class VideoJobSummary(RunSummary):
    """What a run did: chunks styled / skipped / failed, videos joined (``outputs``/``done``/``skipped``/``failed``
    count (video, variant) MP4s), and where everything is."""

    videos: int = 0
    bad_videos: int = 0
    chunks: int = 0
    chunks_done: int = 0
    chunks_skipped: int = 0
    chunks_failed: int = 0
    frames: int = 0  # frames styled this run
    frames_per_s: float = 0.0


_KEPT = ("kind", "video_id", "variant", "chunk", "start", "end", "frames", "source_file", "output_key", "status",
         "stage", "error", "size", "sha256", "fingerprint", "width", "height", "styles")


def run_video_job(config: VideoJobConfig | str | dict, *, address: str | None = None,
                  on_progress: ProgressFn | None = None, notify: Callable[[str], None] | None = None,
                  ray_progress_bars: bool = False, verify: bool = False) -> VideoJobSummary:
    """Run (or resume) a video job; returns what it did (see the module docstring)."""
    cfg = load_config(config)
    if not isinstance(cfg, VideoJobConfig):
        from nstray.config import ConfigError

        raise ConfigError("run_video_job needs a video job config (kind: video)")
    run_id = outputs.new_run_id()
    inputs, root_field = video_inputs(cfg)
    with guarded(cfg.output, inputs, run_id, root_field=root_field):
        return _run_locked(cfg, run_id, address=address, on_progress=on_progress, notify=notify,
                           ray_progress_bars=ray_progress_bars, verify=verify)


def video_inputs(cfg: VideoJobConfig) -> tuple[dict[str, str], str]:
    """``(what the job reads, the field of the folder it lists)``: the output may overlap none of them."""
    found = {k: v for k, v in job_inputs(cfg.input.annotations or "", cfg.input.videos, cfg.plan).items()
             if v and k != "input.images"}
    return dict(found, **{"input.videos": cfg.input.videos}), "input.videos"


def _sources(cfg: VideoJobConfig, say: Callable[[str], None]) -> tuple[list[VideoSource], list[dict], Any]:
    """The good videos (probed, matched to their masks), an error row per bad one, the annotations."""
    from nstray.data.video_annotations import load_video_annotations
    from nstray.video.io import VideoError

    found = list_videos(cfg.input.videos)
    if not found:
        raise storage.StorageError(f"{cfg.input.videos}: no video files ({', '.join(VIDEO_EXTS)}) there; "
                                   "check input.videos")
    good: list[VideoSource] = []
    errors: list[dict] = []
    for uri, name in found:
        try:
            good.append(_probe(uri, name, cfg.limits.max_pixels))
        except (VideoError, storage.StorageError) as exc:
            errors.append({"image_id": None, "file_name": name, "stage": "probe", "reason": str(exc),
                           "fix": "re-export the video as H.264 MP4, or remove it from the input"})
        except Exception as exc:  # noqa: BLE001 - FFmpeg's own errors on odd files: that video fails alone
            errors.append({"image_id": None, "file_name": name, "stage": "probe",
                           "reason": f"{name}: cannot be read ({type(exc).__name__}: {exc})",
                           "fix": "re-export the video as H.264 MP4, or remove it from the input"})
    ids = [v.video_id for v in good]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise storage.StorageError(f"{cfg.input.videos}: several videos map to the id {dup[0]!r} (names that "
                                   "differ only in extension or in characters other than letters, digits, . _ -); "
                                   "rename them")
    ann = None
    if cfg.input.annotations:
        ann = load_video_annotations(cfg.input.annotations)
        for p in ann.problems:
            say(f"warning: {cfg.input.annotations}: {p} (left out)")
            errors.append({"image_id": None, "file_name": cfg.input.annotations, "stage": "annotations",
                           "reason": f"video {p.video_id}" + (f" annotation {p.ann_id}" if p.ann_id is not None else "")
                                     + f": {p.problem}", "fix": p.fix})
        good, notes = _match_annotations(good, ann)
        for n in notes:
            say(n)
    return good, errors, ann


def _valid_done(rows: dict, sizes: dict[str, int], fingerprint: str, verify: bool, output: str) -> dict:
    """Done rows (of ``fingerprint``) whose files are there as recorded (:func:`outputs.check_outputs`: size
    from one listing; with ``verify`` the checksum too)."""
    done = {k: r for k, r in rows.items() if r["status"] == "done" and r["fingerprint"] == fingerprint}
    bad = outputs.check_outputs(output, done, sizes, deep=verify) if done else {}
    return {k: r for k, r in done.items() if k not in bad}


def _run_locked(cfg: VideoJobConfig, run_id: str, *, address: str | None, on_progress: ProgressFn | None,
                notify: Callable[[str], None] | None, ray_progress_bars: bool, verify: bool) -> VideoJobSummary:
    from nstray.preflight import check_plan_assets

    say = notify or log.info
    t_start = time.perf_counter()
    out = cfg.output
    summary = VideoJobSummary(output=out, run_id=run_id)
    sources, probe_errors, ann = _sources(cfg, say)
    categories = sorted({c for r in ann.videos.values() for c in r.categories}) if ann is not None else None
    plan = cfg.load_plan(categories=categories or None)
    check_plan_assets(plan, max_pixels=cfg.limits.max_pixels)
    by_id = {s.video_id: s for s in sources}
    summary.videos, summary.bad_videos = len(sources), len(probe_errors)
    summary.outputs = len(sources) * cfg.variants

    fingerprint = cfg.fingerprint()
    join_fp = f"{fingerprint}:crf{cfg.video.crf}"
    schema = video_manifest_schema()
    previous = outputs.read_manifest(out, schema, _KEY).select(list(_KEPT)).to_pylist()
    latest = {(r["video_id"], int(r["variant"]), int(r["chunk"])): r for r in previous}
    videos_ok = _valid_done({k: r for k, r in latest.items() if k[2] == _JOINED}, outputs.output_sizes(out, VIDEOS_DIR), join_fp,
                            verify, out)
    todo_videos = [(s, v) for s in sources for v in range(cfg.variants) if (s.video_id, v, _JOINED) not in videos_ok]
    summary.skipped = summary.outputs - len(todo_videos)
    chunk_sizes = outputs.output_sizes(out, CHUNKS_DIR) if todo_videos else {}
    chunks_ok = _valid_done({k: r for k, r in latest.items() if k[2] != _JOINED}, chunk_sizes, fingerprint, verify,
                            out)
    all_chunks: dict[tuple[str, int], list[Chunk]] = {}
    pending: list[dict] = []
    for s, v in todo_videos:
        cs = [c for c in plan_chunks(s.video_id, s.frames, cfg.variants, cfg.video.chunk_frames,
                                     cfg.video.overlap_frames) if c.variant == v]
        all_chunks[(s.video_id, v)] = cs
        summary.chunks += len(cs)
        pending += [_chunk_row(c, s) for c in cs if (c.video_id, c.variant, c.chunk) not in chunks_ok]
    summary.chunks_skipped = summary.chunks - len(pending)

    writer = outputs.ManifestWriter(out, run_id, previous={k: (r["status"], r["stage"], r["error"])
                                                          for k, r in latest.items()}, keep=_KEPT,
                                    flush_seconds=flush_seconds(), schema=schema, key=_KEY)
    stats = RunStats(unit=_KEY)
    ray_stats = restarts = None
    if todo_videos:
        import ray
        import ray.data

        placement, _, _ = connect(address, cfg.resources)
        summary.placement = asdict(placement)
        for note in placement.notes:
            say(note)
        ray.data.DataContext.get_current().enable_progress_bars = ray_progress_bars
        env = stage_env(placement)
        remote: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
        if pending:
            say(f"styling {len(pending)} chunk(s) of {len(todo_videos)} video output(s) "
                f"({summary.chunks_skipped} chunk(s) and {summary.skipped} video(s) already done) with "
                f"{placement.actors} actor(s){' on GPU' if placement.gpus_per_actor else ' on CPU'}")
            ds = ray.data.from_items(pending, override_num_blocks=len(pending))
            ds = ds.map_batches(
                VideoChunkStylizer,
                fn_constructor_kwargs={"plan": cfg.plan, "output": out, "annotations": cfg.input.annotations,
                                       "video": cfg.video.model_dump(), "seed": cfg.seed, "fingerprint": fingerprint,
                                       "max_pixels": cfg.limits.max_pixels, "gpus": placement.gpus_per_actor,
                                       "threads": placement.threads, "precision": cfg.resources.precision},
                compute=pool_strategy(replace(placement, actors=min(placement.actors, len(pending)),
                                              min_actors=min(placement.min_actors, len(pending)))), num_gpus=placement.gpus_per_actor or None,
                num_cpus=placement.cpus_per_actor, batch_size=1, batch_format="pyarrow", **remote)
            streamed = stream(ds, writer, stats, len(pending), on_progress)
            summary.pipeline_seconds = streamed.pipeline_seconds
            ray_stats, restarts = streamed.ray_stats, streamed.restarts
            del ds
        for row in writer.rows:
            latest[(row["video_id"], int(row["variant"]), int(row["chunk"]))] = row
        summary.chunks_done, summary.chunks_failed = writer.done, writer.failed
        summary.frames = sum(int(r["frames"] or 0) for r in writer.rows if r["status"] == "done")

        # join every (video, variant) whose chunks are all done
        t_join = time.perf_counter()
        join = ray.remote(join_chunks).options(num_cpus=0.5, max_retries=3, **remote)
        refs = []
        for s, v in todo_videos:
            cs = all_chunks[(s.video_id, v)]
            rows = [latest.get((c.video_id, c.variant, c.chunk)) for c in cs]
            if all(r is not None and r["status"] == "done" and r["fingerprint"] == fingerprint for r in rows):
                refs.append(join.remote(out, s, v, [(c.key, c.warm, c.start) for c in cs], cfg.video.crf, join_fp,
                                        cfg.seed))
        joined = [_full_row(r) for r in ray.get(refs)]
        writer.add(joined)
        stats.add(joined)
        writer.flush()
        summary.pipeline_seconds += time.perf_counter() - t_join
        for row in joined:
            latest[(row["video_id"], int(row["variant"]), _JOINED)] = row
            if row["status"] == "done":  # its chunks served their purpose
                for c in all_chunks[(row["video_id"], int(row["variant"]))]:
                    with contextlib.suppress(storage.StorageError):
                        storage.delete(storage.join(out, c.key))
        summary.done = sum(1 for r in joined if r["status"] == "done")
        summary.failed = sum(1 for s, v in todo_videos
                             if latest.get((s.video_id, v, _JOINED), {}).get("status") != "done")
        summary.written += writer.parts
    if summary.pipeline_seconds > 0:
        summary.frames_per_s = summary.frames / summary.pipeline_seconds

    _finalize(cfg, sources, by_id, probe_errors, latest, writer, join_fp, summary)
    summary.seconds = time.perf_counter() - t_start
    if todo_videos:
        summary.report = stats.report(run_id=run_id, output=out, pipeline_seconds=summary.pipeline_seconds,
                                      seconds=summary.seconds, skipped=summary.skipped,
                                      placement=summary.placement, actor_restarts=restarts, ray_stats=ray_stats)
        summary.report["video"] = {"videos": summary.videos, "bad_videos": summary.bad_videos,
                                   "chunks": summary.chunks, "chunks_done": summary.chunks_done,
                                   "chunks_skipped": summary.chunks_skipped, "chunks_failed": summary.chunks_failed,
                                   "joined": summary.done, "frames_styled": summary.frames,
                                   "frames_per_s": round(summary.frames_per_s, 3)}
        uri = storage.join(out, REPORT_FILE)
        storage.write_bytes(uri, json.dumps(summary.report, indent=1, default=str).encode())
        summary.paths["report"] = uri
        summary.written.append(uri)
    return summary


def _middle_frame(uri: str, frames: int, size: int | None = None) -> np.ndarray:
    from nstray.video.io import VideoReader

    mid = max(0, frames // 2)
    with local_copy(uri) as path, VideoReader(path, start=mid, max_frames=mid + 1, size=size) as r:
        return next(iter(r)).rgb


def _finalize(cfg: VideoJobConfig, sources: list[VideoSource], by_id: dict[str, VideoSource],
              probe_errors: list[dict], latest: dict, writer: outputs.ManifestWriter, join_fp: str,
              summary: VideoJobSummary) -> None:
    """errors.parquet and contact_sheet.png, each rewritten only when what it shows changed."""
    out = cfg.output
    if summary.placement is not None:
        storage.remove_partials(out)
        merged = outputs.compact_manifest(out, summary.run_id, schema=video_manifest_schema(), key=_KEY)
        if merged:
            summary.written.append(merged)
    state = outputs.read_state(out)
    new_state = dict(state)
    paths = {"videos": storage.join(out, VIDEOS_DIR),
             "outputs": storage.join(out, VIDEOS_DIR, "<video_id>", "<variant>.mp4"),
             "manifest": storage.join(out, outputs.MANIFEST_DIR), "errors": storage.join(out, outputs.ERRORS_FILE),
             "contact_sheet": storage.join(out, outputs.CONTACT_SHEET_FILE)}
    summary.paths = paths
    failed = [r for r in writer.rows if r["status"] != "done"]
    err_rows = list(probe_errors)
    for r in failed:
        reason, _, fix = str(r["error"]).partition("; fix: ")
        where = f"chunk {r['chunk']} (frames {r['start']}–{r['end'] - 1}), " if r["chunk"] != _JOINED else ""
        err_rows.append({"image_id": None, "file_name": r["source_file"], "stage": r["stage"],
                         "reason": f"{where}variant {r['variant']}: {reason}", "fix": fix or "rerun the job"})
    d = outputs.digest(err_rows)
    if state.get("errors") != d or not storage.exists(paths["errors"]):
        outputs.write_errors(out, err_rows)
        summary.written.append(paths["errors"])
    new_state["errors"] = d

    done = {(k[0], k[1]): r for k, r in latest.items()
            if k[2] == _JOINED and r["status"] == "done" and r["fingerprint"] == join_fp and k[0] in by_id
            and k[1] < cfg.variants}
    chosen = sorted({vid for vid, _ in done})[: cfg.contact_sheet]
    if chosen:
        rows_key = [(vid, [(v, done[(vid, v)]["sha256"]) for v in range(min(cfg.variants, 3)) if (vid, v) in done])
                    for vid in chosen]
        d = outputs.digest(rows_key)
        if state.get("contact_sheet") != d or not storage.exists(paths["contact_sheet"]):
            try:
                rows = []
                for vid, variants in rows_key:
                    src = by_id[vid]
                    original = _middle_frame(src.uri, src.frames, cfg.video.size)
                    styled = [(v, _middle_frame(storage.join(out, done[(vid, v)]["output_key"]), src.frames))
                              for v, _ in variants]
                    rows.append((vid, original, styled))
                storage.write_bytes(paths["contact_sheet"],
                                    outputs.render_contact_sheet(rows, max_pixels=cfg.limits.max_pixels))
                summary.written.append(paths["contact_sheet"])
                new_state["contact_sheet"] = d
            except Exception as exc:  # noqa: BLE001 - a preview must not fail the job
                log.warning("could not render the contact sheet: %s", exc)
    if new_state != state:
        outputs.write_state(out, new_state)
