"""The Ray Train set-up every nstray training shares: workers, checkpoints to local or S3, resume, curves.

Style training (:mod:`nstray.train.ray_trainer`) and segmentation training
(:mod:`nstray.train.seg_trainer`) differ in their step; what they share lives here once:

* :func:`fit` — connect to Ray, warn when the cluster lacks the resources, build the ``TorchTrainer``
  (``ScalingConfig`` of CPU or GPU workers, ``RunConfig(storage_path=OUT, name=NAME)`` on the
  output's pyarrow filesystem, the number of checkpoints kept, failures to recover from), run it, and
  turn a worker's error into one :class:`TrainingError` line;
* :func:`latest_checkpoint` — the newest ``checkpoint_NNNNNNN/<state file>`` stored under a run (the
  driver uses it to decide whether to resume, the workers as a fall-back to Ray's own snapshot);
* :func:`restore` / :func:`load_state` on the workers — the state to continue from, loaded with
  ``torch.load(weights_only=True)`` and checked to be the expected format;
* :func:`report_checkpoint` — rank 0 saves a checkpoint folder (``checkpoint_NNNNNNN``) through
  ``ray.train.report``, which uploads it to the run;
* :func:`publish_curves` — the history as CSV and JSON plus PNG plot(s) beside the checkpoints.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nstray import storage

__all__ = [
    "TrainConfigError",
    "TrainingError",
    "absolute_uri",
    "checkpoint_name",
    "fit",
    "latest_checkpoint",
    "load_state",
    "publish_curves",
    "report_checkpoint",
    "restore",
    "root_cause",
    "setting_problems",
    "worker_setup",
]

log = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    """Invalid training settings; the message lists every problem."""


class TrainingError(RuntimeError):
    """The training run failed or cannot start (existing run, unreadable input, worker error)."""


def setting_problems(config: object, minimums: Mapping[str, int], required: Sequence[str]) -> list[str]:
    """The common checks of a training config: integers below their minimum, required text fields left empty."""
    problems = [f"{key}: must be >= {low}, got {getattr(config, key)}"
                for key, low in minimums.items() if int(getattr(config, key)) < low]
    problems += [f"{key}: empty" for key in required if not str(getattr(config, key)).strip()]
    return problems


def checkpoint_name(index: int) -> str:
    """The folder of checkpoint ``index`` (a step or an epoch): ``checkpoint_0000500``."""
    return f"checkpoint_{int(index):07d}"


def latest_checkpoint(run_uri: str, state_file: str = "state.pt") -> tuple[int, str] | None:
    """``(index, URI of its state file)`` of the newest checkpoint stored under ``run_uri``, or None."""
    pattern = re.compile(r"(?:^|/)checkpoint_(\d+)/" + re.escape(state_file) + "$")
    best: tuple[int, str] | None = None
    for uri in storage.list_files(run_uri):
        m = pattern.search(uri)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), uri)
    return best


def load_state(data: bytes | str | Path, label: str, fmt: str) -> dict[str, Any]:
    """A training state saved by :func:`report_checkpoint`, loaded weights-only and checked to be ``fmt``."""
    from nstray.weights import WeightsLoadError, load_checkpoint

    try:
        state = load_checkpoint(io.BytesIO(data) if isinstance(data, bytes) else data, f"the training state {label}")
    except WeightsLoadError as exc:
        raise TrainingError(str(exc)) from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise TrainingError(f"{label} is not an nstray training state ({fmt})")
    return state


def restore(loop_config: Mapping[str, Any], state_file: str, fmt: str) -> dict[str, Any] | None:
    """On a worker: the state to resume from — Ray's latest checkpoint, else ``loop_config["resume_uri"]``."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        print(f"resuming from Ray Train's latest checkpoint {ckpt.path}", flush=True)
        # read straight from the checkpoint's storage: ``as_directory()`` shares one local download among the
        # node's workers, and a worker that arrives after the first download ends downloads again over the
        # file another worker is reading (a truncated state.pt now and then)
        path = f"{ckpt.path.rstrip('/')}/{state_file}"
        with ckpt.filesystem.open_input_stream(path) as f:
            return load_state(f.read(), path, fmt)
    uri = loop_config.get("resume_uri")
    if uri:
        print(f"resuming from {uri} (no checkpoint in Ray Train's run snapshot)", flush=True)
        return load_state(storage.read_bytes(uri), uri, fmt)
    return None


