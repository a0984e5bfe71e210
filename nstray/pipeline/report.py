"""Where a job's time went: per-stage seconds and rates, errors by reason, the actors and their restarts.

:class:`RunStats` folds the manifest rows the driver streams back (each carries its ``prepare_s``,
``stylize_s``, ``write_s``, status, error and ``worker``) into a few counters, so a job over millions of
images keeps no per-row data. :meth:`RunStats.report` gives the dict written as ``job_report.json``
beside the manifest; :func:`stage_lines` gives the closing summary's lines. Pure Python: no Ray here.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["STAGES", "RunStats", "RunSummary", "stage_lines", "REPORT_FILE"]

REPORT_FILE = "job_report.json"
STAGES = ("prepare", "stylize", "write")  # read+decode+masks | style (+device codec) | encode+write
_TOP_REASONS = 20


def _reason_key(row: dict) -> str:
    """``stage: reason`` without the fix and the record's own file name, so equal failures group."""
    reason = str(row.get("error") or "").partition("; fix: ")[0]
    name = str(row.get("source_file") or "")
    if name:
        reason = reason.replace(name, "<file>")
    return f"{row.get('stage') or '?'}: {reason}"


@dataclass
class RunStats:
    """Counters over one run's manifest rows (fed as they stream in)."""

    started: float = field(default_factory=time.monotonic)
    outputs: int = 0
    done: int = 0
    failed: int = 0
    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    busy_n: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    errors_by_stage: Counter = field(default_factory=Counter)
    errors_by_reason: Counter = field(default_factory=Counter)
    workers: Counter = field(default_factory=Counter)  # worker JSON without gpu_util → outputs it made
    gpu_util: dict[str, float] = field(default_factory=dict)  # same key → the latest gpu_util it reported
    first_at: float | None = None  # monotonic time the first rows arrived
    last_at: float | None = None
    _prepared: set = field(default_factory=set)  # image ids whose prepare time is counted (variants share it)
    _worker_keys: dict[str, tuple[str, float | None]] = field(default_factory=dict)  # raw worker JSON → parsed
    unit: tuple[str, ...] = ("image_id",)  # the columns naming what one prepare serves (a video chunk: more)

    def add(self, rows: Iterable[dict]) -> None:
        now = time.monotonic()
        for r in rows:
            self.outputs += 1
            if r["status"] == "done":
                self.done += 1
            else:
                self.failed += 1
                self.errors_by_stage[str(r.get("stage") or "?")] += 1
                self.errors_by_reason[_reason_key(r)] += 1
            unit = tuple(r[k] for k in self.unit)
            if unit not in self._prepared:
                self._prepared.add(unit)
                self._busy("prepare", r.get("prepare_s"))
            self._busy("stylize", r.get("stylize_s"))
            self._busy("write", r.get("write_s"))
            key, util = self._worker_key(str(r.get("worker") or "{}"))
            self.workers[key] += 1
            if util is not None:
                self.gpu_util[key] = util
            if self.first_at is None:
                self.first_at = now
            self.last_at = now

    def _worker_key(self, raw: str) -> tuple[str, float | None]:
        """An actor's identity (its worker JSON without the changing ``gpu_util``) and that figure; parsed
        once per distinct string (an actor's rows share it batch by batch)."""
        if raw not in self._worker_keys:
            if len(self._worker_keys) >= 100_000:  # a bound for very long jobs; re-parsing is only slower
                self._worker_keys.clear()
            try:
                info = json.loads(raw)
            except ValueError:
                info = None
            if isinstance(info, dict) and "gpu_util" in info:
                util = info.pop("gpu_util")
                self._worker_keys[raw] = (json.dumps(info, sort_keys=True), float(util) if util is not None else None)
            else:
                self._worker_keys[raw] = (raw, None)
        return self._worker_keys[raw]

    def _busy(self, stage: str, seconds: Any) -> None:
        if seconds is not None and seconds > 0:
            self.busy_s[stage] += float(seconds)
            self.busy_n[stage] += 1

    def stages(self) -> dict[str, dict]:
        """Per stage: busy seconds summed over workers, share of all busy time, ms per item, items/s per worker."""
        total = sum(self.busy_s.values()) or 1.0
        out = {}
        for st in STAGES:
            s, n = self.busy_s[st], self.busy_n[st]
            out[st] = {"busy_seconds": round(s, 3), "share": round(s / total, 4), "items": n,
                       "ms_per_item": round(1000 * s / n, 2) if n else None,
                       "items_per_s_per_worker": round(n / s, 3) if s > 0 else None}
        return out

    def worker_list(self) -> list[dict]:
        out = []
        for w, n in sorted(self.workers.items(), key=lambda kv: -kv[1]):
            try:
                info = json.loads(w)
            except ValueError:
                info = {}
            entry = dict(info, outputs=n)
            if w in self.gpu_util:
                entry["gpu_utilization"] = self.gpu_util[w]
            out.append(entry)
        return out

    def report(self, *, run_id: str, output: str, pipeline_seconds: float, seconds: float, skipped: int,
               bad_records: Sequence[Any] = (), placement: dict | None = None, actor_restarts: int | None = None,
               ray_stats: str | None = None) -> dict:
        """The ``job_report.json`` document of this run."""
        steady = None
        if self.first_at is not None and self.last_at is not None and self.last_at > self.first_at:
            steady = round(self.done / (self.last_at - self.first_at), 3)  # once the first outputs arrived
        coco = Counter(f"coco: {e.problem}" for e in bad_records)
        reasons = self.errors_by_reason + coco
        workers = self.worker_list()
        restarted_workers = sum(1 for w in workers if w.get("restarted"))
        utils = [w["gpu_utilization"] for w in workers if "gpu_utilization" in w]
        return {
            "run_id": run_id,
            "output": output,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 3),
            "pipeline_seconds": round(pipeline_seconds, 3),
            "outputs": {"this_run": self.outputs, "done": self.done, "failed": self.failed, "skipped": skipped},
            "images_per_s": round(self.done / pipeline_seconds, 3) if pipeline_seconds > 0 else None,
            "steady_images_per_s": steady,
            "stages": self.stages(),
            "errors": {"by_stage": dict(self.errors_by_stage), "bad_records": len({(e.image_id, e.file_name)
                                                                                   for e in bad_records}),
                       "by_reason": dict(reasons.most_common(_TOP_REASONS)),
                       "distinct_reasons": len(reasons)},
            "actors": {"placement": placement, "restarts": max(actor_restarts or 0, restarted_workers),
                       "restarts_seen_by_ray": actor_restarts, "workers": workers,
                       "devices": dict(Counter(str(w.get("device", "?")) for w in workers)),
                       # nvidia-smi's utilization.gpu of each GPU actor's GPU, averaged over the actor's life
                       "gpu_utilization_mean": round(sum(utils) / len(utils), 1) if utils else None},
            "ray_data_stats": ray_stats,
        }


