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

from nstray import _runtime, storage
from nstray.config import JobConfig, ResourcesConfig, load_config
from nstray.pipeline import outputs
from nstray.pipeline.report import REPORT_FILE, RunStats, stage_lines
from nstray.pipeline.stages import StageOptions, Stylizer, encode_write_batch, prepare_batch

__all__ = ["Placement", "place", "Work", "plan_work", "ensure_index", "JobSummary", "run_job", "INDEX_DIR"]

log = logging.getLogger("nstray.job")

INDEX_DIR = "_index"
_SUCCESS = "_SUCCESS.json"
MIN_CPUS_PER_ACTOR = 0.25


# ---------------------------------------------------------------- resources


@dataclass(frozen=True)
class Placement:
    """How the stylize stage is actually laid out on the cluster found (the config, fitted)."""

    actors: int  # pool size (max)
    min_actors: int  # pool starts with this many (== actors unless GPUs are short)
    cpus_per_actor: float  # logical CPUs each actor reserves
    gpus_per_actor: float
    threads: int  # torch threads per actor
    fused: bool
    notes: tuple[str, ...] = ()


def place(resources: ResourcesConfig, cluster_cpus: float, cluster_gpus: float) -> Placement:
    """Fit the configured actor pool to the cluster's CPUs/GPUs so the job runs instead of waiting forever.

    - ``gpus_per_actor > 0`` but no GPU in the cluster: CPU actors (when ``cpu_fallback``).
    - fewer GPUs than the pool needs: the pool starts with what fits and may grow to ``actors``.
    - one CPU stays free for reading the index (and the CPU stages when not fused); actors share the
      rest (logical CPUs shrink, down to 0.25 each, then the pool shrinks).
    """
    notes: list[str] = []
    gpus = resources.gpus_per_actor
    if gpus > 0 and cluster_gpus <= 0 and resources.cpu_fallback:
        notes.append("the cluster has no GPU: the stylizer actors run on CPU "
                     "(set resources.cpu_fallback: false to wait for GPU nodes instead)")
        gpus = 0.0
    fused = resources.fused(gpus)
    actors = resources.actors
    if actors == "auto":
        if gpus > 0:
            actors = max(1, int(cluster_gpus // gpus))
            notes.append(f"actors: auto: {actors} actor(s), one per {gpus:g} GPU of the cluster's {cluster_gpus:g}")
        else:
            spare = max(cluster_cpus - (1.0 if cluster_cpus >= 2 else cluster_cpus / 2), 0.0)
            actors = max(1, int(spare // resources.cpus_per_actor))
            notes.append(f"actors: auto: {actors} CPU actor(s) × {resources.cpus_per_actor:g} CPU")
    min_actors = actors
    if gpus > 0 and 0 < cluster_gpus < actors * gpus:
        min_actors = max(1, int(cluster_gpus // gpus))
        notes.append(f"the cluster has {cluster_gpus:g} GPU(s) for {actors} actors × {gpus:g}: starting {min_actors} "
                     f"actor(s), growing to {actors} as the cluster autoscaler adds GPUs")
    cpus = resources.cpus_per_actor
    threads = max(1, int(round(resources.cpus_per_actor)))
    reserve = 1.0 if cluster_cpus >= 2 else cluster_cpus / 2
    budget = max(cluster_cpus - reserve, 0.0)
    if cluster_cpus > 0 and min_actors * cpus > budget:
        wanted = (min_actors, cpus)
        if budget / min_actors < MIN_CPUS_PER_ACTOR:
            min_actors = max(1, int(budget // MIN_CPUS_PER_ACTOR))
            if gpus == 0:
                actors = min_actors
        cpus = max(budget / min_actors, 0.01) if budget > 0 else 0.01
        notes.append(f"the cluster has {cluster_cpus:g} CPU(s) and one stays free for reading: "
                     f"{min_actors} actor(s) × {cpus:.2f} logical CPU (asked {wanted[0]} × {wanted[1]:g}), "
                     f"{threads} torch thread(s) each")
    if gpus == 0:
        actors = min_actors
    return Placement(actors=actors, min_actors=min_actors, cpus_per_actor=round(cpus, 4), gpus_per_actor=gpus,
                     threads=threads, fused=fused, notes=tuple(notes))


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
    """
    from nstray.data.shards import write_index

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
class JobSummary:
    """What a run did. ``images_per_s``: outputs made per second of pipeline time."""

    output: str
    run_id: str
    records: int = 0
    bad_records: int = 0
    outputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    error_rows: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0
    images_per_s: float = 0.0
    written: list[str] = field(default_factory=list)
    placement: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)
    report: dict | None = None  # job_report.json of this run (None when there was nothing to do)

    def stage_lines(self) -> list[str]:
        """Where the time went (busy seconds per stage, actors, failures by reason), for the closing summary."""
        return stage_lines(self.report) if self.report else []

    def to_dict(self) -> dict:
        return asdict(self)


# manifest columns the driver keeps per output (resume, errors, COCO out); models and timings stay on disk
_KEPT = ("image_id", "variant", "source_file", "output_key", "width", "height", "styles", "seed", "fingerprint",
         "status", "stage", "error")

ProgressFn = Callable[[int, int, int], None]  # (done, failed, total)


def _cluster_resources() -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


def _reader_filesystem(uri: str):
    """``(filesystem, path)`` for Ray's Parquet readers, without credentials in it: each worker finds
    credentials itself through the standard AWS chain, so no secret travels in task specs."""
    return storage.pyarrow_filesystem(uri, with_credentials=False)


# CPU actors: glibc keeps freed memory for reuse (torch's CPU allocator has no cache, so every big
# intermediate is otherwise a fresh mmap + page faults) and idle OpenMP threads sleep instead of
# spinning against the other actors' threads. Measured 1.2–1.4× by benchmarks/feedforward.py.
# (nstray/_runtime.py applies the same at import; the variables also cover what loads before nstray)
_CPU_ACTOR_ENV = _runtime.CPU_ENV
# the driver's storage settings reach every worker (never credentials: workers find those themselves)
_FORWARDED_ENV = ("NSTRAY_S3_MAX_ATTEMPTS", "NSTRAY_S3_RETRY_SECONDS", "NSTRAY_S3_CONNECT_TIMEOUT",
                  "NSTRAY_S3_READ_TIMEOUT", "AWS_ENDPOINT_URL",
                  "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def stage_env(placement: Placement) -> dict[str, str]:
    """Environment variables of the job's Ray tasks and actors (their ``runtime_env``)."""
    import os

    env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
    if placement.gpus_per_actor == 0:
        env.update({k: os.environ.get(k, v) for k, v in _CPU_ACTOR_ENV.items()})
    return env


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
    if placement.min_actors == placement.actors:
        pool = ray.data.ActorPoolStrategy(size=placement.actors)
    else:
        pool = ray.data.ActorPoolStrategy(min_size=placement.min_actors, max_size=placement.actors)
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
) -> JobSummary:
    """Run (or resume) a dataset job; returns what it did.

    Connects to Ray (``address``, else ``RAY_ADDRESS``, else a new local cluster) only when there is
    work: a rerun of a finished job reads the manifest, finds nothing to do, and writes nothing.
    """
    from nstray.data.coco import load_coco, read_records

    say = notify or log.info
    t_start = time.perf_counter()
    cfg = load_config(config)
    out = cfg.output
    run_id = outputs.new_run_id()
    summary = JobSummary(output=out, run_id=run_id)

    coco = load_coco(cfg.input.annotations)
    categories = sorted({c["name"] for c in coco.get("categories", [])})
    plan = cfg.load_plan(categories=categories)  # part names must be the dataset's categories
    records, record_errors = read_records(coco, cfg.input.images, check_files=False,
                                          max_pixels=cfg.limits.max_pixels, source=cfg.input.annotations)
    by_id = {r.image_id: r for r in records}
    summary.records = len(records)
    summary.bad_records = len({(e.image_id, e.file_name) for e in record_errors})
    summary.outputs = len(records) * cfg.variants

    fingerprint = cfg.fingerprint()
    previous = outputs.read_manifest(out).select(list(_KEPT)).to_pylist()
    latest: dict[tuple[int, int], dict] = {(int(r["image_id"]), int(r["variant"])): r for r in previous}
    done = {k for k, r in latest.items() if r["status"] == "done" and r["fingerprint"] == fingerprint}
    work = plan_work([r.image_id for r in records], done, cfg.variants)
    summary.skipped = work.skipped

    writer = outputs.ManifestWriter(out, run_id, previous={k: (r["status"], r["stage"], r["error"])
                                                          for k, r in latest.items()}, keep=_KEPT,
                                    flush_seconds=_flush_seconds())
    stats = RunStats()
    ray_stats: str | None = None
    restarts: int | None = None
    if work.pending:
        import ray
        import ray.data

        if not ray.is_initialized():
            ray.init(address=address)
        cpus, gpus = _cluster_resources()
        placement = place(cfg.resources, cpus, gpus)
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
        )
        say(f"styling {work.outputs} output(s) of {len(todo)} image(s) ({summary.skipped} already done) "
            f"with {placement.actors} actor(s){' on GPU' if placement.gpus_per_actor else ' on CPU'}")
        ds = _build_dataset(cfg, shards, work, len(records), opts, placement)
        t0 = time.perf_counter()
        since_ms = int(time.time() * 1000)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = batch.to_pylist()
                writer.add(rows)
                stats.add(rows)
                if on_progress:
                    on_progress(writer.done, writer.failed, work.outputs)
        finally:
            writer.flush()  # whatever finished is recorded, even when interrupted
        summary.pipeline_seconds = time.perf_counter() - t0
        summary.written += writer.parts
        ray_stats = _ray_data_stats(ds)
        restarts = _actor_restarts(since_ms)
    summary.done, summary.failed = writer.done, writer.failed
    if summary.pipeline_seconds > 0:
        summary.images_per_s = summary.done / summary.pipeline_seconds

    for row in writer.rows:
        latest[(int(row["image_id"]), int(row["variant"]))] = row
    _finalize(cfg, coco, records, by_id, record_errors, latest, writer, fingerprint, summary)
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


def _flush_seconds() -> float:
    """How often the driver records finished outputs (a killed driver loses at most this much of the
    manifest; those outputs are then redone by the rerun, under the same keys)."""
    import os

    return float(os.environ.get("NSTRAY_MANIFEST_FLUSH_SECONDS", "10"))


def _ray_data_stats(ds: Any) -> str | None:
    """Ray Data's own per-operator timing of the run, as text (None if Ray cannot give it)."""
    try:
        return str(ds.stats())[:20000]
    except Exception:  # noqa: BLE001 - reporting must never fail the job
        return None


def _actor_restarts(since_ms: int) -> int | None:
    """Restarts of this job's Ray Data actors started since ``since_ms``, as the Ray GCS counts them.

    Uses Ray's internal actor table (the public state API needs the dashboard, which a cluster may not
    run); None when it is not available.
    """
    try:
        import ray
        from ray._private.state import state

        job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
        table = state.actor_table(None, job_id=job)
        return sum(int(a.get("NumRestarts", 0)) for a in table.values()
                   if "MapWorker" in str(a.get("ActorClassName", "")) and int(a.get("StartTime", 0)) >= since_ms)
    except Exception:  # noqa: BLE001
        return None


def _finalize(cfg: JobConfig, coco: dict, records: Sequence[Any], by_id: dict, record_errors: Sequence[Any],
              latest: dict[tuple[int, int], dict], writer: outputs.ManifestWriter, fingerprint: str,
              summary: JobSummary) -> None:
    """errors.parquet, annotations.json, contact_sheet.png: each rewritten only when what it shows changed."""

    out = cfg.output
    if summary.placement is not None:  # this run wrote outputs: no writer of it is left running now
        removed = storage.remove_partials(out)  # of writers killed mid-write (actors, an earlier driver)
        if removed:
            log.info("removed %d unfinished temporary file(s) under %s", removed, out)
        merged = outputs.compact_manifest(out, summary.run_id)
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
                   r["source_file"]) for r in done]
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