def worker_setup(cpus_per_worker: float) -> tuple[int, int, torch.device]:
    """On a worker: ``(rank, world size, device)``; on CPU, torch threads = the worker's CPUs."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cpus_per_worker)))
    return ctx.get_world_rank(), ctx.get_world_size(), device


def report_checkpoint(metrics: Mapping[str, Any], files: Mapping[str, bytes | Mapping[str, Any]], index: int) -> None:
    """Rank 0: save ``files`` (bytes, or dicts to ``torch.save``) as checkpoint ``index`` and report ``metrics``."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="nstray-ckpt-") as d:
        for name, content in files.items():
            if isinstance(content, bytes):
                (Path(d) / name).write_bytes(content)
            else:
                torch.save(dict(content), Path(d) / name)
        ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=checkpoint_name(index))


def publish_curves(run_uri: str, history: Sequence[Mapping[str, Any]], plots: Mapping[str, bytes],
                   stem: str = "losses", **extra: object) -> None:
    """Write ``STEM.csv``, ``STEM.json`` (with ``extra``) and each ``plots`` PNG (name -> bytes) into the run."""
    from nstray.train.curves import history_csv, history_json

    storage.write_bytes(storage.join(run_uri, f"{stem}.csv"), history_csv(history).encode())
    storage.write_bytes(storage.join(run_uri, f"{stem}.json"), history_json(history, run=run_uri, **extra).encode())
    for name, png in plots.items():
        storage.write_bytes(storage.join(run_uri, name), png)


def absolute_uri(uri: str | None) -> str | None:
    """Local paths made absolute (Ray workers run in other working directories); ``s3://`` unchanged."""
    if uri is None or storage.is_s3(uri):
        return uri
    return os.path.abspath(os.path.expanduser(storage.parse(uri).path))


def root_cause(exc: BaseException) -> str:
    """The first worker's error (Ray wraps it), else the controller's, else the error itself, as one line."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        cause = getattr(err, "cause", None) or err
        return f"worker {rank}: {type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    inner = getattr(exc, "controller_failure", None)
    return f"{type(inner or exc).__name__}: {inner or exc}"


def _check_resources(workers: int, cpus: float, gpus: float, notify: Callable[[str], None]) -> None:
    import ray

    have = ray.cluster_resources()
    need_cpu, need_gpu = workers * cpus, workers * gpus
    if have.get("CPU", 0) < need_cpu or have.get("GPU", 0) < need_gpu:
        notify(f"note: {workers} worker(s) need {need_cpu:g} CPU / {need_gpu:g} GPU; the cluster has "
               f"{have.get('CPU', 0):g} CPU / {have.get('GPU', 0):g} GPU now: waiting for the autoscaler "
               "(on a fixed cluster lower --workers / --gpus-per-worker)")


def _with_log_level(train_loop: Callable[[dict], None], level: str) -> Callable[[dict], None]:
    """``train_loop`` with Ray's loggers in the worker at ``level`` (Ray Train logs every report at INFO)."""

    def run(config: dict) -> None:
        ray_dir = f"{os.sep}ray{os.sep}"  # some of Ray Train's loggers are named by file path
        for name in ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray.") or ray_dir in n)]:
            logging.getLogger(name).setLevel(level)
        train_loop(config)

    return run


def fit(
    train_loop: Callable[[dict], None],
    loop_config: dict[str, Any],
    *,
    out: str,
    name: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    keep_checkpoints: int,
    max_failures: int,
    address: str | None,
    notify: Callable[[str], None],
) -> dict[str, float]:
    """Run ``train_loop`` on ``workers`` Ray Train workers (DDP), the run stored at ``out/name``; its last metrics.

    Connects to Ray (``address``, else ``RAY_ADDRESS``, else a new local cluster) unless already connected.
    """
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from nstray import ray_session

    local = ray_session.init(address, forward_worker_output=True)  # the loops print their epochs; Ray's own lines stay quiet
    _check_resources(workers, cpus_per_worker, gpus_per_worker, notify)
    fs, fs_path = storage.pyarrow_filesystem(out)
    resources = {"CPU": float(cpus_per_worker)}
    if gpus_per_worker > 0:
        resources["GPU"] = float(gpus_per_worker)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # a loop's print is shown once, as printed
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # a local cluster is never preempted
    logging.getLogger("ray.train").setLevel(ray_session.worker_log_level())
    trainer = TorchTrainer(
        _with_log_level(train_loop, ray_session.worker_log_level()),
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=fs_path, storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=FailureConfig(max_failures=max_failures),
            logging_config=ray.train.LoggingConfig(log_level=ray_session.worker_log_level()),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainingError(f"training failed: {root_cause(exc)}") from exc
    if result.error is not None:
        raise TrainingError(f"training failed: {root_cause(result.error)}")
    return {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
