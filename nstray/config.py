"""The dataset-job config: what to style, how, where to write it, and with what resources.

A job config is a YAML file (or a dict)::

    input: {annotations: s3://bucket/coco/annotations.json, images: s3://bucket/coco/images}
    output: s3://bucket/styled/run-1
    variants: 2            # styled copies per image; list styles are sampled per variant with the seed
    seed: 7
    plan:                  # an inline style plan (see nstray.plan) or a path to a plan YAML
      styles: {a: {kind: multistyle, index: 3}, b: {kind: multistyle, index: 12}}
      parts: {wheel: {style: [a, b]}, hood: {style: b}, background: {style: none}}
    resources: {actors: 4, gpus_per_actor: 1, batch_size: 8}   # CPU when gpus_per_actor: 0 or no GPU there
    limits: {max_pixels: 40000000}
    format: {type: png, quality: 95}                            # png | jpg
    segment: {model: s3://bucket/models/parts/best.pt, size: 520, boxes: auto}   # optional

``segment`` adds a segmentation model as a mask source: images without masks (an image folder given as
``input: {images: ...}`` with no annotations, or annotated images that have none) get predicted part
masks; ``boxes`` says how box-only annotations become masks (``auto``: the segmenter inside the box
when there is one, else GrabCut; ``segmenter``; ``grabcut``; ``box``: the box itself).

Everything is validated when the config is loaded, before Ray starts: every error names its field
path (``resources.actors: must be ≥ 1``), the plan included (``plan.parts.hood.strength: ...``).
Relative local paths (input, output, a plan path, style images of an inline plan) resolve against the
config file's folder (the current folder for a dict), so a loaded config is self-contained: its
``model_dump()`` can be shipped to a cluster and loaded again unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from nstray import storage
from nstray.data.images import DEFAULT_MAX_PIXELS

__all__ = [
    "ConfigError",
    "InputConfig",
    "SegmentConfig",
    "ResourcesConfig",
    "LimitsConfig",
    "FormatConfig",
    "JobConfig",
    "VideoInputConfig",
    "VideoConfig",
    "VideoJobConfig",
    "load_config",
]


class ConfigError(ValueError):
    """The job config is invalid; the message lists every problem with its field path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(_Model):
    """The COCO annotations file and the folder/prefix its ``file_name`` values are relative to; without
    ``annotations`` (a job with ``segment.model``) every image file under ``images`` is an input."""

    annotations: str | None = Field(None, min_length=1)
    images: str = Field(min_length=1)


