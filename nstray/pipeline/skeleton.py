"""The skeleton every dataset job shares, whatever its unit of work (an image; later a chunk of a video).

    guarded(output, inputs)        the output may not overlap an input; one job per output (a lease)
    connect(address, resources)    Ray (an address, RAY_ADDRESS, or a new local cluster), the pool fitted to it
    stream(ds, writer, stats, …)   iterate the Ray Data pipeline, record manifest rows as they come, flush
    → pipeline seconds, Ray Data's own stats, actor restarts (for job_report.json)

What differs per kind of job (the records, their keys, the stages, the manifest columns, the derived files)
stays in that job's module (:mod:`nstray.pipeline.job` for images).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from nstray import _runtime, ray_session
from nstray.config import ResourcesConfig
from nstray.pipeline.lease import Lease
from nstray.pipeline.lease import acquire as acquire_lease
from nstray.pipeline.safety import check_output

__all__ = ["Placement", "place", "stage_env", "pool_strategy", "guarded", "connect", "Streamed", "stream", "ProgressFn",
           "MIN_CPUS_PER_ACTOR"]

log = logging.getLogger("nstray.job")

MIN_CPUS_PER_ACTOR = 0.25
ProgressFn = Callable[[int, int, int], None]  # (done, failed, total)


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


def place(resources: ResourcesConfig, cluster_cpus: float, cluster_gpus: float, *, local: bool = False) -> Placement:
    """Fit the configured actor pool to the cluster's CPUs/GPUs so the job runs instead of waiting forever.

    - ``gpus_per_actor > 0`` but no GPU in the cluster: CPU actors (when ``cpu_fallback``); without
      ``cpu_fallback``, on a ``local`` cluster (started by this process, so no GPU node will ever join)
      a :class:`~nstray.config.ConfigError` instead of a wait that never ends.
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
    if gpus > 0 and cluster_gpus <= 0 and local:
        from nstray.config import ConfigError

        raise ConfigError(
            f"resources.gpus_per_actor is {gpus:g} and resources.cpu_fallback is false, but the local Ray cluster "
            "nstray started has no GPU: the job would wait forever for one. Fix: set resources.cpu_fallback: true "
            "(run on CPU) or gpus_per_actor: 0, or run on a cluster with GPUs (--address / RAY_ADDRESS)"
        )
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


def _cluster_resources() -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


# CPU actors: glibc keeps freed memory for reuse (torch's CPU allocator has no cache, so every big
# intermediate is otherwise a fresh mmap + page faults) and OpenMP threads spin only briefly between
# ops (awake within a forward pass, asleep instead of spinning against the other actors' threads).
# (nstray/_runtime.py applies the same at import; the variables also cover what loads before nstray)
_CPU_ACTOR_ENV = _runtime.CPU_ENV
# the driver's storage settings reach every worker (never credentials: workers find those themselves)
_FORWARDED_ENV = ("NSTRAY_S3_MAX_ATTEMPTS", "NSTRAY_S3_RETRY_SECONDS", "NSTRAY_S3_CONNECT_TIMEOUT",
                  "NSTRAY_S3_READ_TIMEOUT", "AWS_ENDPOINT_URL",
                  "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def stage_env(placement: Placement) -> dict[str, str]:
    """Environment variables of the job's Ray tasks and actors (their ``runtime_env``)."""
    env = {k: os.environ[k] for k in _FORWARDED_ENV if os.environ.get(k)}
    if placement.gpus_per_actor == 0:
        env.update({k: os.environ.get(k, v) for k, v in _CPU_ACTOR_ENV.items()})
    return env




def pool_strategy(placement: Placement):
    """The Ray Data actor pool of ``placement`` (fixed size, or growing from ``min_actors`` to ``actors``).
    A dead actor is restarted and its batch retried: Ray Data's defaults (max_restarts, max_task_retries −1)."""
    import ray.data

    if placement.min_actors == placement.actors:
        return ray.data.ActorPoolStrategy(size=placement.actors)
    return ray.data.ActorPoolStrategy(min_size=placement.min_actors, max_size=placement.actors)


# ---------------------------------------------------------------- the skeleton


@contextlib.contextmanager
def guarded(output: str, inputs: Mapping[str, str], run_id: str, *,
            root_field: str = "input.images") -> Iterator[Lease]:
    """Refuse an output that overlaps an input (or lies inside ``inputs[root_field]``, the folder the job
    lists its inputs from), then hold the output's lease for the ``with`` block."""
    check_output(output, inputs, images_field=root_field)
    with acquire_lease(output, run_id) as lease:
        yield lease


def connect(address: str | None, resources: ResourcesConfig) -> tuple[Placement, float, float]:
    """Connect to Ray (once per process) and fit the actor pool to the cluster: ``(placement, cpus, gpus)``."""
    local = ray_session.init(address)
    if not ray_session.verbose():
        importlib.import_module("ray.data")  # configures its own loggers on import; quiet them after

        logging.getLogger("ray.data").setLevel(logging.ERROR)
    cpus, gpus = _cluster_resources()
    return place(resources, cpus, gpus, local=local), cpus, gpus


@dataclass
class Streamed:
    """What :func:`stream` measured."""

    pipeline_seconds: float
    ray_stats: str | None
    restarts: int | None


def stream(ds: Any, writer: Any, stats: Any, total: int, on_progress: ProgressFn | None = None) -> Streamed:
    """Iterate the lazy pipeline ``ds``; every batch of manifest rows goes to ``writer`` (a
    :class:`~nstray.pipeline.outputs.ManifestWriter`, flushed periodically and at the end even when
    interrupted) and ``stats`` (a :class:`~nstray.pipeline.report.RunStats`)."""
    t0 = time.perf_counter()
    since_ms = int(time.time() * 1000)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            writer.add(rows)
            stats.add(rows)
            if on_progress:
                on_progress(writer.done, writer.failed, total)
    finally:
        writer.flush()  # whatever finished is recorded, even when interrupted
    return Streamed(time.perf_counter() - t0, _ray_data_stats(ds), _actor_restarts(since_ms))


def flush_seconds() -> float:
    """How often the driver records finished outputs (a killed driver loses at most this much of the
    manifest; those outputs are then redone by the rerun, under the same keys)."""
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