@dataclass
class RunSummary:
    """What one run of a dataset job did, whatever its kind: outputs to make, done this run, already done
    (skipped), failed; time; files written; where things are; its ``job_report.json`` (None when there was
    nothing to do). Each job kind adds its own counters."""

    output: str
    run_id: str
    outputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0
    written: list[str] = field(default_factory=list)
    placement: dict | None = None
    paths: dict[str, str] = field(default_factory=dict)
    report: dict | None = None

    def stage_lines(self) -> list[str]:
        """Where the time went (busy seconds per stage, actors, failures by reason), for the closing summary."""
        return stage_lines(self.report) if self.report else []

    def to_dict(self) -> dict:
        return asdict(self)


def stage_lines(report: dict) -> list[str]:
    """The closing summary's lines about where the time went, from a report."""
    lines = []
    parts = []
    for st, v in report["stages"].items():
        if v["items"]:
            parts.append(f"{st} {v['busy_seconds']:.1f} s ({100 * v['share']:.0f}%, {v['ms_per_item']:.0f} ms each)")
    if parts:
        lines.append("busy time by stage (all workers): " + ", ".join(parts))
    a = report["actors"]
    devices = ", ".join(f"{n} on {d}" for d, n in sorted(a["devices"].items()))
    if a["workers"]:
        lines.append(f"actors: {len(a['workers'])} made outputs ({devices}); restarts: {a['restarts']}")
    utils = [w["gpu_utilization"] for w in a["workers"] if "gpu_utilization" in w]
    if utils:
        lines.append(f"GPU utilisation (nvidia-smi, while the actors ran): {a['gpu_utilization_mean']:.0f}% mean over "
                     f"{len(utils)} GPU actor(s), {min(utils):.0f}–{max(utils):.0f}%")
    reasons = report["errors"]["by_reason"]
    if reasons:
        lines.append("failures by reason: " + "; ".join(f"{n}× {r}" for r, n in list(reasons.items())[:5]))
    return lines
