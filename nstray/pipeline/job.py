"""The dataset job: config → resume plan → shard index → Ray Data pipeline → manifest, errors, COCO, sheet.

The driver only plans and summarizes: it reads the annotations, works out which outputs are still to
make (the manifest says which are done), writes the shard index, and streams manifest rows back from
the pipeline. It never loads a model; resources come from the config (fitted to the cluster it finds).

    index (Parquet) → read_parquet → [filter: pending images] → blocks of batch_size rows
        → prepare (CPU tasks) → Stylizer (actor pool, GPU or CPU) → encode + write (CPU tasks)
        → manifest rows → driver (iter_batches) → manifest/part-*.parquet

With ``fuse_stages`` (the default on CPU-only jobs) prepare and encode + write run inside the actors.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nstray import storage
from nstray.config import JobConfig, load_config
from nstray.pipeline import outputs
from nstray.pipeline.report import REPORT_FILE, RunStats, RunSummary
from nstray.pipeline.safety import job_inputs
from nstray.pipeline.skeleton import (Placement, ProgressFn, connect, flush_seconds, guarded, place, pool_strategy,
                                      stage_env, stream)
from nstray.pipeline.stages import StageOptions, Stylizer, encode_write_batch, prepare_batch
from nstray.preflight import check_plan_assets

__all__ = ["Placement", "place", "stage_env", "Work", "plan_work", "ensure_index", "JobSummary", "run_job",
           "INDEX_DIR"]

log = logging.getLogger("nstray.job")

INDEX_DIR = "_index"
_SUCCESS = "_SUCCESS.json"


# ---------------------------------------------------------------- resume


@dataclass(frozen=True)
class Work:
    """What this run has to make: pending variants per image id; how many outputs are already done."""

    pending: dict[int, tuple[int, ...]]
    skipped: int
    default: tuple[int, ...] = ()
    exceptions: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def outputs(self) -> int:
        return sum(len(v) for v in self.pending.values())


def plan_work(image_ids: Sequence[int], done: set[tuple[int, int]], variants: int) -> Work:
    """Pending variants per image (every variant not in ``done``), as a common default + exceptions."""
    pending: dict[int, tuple[int, ...]] = {}
    skipped = 0
    for image_id in image_ids:
        todo = tuple(v for v in range(variants) if (int(image_id), v) not in done)
        skipped += variants - len(todo)
        if todo:
            pending[int(image_id)] = todo
    common = Counter(pending.values()).most_common(1)
    default = common[0][0] if common else tuple(range(variants))
    exceptions = {k: v for k, v in pending.items() if v != default}
    return Work(pending=pending, skipped=skipped, default=default, exceptions=exceptions)


# ---------------------------------------------------------------- shard index


def ensure_index(output: str, records: Sequence[Any], rows_per_shard: int) -> list[str]:
    """The shard index of ``records`` under ``<output>/_index/<digest>/``, written once and reused.

    The folder name is a digest of the records, so a rerun over the same dataset writes nothing; a
    ``_SUCCESS.json`` (written last) lists the shards, so a half-written index is never used. Indexes
    of other datasets (stale) are removed once the new one is complete.

    Rows are ordered by image size (height, width, then id), so the blocks Ray Data cuts from the
    index, and so the stylizer's batches, hold images of one size: one forward pass per batch instead
    of one per size in it (what fills a GPU). Records of unknown size (0, an unlabeled folder) keep id order.
    """
    from nstray.data.shards import write_index

    records = sorted(records, key=lambda r: (r.height, r.width, r.image_id))
    rows = [r.to_row() for r in records]
    key = outputs.digest({"rows": rows, "rows_per_shard": rows_per_shard})[:20]
    root = storage.join(output, INDEX_DIR)
    folder = storage.join(root, key)
    marker = storage.join(folder, _SUCCESS)
    try:
        names = json.loads(storage.read_bytes(marker))["shards"]
        return [storage.join(folder, n) for n in names]
    except (storage.StorageError, ValueError, KeyError):
        pass
    shards = write_index(records, folder, rows_per_shard)
    storage.write_bytes(marker, json.dumps({"shards": [s.rsplit("/", 1)[-1] for s in shards],
                                            "rows": len(rows)}).encode())
    stale = [f for f in storage.list_files(root) if not f.startswith(folder.rstrip("/") + "/")]
    for f in stale:
        try:
            storage.delete(f)
        except Exception as exc:  # noqa: BLE001 - leftovers are harmless
            log.warning("could not remove stale index file %s (%s)", f, exc)
    return shards


# ---------------------------------------------------------------- summary


@dataclass
class JobSummary(RunSummary):
    """What a run did. ``images_per_s``: outputs made per second of pipeline time."""

    records: int = 0
    bad_records: int = 0
    redone: int = 0  # outputs the manifest recorded as done but found missing or damaged
    removed: int = 0  # superseded output files removed (e.g. the old extension after a format change)
    unexpected: int = 0  # files under images/ that are not outputs of this job (left in place)
    error_rows: int = 0
    images_per_s: float = 0.0


# manifest columns the driver keeps per output (resume, errors, COCO out); models and timings stay on disk
_KEPT = ("image_id", "variant", "source_file", "output_key", "width", "height", "styles", "seed", "fingerprint",
         "status", "stage", "error", "size", "sha256", "mask_source", "predicted")



def _reader_filesystem(uri: str):
    """``(filesystem, path)`` for Ray's Parquet readers, without credentials in it: each worker finds
    credentials itself through the standard AWS chain, so no secret travels in task specs."""
    return storage.pyarrow_filesystem(uri, with_credentials=False)


def _build_dataset(cfg: JobConfig, shards: Sequence[str], work: Work, n_index_rows: int, opts: StageOptions,
                   placement: Placement):
    """The lazy Ray Data pipeline (nothing runs until it is iterated)."""
    import ray
    import ray.data
    from ray.data.expressions import col

    fs, _ = _reader_filesystem(shards[0])
    paths = [_reader_filesystem(s)[1] for s in shards]
    b = cfg.resources.batch_size
    ds = ray.data.read_parquet(paths, filesystem=fs)
    if len(work.pending) < n_index_rows:
        ds = ds.filter(expr=col("image_id").is_in(sorted(work.pending)))
    ds = ds.repartition(target_num_rows_per_block=b)  # small blocks: every actor gets work
    env = stage_env(placement)
    remote: dict[str, Any] = {"runtime_env": {"env_vars": env}} if env else {}
    if not placement.fused:
        ds = ds.map_batches(prepare_batch, fn_kwargs={"opts": opts}, batch_size=b, num_cpus=1, **remote)
    pool = pool_strategy(placement)
    ds = ds.map_batches(
        Stylizer,
        fn_constructor_kwargs={"plan": cfg.plan, "opts": opts, "gpus": placement.gpus_per_actor,
                               "threads": placement.threads, "fused": placement.fused,
                               "precision": cfg.resources.precision},
        compute=pool,
        num_gpus=placement.gpus_per_actor or None,
        num_cpus=placement.cpus_per_actor,
        batch_size=b,
        **remote,
    )  # a dead actor is restarted and its batch retried: Ray Data's defaults (max_restarts, max_task_retries -1)
    if not placement.fused:
        ds = ds.map_batches(encode_write_batch, fn_kwargs={"opts": opts}, batch_size=b, num_cpus=1, **remote)
    return ds


def run_job(
    config: JobConfig | str | dict,
    *,
    address: str | None = None,
    on_progress: ProgressFn | None = None,
    notify: Callable[[str], None] | None = None,
    ray_progress_bars: bool = False,
    verify: bool = False,
) -> JobSummary:
    """Run (or resume) a dataset job; returns what it did.

    Before any work: the output must not overlap an input (:mod:`nstray.pipeline.safety`), and the job
    takes the output's lease (:mod:`nstray.pipeline.lease`: one job per output). Outputs the manifest records
    as done are checked against one listing of the output (missing or resized objects are redone; with
    ``verify`` every checksum is re-read too). Connects to Ray (``address``, else ``RAY_ADDRESS``, else a new
    local cluster) only when there is work: a rerun of a finished job finds nothing to do and writes nothing.
    """
    cfg = load_config(config)
    run_id = outputs.new_run_id()
    with guarded(cfg.output, job_inputs(cfg.input.annotations, cfg.input.images, cfg.plan,
                                        cfg.segment.model if cfg.segment else None), run_id):
        return _run_locked(cfg, run_id, address=address, on_progress=on_progress, notify=notify,
                           ray_progress_bars=ray_progress_bars, verify=verify)


def _segmenter_identity(cfg: JobConfig) -> dict | None:
    """The configured segmenter's identity and classes (:func:`nstray.segmentation.segmenter_identity`), or
    None; a missing or wrong checkpoint is a :class:`~nstray.config.ConfigError` naming ``segment.model``."""
    if cfg.segment is None or cfg.segment.model is None:
        return None
    from nstray.config import ConfigError
    from nstray.models.segmentation import SegmentationError
    from nstray.segmentation import segmenter_identity

    try:
        return segmenter_identity(cfg.segment.model)
    except SegmentationError as exc:
        raise ConfigError(f"segment.model: {exc}") from None


def _read_inputs(cfg: JobConfig, segmenter: dict | None) -> tuple[dict, list, list]:
    """``(source COCO, records, record errors)``: the annotations' records, or, for ``input: {images}`` alone,
    one record per image file (:func:`nstray.data.coco.listing_records`) and a COCO document of those images
    with the segmenter's classes as categories (what the styled set's ``annotations.json`` is built on)."""
    from nstray.data.coco import listing_records, load_coco, read_records

    if cfg.input.annotations is not None:
        coco = load_coco(cfg.input.annotations)
        records, errors = read_records(coco, cfg.input.images, check_files=False, max_pixels=cfg.limits.max_pixels,
                                       source=cfg.input.annotations)
        return coco, records, errors
    assert segmenter is not None  # the config refuses input without annotations and without segment.model
    records = listing_records(cfg.input.images)
    coco = {"info": {"description": f"images under {cfg.input.images}, parts predicted by {cfg.segment.model}"},
            "images": [{"id": r.image_id, "file_name": r.file_name} for r in records], "annotations": [],
            "categories": [{"id": k, "name": c, "supercategory": "vehicle_part"}
                           for k, c in enumerate(segmenter["classes"]) if k]}
    return coco, records, []


def _resume_state(cfg: JobConfig, by_id: dict, fingerprint: str, verify: bool,
                  say: Callable[[str], None]) -> tuple[dict, dict, dict[str, int], int]:
    """``(latest row per output, done rows still valid, output listing, how many were found bad)``."""
    out = cfg.output
    previous = outputs.read_manifest(out).select(list(_KEPT)).to_pylist()
    latest: dict[tuple[int, int], dict] = {(int(r["image_id"]), int(r["variant"])): r for r in previous}
    done_rows = {k: r for k, r in latest.items() if r["status"] == "done" and r["fingerprint"] == fingerprint
                 and k[0] in by_id and k[1] < cfg.variants
                 and r["source_file"] == by_id[k[0]].file_name}  # an id now naming another file is redone
    sizes = outputs.output_sizes(out)
    bad = outputs.check_outputs(out, done_rows, sizes, deep=verify) if done_rows else {}
    if bad:
        reasons = Counter(why if why == "missing" or "checksum" in why else "size differs" for why in bad.values())
        shown = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
        example = next(iter(sorted(bad)))
        say(f"{len(bad)} output(s) the manifest records as done are not there as recorded ({shown}; e.g. "
            f"{done_rows[example]['output_key']}: {bad[example]}): redoing them")
        for k in bad:
            del done_rows[k]
    elif verify and done_rows:
        say(f"verified {len(done_rows)} done output(s): every checksum matches the manifest")
    return latest, done_rows, sizes, len(bad)


def _run_locked(cfg: JobConfig, run_id: str, *, address: str | None, on_progress: ProgressFn | None,
                notify: Callable[[str], None] | None, ray_progress_bars: bool, verify: bool) -> JobSummary:
    """:func:`run_job` once the output's lease is held."""
    say = notify or log.info
    t_start = time.perf_counter()
    out = cfg.output
    summary = JobSummary(output=out, run_id=run_id)

    segmenter = _segmenter_identity(cfg)  # the checkpoint is there and is a segmenter, before Ray starts
    coco, records, record_errors = _read_inputs(cfg, segmenter)
    categories = sorted({c["name"] for c in coco.get("categories", [])})
    plan = cfg.load_plan(categories=categories)  # part names must be the dataset's (or the segmenter's) categories
    check_plan_assets(plan, max_pixels=cfg.limits.max_pixels)  # style images and weights load, before Ray starts
    by_id = {r.image_id: r for r in records}
    summary.records = len(records)
    summary.bad_records = len({(e.image_id, e.file_name) for e in record_errors})
    summary.outputs = len(records) * cfg.variants

    fingerprint = cfg.fingerprint({k: segmenter[k] for k in ("sha256", "bytes")} if segmenter else None)
    latest, done_rows, sizes, summary.redone = _resume_state(cfg, by_id, fingerprint, verify, say)
    work = plan_work([r.image_id for r in records], set(done_rows), cfg.variants)
    summary.skipped = work.skipped

    writer = outputs.ManifestWriter(out, run_id, previous={k: (r["status"], r["stage"], r["error"])
                                                          for k, r in latest.items()}, keep=_KEPT,
                                    flush_seconds=flush_seconds())
    stats = RunStats()
    ray_stats: str | None = None
    restarts: int | None = None
    if work.pending:
        import ray.data

        placement, cpus, gpus = connect(address, cfg.resources)
        summary.placement = asdict(placement)
        for note in placement.notes:
            say(note)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = ray_progress_bars

        todo = [by_id[i] for i in sorted(work.pending)]
        shards = ensure_index(out, records, cfg.rows_per_shard)
        opts = StageOptions(
            output=out, ext=cfg.format.ext, quality=cfg.format.quality, max_pixels=cfg.limits.max_pixels,
            overlaps=plan.overlaps if isinstance(plan.overlaps, str) else tuple(plan.overlaps),
            seed=cfg.seed, fingerprint=fingerprint, variants=work.default, exceptions=work.exceptions,
            device_codec=cfg.resources.device_codec(placement.gpus_per_actor, cpus / gpus if gpus else float("inf")),
            images_root=cfg.input.images,
            boxes=cfg.segment.boxes if cfg.segment else "auto",
            segment_model=cfg.segment.model if cfg.segment else None,
            segment_size=cfg.segment.size if cfg.segment else 520,
            segment_id=(("name", segmenter["uri"].rstrip("/").rsplit("/", 1)[-1]), ("uri", segmenter["uri"]),
                        ("sha256", segmenter["sha256"])) if segmenter else (),
        )
        say(f"styling {work.outputs} output(s) of {len(todo)} image(s) ({summary.skipped} already done) "
            f"with {placement.actors} actor(s){' on GPU' if placement.gpus_per_actor else ' on CPU'}")
        ds = _build_dataset(cfg, shards, work, len(records), opts, placement)
        streamed = stream(ds, writer, stats, work.outputs, on_progress)
        summary.pipeline_seconds = streamed.pipeline_seconds
        summary.written += writer.parts
        ray_stats, restarts = streamed.ray_stats, streamed.restarts
    summary.done, summary.failed = writer.done, writer.failed
    if summary.pipeline_seconds > 0:
        summary.images_per_s = summary.done / summary.pipeline_seconds

    for row in writer.rows:
        latest[(int(row["image_id"]), int(row["variant"]))] = row
    _finalize(cfg, coco, records, by_id, record_errors, latest, writer, fingerprint, summary,
              compact=writer.superseded > 0)
    _tidy_outputs(cfg, latest, fingerprint, sizes, summary, say)
    summary.seconds = time.perf_counter() - t_start
    if work.pending:  # a run with nothing to do writes nothing, not even a report
        summary.report = stats.report(run_id=run_id, output=out, pipeline_seconds=summary.pipeline_seconds,
                                      seconds=summary.seconds, skipped=summary.skipped, bad_records=record_errors,
                                      placement=summary.placement, actor_restarts=restarts, ray_stats=ray_stats)
        uri = storage.join(out, REPORT_FILE)
        storage.write_bytes(uri, json.dumps(summary.report, indent=1, default=str).encode())
        summary.paths["report"] = uri
        summary.written.append(uri)
    return summary