def _field_error(field: str, message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error that :func:`_describe` reports under ``field`` (a model validator's errors have no path)."""
    return PydanticCustomError("field", message, {"field": field, **ctx})


class SegmentConfig(_Model):
    """A segmentation model as a mask source (see the module docstring).

    ``model``: a pretrained name (``deeplabv3_resnet50`` ...: whole vehicles, VOC labels) or an ``nstray
    train-seg`` checkpoint (local or ``s3://``); ``size``: the working size (shorter side, px) the model
    sees; ``boxes``: how box-only annotations become masks. Only ``boxes: grabcut`` or ``box`` work
    without a model.
    """

    model: str | None = Field(None, min_length=1)
    size: int = Field(520, ge=16, le=8192)
    boxes: Literal["auto", "segmenter", "grabcut", "box"] = "auto"

    @model_validator(mode="after")
    def _needs_model(self) -> SegmentConfig:
        if self.model is None and self.boxes in ("auto", "segmenter"):
            raise _field_error("segment.model", "required: a pretrained name (deeplabv3_resnet50, "
                               "lraspp_mobilenet_v3_large ...) or a train-seg checkpoint (a file or s3:// URI); "
                               "only boxes: grabcut or box work without a model")
        return self

    def identity(self, checkpoint: dict | None) -> dict:
        """What of the segmenter decides output pixels: the model reference, ``checkpoint`` (its sha256 and
        byte size, from :func:`nstray.segmentation.segmenter_identity`), the working size and the box mode."""
        return {"model": self.model, "checkpoint": checkpoint, "size": self.size, "boxes": self.boxes}


class ResourcesConfig(_Model):
    """How the stylize stage is spread over the cluster.

    ``actors``: size of the stylizer actor pool (each loads the models once); ``auto``: one actor per
    GPU the cluster has (``gpus_per_actor`` each), or as many CPU actors as the CPUs hold.
    ``gpus_per_actor``: GPUs each actor reserves; 0 = CPU. When the cluster has no GPU at all and
    ``cpu_fallback`` is on, the job runs on CPU instead of waiting for a GPU that never comes.
    ``cpus_per_actor``: CPUs each actor reserves (also its torch thread count).
    ``batch_size``: images per stylize call.
    ``fuse_stages``: run read/decode/masks and encode/write inside the stylizer actors instead of as
    separate CPU tasks. ``auto`` fuses on CPU-only jobs (no object-store round trips for pixels,
    which is faster when the same cores do everything) and keeps stages apart on GPUs (CPU tasks
    keep the GPUs fed).
    ``jpeg_codec``: where JPEG inputs are decoded and JPEG outputs encoded. ``device``: by the stylizer
    on its own device (nvjpeg on a GPU, so CPU tasks only move compressed bytes); ``cpu``: by the CPU
    stages (PIL, in parallel tasks); ``auto``: ``device`` on GPU actors when the cluster has fewer than
    4 CPUs per GPU (then CPU decoding would starve the GPUs), else ``cpu`` (measured on an H200 with 16
    CPUs: nvjpeg inside the actor gains nothing there, the CPU tasks decode in parallel for free).
    ``precision``: the multi-style network's arithmetic (channels-last ``fp16``/``bf16`` where the quality
    gate holds: PSNR >= 40 dB against fp32 over the styled pixels, see benchmarks/stylize_path.py): GPU
    actors run either; CPU actors run ``bf16`` where the CPU has native bf16 arithmetic (AVX512-BF16,
    AMX), else fp32 (with a warning).
    """

    actors: int | Literal["auto"] = 1
    gpus_per_actor: float = Field(0.0, ge=0)
    cpus_per_actor: float = Field(1.0, gt=0)
    batch_size: int = Field(4, ge=1, le=4096)
    fuse_stages: Literal["auto"] | bool = "auto"
    cpu_fallback: bool = True
    jpeg_codec: Literal["auto", "device", "cpu"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"

    @field_validator("actors", mode="before")
    @classmethod
    def _actors(cls, v: Any) -> int | str:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PydanticCustomError("actors", "must be ≥ 1 or 'auto'")
        return v

    def device_codec(self, gpus: float, cpus_per_gpu: float = float("inf")) -> bool:
        """Whether the stylizer decodes/encodes JPEGs itself, for actors that reserve ``gpus`` each on a
        cluster with ``cpus_per_gpu`` CPUs per GPU."""
        if self.jpeg_codec != "auto":
            return self.jpeg_codec == "device"
        return gpus > 0 and cpus_per_gpu < 4

    def fused(self, gpus: float | None = None) -> bool:
        """Whether stages run fused inside the actors, for a job that reserves ``gpus`` per actor."""
        if self.fuse_stages != "auto":
            return bool(self.fuse_stages)
        return (self.gpus_per_actor if gpus is None else gpus) == 0


class LimitsConfig(_Model):
    """``max_pixels``: images larger than this are not decoded (a record error, not an OOM)."""

    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)


class FormatConfig(_Model):
    """Output image encoding: ``png`` (lossless) or ``jpg`` with ``quality`` 1–100."""

    type: Literal["png", "jpg"] = "png"
    quality: int = Field(95, ge=1, le=100)

    @property
    def ext(self) -> str:
        return self.type


class _JobBase(_Model):
    """What every kind of dataset job has: output, variants, seed, plan, resources, limits, contact sheet.

    ``plan`` is held as a plain dict (a validated, path-resolved plan) so the config pickles and
    serializes as data; :meth:`load_plan` gives the typed :class:`nstray.plan.Plan`.
    ``contact_sheet``: how many results the contact sheet shows (0 = none).
    """

    output: str = Field(min_length=1)
    variants: int = Field(1, ge=1, le=1000)
    seed: int = 0
    plan: dict[str, Any] | str
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    contact_sheet: int = Field(6, ge=0, le=64)

    def load_plan(self, categories: list[str] | None = None):
        """The typed plan; with ``categories`` every part name must be one of them (raises PlanError)."""
        from nstray.plan import load_plan

        return load_plan(self.plan, categories=categories)


class JobConfig(_JobBase):
    """A validated image dataset-job config (see the module docstring for the YAML shape).

    ``rows_per_shard``: images per Parquet shard of the index the job streams.
    """

    input: InputConfig
    format: FormatConfig = Field(default_factory=FormatConfig)
    rows_per_shard: int = Field(256, ge=1)
    kind: Literal["images"] = "images"
    segment: SegmentConfig | None = None

    @model_validator(mode="after")
    def _labels_from_somewhere(self) -> JobConfig:
        if self.input.annotations is None and (self.segment is None or self.segment.model is None):
            raise _field_error("input.annotations", "required unless a segmentation model labels the images: give "
                               "input.annotations (COCO .json), or segment: {model: NAME_OR_CHECKPOINT} to style an "
                               "image folder with predicted part masks")
        return self

    def fingerprint(self, segmenter: dict | None = None) -> str:
        """A hash of everything that decides an output's pixels (plan, seed, format, and the segmenter).

        The manifest records it per output; a rerun skips only outputs done with the same
        fingerprint, so changing the plan restyles instead of silently keeping stale images.
        ``segmenter``: the checkpoint's identity (sha256, bytes) when ``segment.model`` is set, so a
        retrained model under the same URI also redoes the outputs.
        """
        key = {"v": 1, "plan": self.plan, "seed": self.seed, "format": self.format.model_dump()}
        if self.segment is not None:  # absent otherwise: jobs without a segmenter keep their fingerprints
            key["segment"] = self.segment.identity(segmenter)
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


class VideoInputConfig(_Model):
    """The videos (a folder or ``s3://`` prefix of video files, or one video file) and, optionally, their
    YouTube-VIS style part masks. A video's masks are the annotation video whose frame files sit in a
    folder named like the video file (``cam1.mp4`` ↔ ``file_names: [cam1/00000.jpg, ...]``), or the only
    annotated video when there is one video; unmatched videos are styled whole-frame (``background``)."""

    videos: str = Field(min_length=1)
    annotations: str | None = Field(None, min_length=1)


class VideoConfig(_Model):
    """How each video is cut and styled.

    ``chunk_frames``: frames per unit of work (chunks of one video are styled in parallel);
    ``overlap_frames``: warm-up frames styled before each chunk and cross-faded into the previous chunk's
    last frames at the join, so the chunks meet without a jump (the stabilizer remembers long on still
    scenes: 16 keeps the boundary within 1.9× the one-pass warping error on a fixed-camera clip where 4
    gives 12.8×; the cost is overlap/chunk extra styling); ``stabilize``: ``flow`` or ``none`` (naive per-frame); ``strength``: the
    consistency strength (0–1); ``crf``: H.264 quality of the joined video; ``size``: longest side in px
    to style at (None: the source's size).
    """

    chunk_frames: int = Field(64, ge=2, le=100000)
    overlap_frames: int = Field(16, ge=0, le=1000)
    stabilize: Literal["flow", "none"] = "flow"
    strength: float = Field(0.8, ge=0, le=1)
    crf: int = Field(18, ge=0, le=51)
    size: int | None = Field(None, ge=16)

    @model_validator(mode="after")
    def _overlap(self) -> VideoConfig:
        if self.overlap_frames >= self.chunk_frames:
            raise PydanticCustomError("overlap", "overlap_frames ({o}) must be < chunk_frames ({c}): the warm-up "
                                      "of a chunk lies within the chunk before it",
                                      {"o": self.overlap_frames, "c": self.chunk_frames})
        return self


class VideoJobConfig(_JobBase):
    """A validated video dataset-job config (``kind: video``; see the README's "Video job")."""

    kind: Literal["video"]
    input: VideoInputConfig
    video: VideoConfig = Field(default_factory=VideoConfig)

    def fingerprint(self) -> str:
        """A hash of everything that decides a chunk's pixels (plan, seed, how frames are styled), except
        ``crf`` and the chunking, which only decide the joined file."""
        v = self.video.model_dump()
        key = {"v": 1, "kind": "video", "plan": self.plan, "seed": self.seed,
               "video": {k: v[k] for k in ("stabilize", "strength", "size", "overlap_frames", "chunk_frames")}}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


_MODELS: dict[str, type[BaseModel]] = {
    "": JobConfig, "input": InputConfig, "resources": ResourcesConfig, "limits": LimitsConfig, "format": FormatConfig,
    "segment": SegmentConfig,
}
_VIDEO_MODELS: dict[str, type[BaseModel]] = dict(_MODELS, **{"": VideoJobConfig, "input": VideoInputConfig,
                                                             "video": VideoConfig})


def _describe(err: dict, models: dict[str, type[BaseModel]] = _MODELS) -> str:
    """One pydantic error → ``field.path: plain message``."""
    loc = [str(p) for p in err["loc"]]
    # pydantic appends the union member to the path (plan.dict[str,any]); drop those tags
    loc = [p for p in loc if not (p.startswith(("dict[", "str", "literal[", "bool")) and p != loc[0])]
    path = ".".join(loc) or "<config>"
    kind, ctx, msg = err["type"], err.get("ctx") or {}, err["msg"]
    if kind == "field":
        return f"{ctx['field']}: {msg}"
    if kind == "extra_forbidden":
        model = models.get(".".join(loc[:-1]), models[""])
        keys = sorted(model.model_fields, key=lambda k: k != "input")  # the job's own input first
        msg = f"unknown key; valid keys: {', '.join(keys)}"
    elif kind == "missing":
        msg = "required"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        sign = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        msg = f"must be {sign} {bound} (got {err.get('input')!r})"
    elif kind == "literal_error":
        msg = f"must be one of {ctx.get('expected', '')} (got {err.get('input')!r})"
    elif kind == "string_too_short":
        msg = "must not be empty"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return f"{path}: {msg}"


def _resolve(uri: str, base_dir: str) -> str:
    """A relative local path → absolute against ``base_dir``; URIs and absolute paths stay."""
    if storage.is_s3(uri):
        return uri
    if storage.is_s3(base_dir):
        return uri if uri.startswith("/") else storage.join(base_dir, uri)
    p = Path(storage.parse(uri).path).expanduser()
    return str(p if p.is_absolute() else (Path(base_dir) / p).resolve())


def load_config(source: str | os.PathLike | dict | JobConfig | VideoJobConfig, *,
                base_dir: str | os.PathLike | None = None) -> JobConfig | VideoJobConfig:
    """Load and validate a job config from a YAML path/URI, a dict, or a loaded config.

    ``kind: video`` gives a :class:`VideoJobConfig`, anything else (``kind: images``, the default) a
    :class:`JobConfig`.
    ``base_dir``: the folder relative paths resolve against (default: the config file's folder,
    or the current folder for a dict). Raises :class:`ConfigError` listing every problem by field.
    """
    from nstray.plan import PlanError, load_plan

    if isinstance(source, (JobConfig, VideoJobConfig)):
        return source
    if isinstance(source, dict):
        data: Any = source
        where = "config"
        base = str(base_dir) if base_dir is not None else os.getcwd()
    else:
        where = str(source)
        try:
            text = storage.read_bytes(where).decode("utf-8")
        except storage.StorageError as exc:
            raise ConfigError(f"cannot read the job config: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not a text YAML file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {exc}") from None
        if base_dir is not None:
            base = str(base_dir)
        elif storage.is_s3(where):
            base = where.rsplit("/", 1)[0]
        else:
            base = str(Path(storage.parse(where).path).resolve().parent)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a job config must be a mapping with input, output, plan ... (got {type(data).__name__})")
    video = data.get("kind") == "video"
    model: type[JobConfig] | type[VideoJobConfig] = VideoJobConfig if video else JobConfig
    try:
        cfg = model.model_validate(data)
    except ValidationError as exc:
        lines: list[str] = []
        for err in exc.errors():
            if err["loc"][:1] == ("plan",) and err["type"] in ("dict_type", "string_type"):
                line = f"plan: must be an inline plan (a mapping) or a path to a plan YAML (got {err.get('input')!r})"
            else:
                line = _describe(err, _VIDEO_MODELS if video else _MODELS)
            if line not in lines:
                lines.append(line)
        raise ConfigError(f"invalid job config ({where}):\n  " + "\n  ".join(lines)) from None

    # the plan: a path (relative to the config) or inline (its style images relative to the config)
    try:
        if isinstance(cfg.plan, str):
            plan = load_plan(_resolve(cfg.plan, base))
        else:
            plan = load_plan(cfg.plan, base_dir=base)
    except PlanError as exc:
        lines = str(exc).splitlines()
        head, rest = lines[0], [ln.strip() for ln in lines[1:] if ln.strip()]
        if rest:
            msg = "\n  ".join(f"plan.{ln}" if not ln.startswith("<plan>") else "plan: " + ln[len("<plan>: "):] for ln in rest)
        else:
            msg = f"plan: {head}"
        raise ConfigError(f"invalid job config ({where}):\n  {msg}") from None

    if isinstance(cfg, VideoJobConfig):
        ann = cfg.input.annotations
        return cfg.model_copy(update={
            "input": VideoInputConfig(videos=_resolve(cfg.input.videos, base),
                                      annotations=_resolve(ann, base) if ann else None),
            "output": _resolve(cfg.output, base),
            "plan": plan.model_dump(mode="json", exclude_none=True),
        })
    from nstray.weights import REGISTRY

    ann = cfg.input.annotations
    seg = cfg.segment
    if seg is not None and seg.model is not None and seg.model not in REGISTRY:  # a checkpoint: a path or URI
        seg = seg.model_copy(update={"model": _resolve(seg.model, base)})
    return cfg.model_copy(update={
        "input": InputConfig(annotations=_resolve(ann, base) if ann else None, images=_resolve(cfg.input.images, base)),
        "output": _resolve(cfg.output, base),
        "plan": plan.model_dump(mode="json", exclude_none=True),
        "segment": seg,
    })
