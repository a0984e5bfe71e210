"""Connecting to Ray without Ray's log noise: a user sees nstray's own lines; Ray's INFO/WARNING lines and its
C++ core-worker lines only with ``nstray --verbose`` (which sets ``NSTRAY_VERBOSE=1``).

One place for the dataset jobs (:mod:`nstray.pipeline.skeleton`) and the training runs
(:mod:`nstray.train.ray_run`). Jobs report through the driver, so they drop worker output; training loops
print their per-epoch lines in the workers, so those are forwarded while Ray's own loggers there are held at
warnings and errors (:func:`worker_log_level`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

__all__ = ["verbose", "init", "worker_log_level"]


def verbose() -> bool:
    """Whether Ray's own log lines are shown (``nstray --verbose`` sets ``NSTRAY_VERBOSE=1``)."""
    return os.environ.get("NSTRAY_VERBOSE", "") not in ("", "0")


def worker_log_level() -> str:
    """The level of Ray's loggers in workers: INFO with ``--verbose``, else ERROR."""
    return "INFO" if verbose() else "ERROR"


@contextlib.contextmanager
def _stderr_silenced(on: bool) -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C++ writes there directly); Python exceptions still propagate."""
    if not on:
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(address: str | None, *, forward_worker_output: bool = False) -> bool:
    """Connect to Ray at ``address`` (else ``RAY_ADDRESS``, else a new local cluster) unless connected already.

    ``forward_worker_output``: show what workers print (training progress) even when quiet. Returns whether
    this process runs a local head it started itself (False when it joined a cluster or was connected).
    """
    import ray

    if ray.is_initialized():
        return False
    quiet = not verbose()
    if quiet and not forward_worker_output:  # the driver's C++ core worker logs to stderr (e.g. actor restarts);
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # (every worker says so when it is set: not forwarded)
    extra: dict = {}
    api_var = "RAY_API_SERVER_ADDRESS"
    own = address is None and not os.environ.get("RAY_ADDRESS") and not os.environ.get(api_var)
    if own:
        # A new local cluster: its dashboard on a port chosen here, and the cluster's processes (which inherit this
        # environment at start) told where it is. Ray's state API otherwise finds the cluster by scanning for GCS
        # processes, which fails when another Ray cluster runs on the machine (Ray Train's placement-group
        # cleaner then dies with a traceback). This process forgets it again after start-up.
        extra["dashboard_port"] = port = _free_port()
        os.environ[api_var] = f"http://127.0.0.1:{port}"
    try:
        with _stderr_silenced(quiet):  # ... and says so at start-up, in C++, before any Python logger applies
            ray.init(address=address, logging_level=logging.ERROR if quiet else logging.INFO,
                     log_to_driver=forward_worker_output or not quiet,
                     logging_config=ray.LoggingConfig(log_level=worker_log_level()), **extra)
    finally:
        if own:
            os.environ.pop(api_var, None)
    return bool(getattr(ray._private.worker._global_node, "head", False))