def _tidy_outputs(cfg: JobConfig, latest: dict[tuple[int, int], dict], fingerprint: str, sizes: dict[str, int],
                  summary: JobSummary, say: Callable[[str], None]) -> None:
    """Remove the files that outputs done under a new key left behind (another extension after a format
    change); report, without touching them, files of variants or images this job no longer makes."""
    done = {k: r for k, r in latest.items() if r["status"] == "done" and r["fingerprint"] == fingerprint}
    superseded, other = outputs.stale_outputs(sizes, done)
    for key in superseded:
        storage.delete(storage.join(cfg.output, key))
    summary.removed = len(superseded)
    summary.unexpected = len(other)
    if superseded:
        say(f"removed {len(superseded)} superseded output file(s) (e.g. {superseded[0]}: that output is now "
            f"{done[_variant_key(superseded[0])]['output_key']})")
    if other:
        say(f"{len(other)} file(s) under {storage.join(cfg.output, 'images')} are not outputs of this job "
            f"(e.g. {other[0]}: a variant or image it no longer makes, or not written by nstray); left in place")


def _variant_key(key: str) -> tuple[int, int]:
    parts = key.split("/")
    return int(parts[1]), int(parts[2].split(".")[0])


def _finalize(cfg: JobConfig, coco: dict, records: Sequence[Any], by_id: dict, record_errors: Sequence[Any],
              latest: dict[tuple[int, int], dict], writer: outputs.ManifestWriter, fingerprint: str,
              summary: JobSummary, *, compact: bool = False) -> None:
    """errors.parquet, annotations.json, contact_sheet.png: each rewritten only when what it shows changed."""

    out = cfg.output
    if summary.placement is not None:  # this run wrote outputs: no writer of it is left running now
        removed = storage.remove_partials(out)  # of writers killed mid-write (actors, an earlier driver)
        if removed:
            log.info("removed %d unfinished temporary file(s) under %s", removed, out)
        merged = outputs.compact_manifest(out, summary.run_id, force=compact)
        if merged:
            summary.written.append(merged)
    state = outputs.read_state(out)
    new_state = dict(state)
    paths = {
        "images": storage.join(out, "images"),
        "outputs": storage.join(out, "images", "<image_id>", f"<variant>.{cfg.format.ext}"),
        "manifest": storage.join(out, outputs.MANIFEST_DIR),
        "errors": storage.join(out, outputs.ERRORS_FILE),
        "annotations": storage.join(out, outputs.ANNOTATIONS_FILE),
        "contact_sheet": storage.join(out, outputs.CONTACT_SHEET_FILE),
    }
    summary.paths = paths

    # errors of the latest run: the annotations' bad records + this run's failures
    failed = [r for r in writer.rows if r["status"] != "done"]
    err_rows = outputs.error_rows(record_errors, failed)
    summary.error_rows = len(err_rows)
    d = outputs.digest(err_rows)
    if state.get("errors") != d or not storage.exists(paths["errors"]):
        outputs.write_errors(out, err_rows)
        summary.written.append(paths["errors"])
    new_state["errors"] = d

    done = [r for k, r in sorted(latest.items())
            if r["status"] == "done" and r["fingerprint"] == fingerprint and k[0] in by_id and k[1] < cfg.variants]
    essentials = [(r["image_id"], r["variant"], r["output_key"], r["styles"], r["seed"], r["width"], r["height"],
                   r["source_file"], r.get("mask_source"), outputs.digest(r.get("predicted"))) for r in done]
    d = outputs.digest({"coco": outputs.digest(coco), "done": essentials})
    if state.get("annotations") != d or not storage.exists(paths["annotations"]):
        styled = outputs.build_coco(coco, done)
        storage.write_bytes(paths["annotations"], json.dumps(styled, separators=(",", ":")).encode())
        summary.written.append(paths["annotations"])
    new_state["annotations"] = d

    if cfg.contact_sheet > 0 and done:
        per_image: dict[int, list[dict]] = {}
        for r in done:
            per_image.setdefault(int(r["image_id"]), []).append(r)
        chosen = sorted(per_image)[: cfg.contact_sheet]
        rows = [(f"#{i}", by_id[i].uri, [(int(r["variant"]), storage.join(out, r["output_key"]))
                                         for r in per_image[i][:3]]) for i in chosen]
        d = outputs.digest({"rows": rows, "fingerprint": fingerprint})
        if state.get("contact_sheet") != d or not storage.exists(paths["contact_sheet"]):
            try:
                png = outputs.render_contact_sheet(rows, max_pixels=cfg.limits.max_pixels)
                storage.write_bytes(paths["contact_sheet"], png)
                summary.written.append(paths["contact_sheet"])
                new_state["contact_sheet"] = d
            except Exception as exc:  # noqa: BLE001 - a preview must not fail the job
                log.warning("could not render the contact sheet: %s", exc)
    if new_state != state:
        outputs.write_state(out, new_state)
