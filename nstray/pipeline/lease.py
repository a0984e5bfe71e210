"""One job per output: a lease object under the output root, taken atomically, kept alive, released.

``<output>/_lease.json`` holds the holder (run id), host, pid, start time and last heartbeat. It is created
with an exclusive create (local ``O_EXCL``; S3 ``If-None-Match: *``), so of two jobs started on one output
only one gets it; the other refuses with a message naming the holder. The holder rewrites it every
``NSTRAY_LEASE_HEARTBEAT_SECONDS`` (10) with a conditional write (S3 ``If-Match``), and deletes it at
the end. A lease is *stale*, and is taken over (again by a conditional write, so only one taker wins), when
its heartbeat is older than ``NSTRAY_LEASE_STALE_SECONDS`` (120), or at once when its holder ran on this
host and that process is gone (a killed driver's rerun needs no wait).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from nstray import storage

__all__ = ["LEASE_FILE", "LeaseHeld", "Lease", "acquire"]

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"


class LeaseHeld(storage.StorageError):
    """Another job holds the output's lease; the message names it and says what to do."""


def _heartbeat_seconds() -> float:
    return float(os.environ.get("NSTRAY_LEASE_HEARTBEAT_SECONDS", "10"))


def _stale_seconds() -> float:
    return float(os.environ.get("NSTRAY_LEASE_STALE_SECONDS", "120"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict) -> str:
    age = time.time() - float(info.get("heartbeat", 0))
    return (f"run {info.get('holder', '?')} on host {info.get('host', '?')} (pid {info.get('pid', '?')}), "
            f"started {info.get('started_at', '?')}, last heartbeat {age:.0f} s ago")


def _stale_reason(info: dict) -> str | None:
    """Why a lease may be taken over, or None when its holder looks alive."""
    age = time.time() - float(info.get("heartbeat", 0))
    if age > _stale_seconds():
        return f"no heartbeat for {age:.0f} s (NSTRAY_LEASE_STALE_SECONDS={_stale_seconds():g})"
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) and not _pid_alive(info["pid"]):
        return f"its process {info['pid']} on this host is gone"
    return None


@dataclass
class Lease:
    """A held lease; :meth:`release` (or leaving the ``with`` block) gives it back."""

    uri: str
    info: dict
    tag: str
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None
    lost: bool = False

    def _payload(self) -> bytes:
        return json.dumps(self.info, sort_keys=True).encode()

    def heartbeat(self) -> None:
        """Refresh the heartbeat (a conditional write: a lease taken over by another job is not overwritten)."""
        self.info["heartbeat"] = time.time()
        try:
            self.tag = storage.replace_if(self.uri, self._payload(), self.tag)
        except storage.Conflict:
            if not self.lost:
                log.warning("the lease %s was taken over by another job; this run goes on, but two jobs now write "
                            "to one output", self.uri)
            self.lost = True
        except storage.StorageError as exc:  # a storage hiccup: try again at the next beat
            log.warning("could not refresh the lease %s (%s)", self.uri, exc)

    def _beat(self) -> None:
        assert self._stop is not None
        while not self._stop.wait(_heartbeat_seconds()):
            self.heartbeat()

    def start(self) -> Lease:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="nstray-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=5)
        if not self.lost:
            try:
                storage.delete_if(self.uri, self.tag)
            except storage.StorageError as exc:
                log.warning("could not release the lease %s (%s); the next job takes it over once stale", self.uri, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(output: str, holder: str) -> Lease:
    """Take the lease of ``output`` for run ``holder`` (and start its heartbeat), or raise :class:`LeaseHeld`."""
    uri = storage.join(output, LEASE_FILE)
    now = time.time()
    info = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "heartbeat": now}
    payload = json.dumps(info, sort_keys=True).encode()
    for _ in range(3):
        try:
            tag = storage.create_exclusive(uri, payload)
            return Lease(uri, info, tag).start()
        except storage.Conflict:
            pass
        try:
            data, tag = storage.read_tagged(uri)
        except storage.StorageError:
            continue  # released between our create and read: try again
        try:
            held = json.loads(data)
            if not isinstance(held, dict):
                raise ValueError
        except ValueError:
            held = {}
        why = _stale_reason(held)
        if why is None:
            raise LeaseHeld(
                f"another job is writing to {output}: {_describe(held)}. Wait for it to finish, or write to another "
                f"output; if that job is dead, its lease ({uri}) is taken over once stale "
                f"(after {_stale_seconds():g} s without a heartbeat, NSTRAY_LEASE_STALE_SECONDS)")
        try:
            tag = storage.replace_if(uri, payload, tag)
        except storage.Conflict:
            continue  # another job took it over first: look again
        log.warning("took over the stale lease of %s: %s", output, why)
        return Lease(uri, info, tag).start()
    raise LeaseHeld(f"could not take the lease {uri}: other jobs keep taking it; try again")
