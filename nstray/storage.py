"""One door to bytes: local paths, ``file://`` and ``s3://`` URIs.

S3 goes through boto3 with the standard AWS credential chain (env, profile,
instance role); ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` point it at any
S3-compatible server (SeaweedFS, MinIO). Credentials are never logged or stored.

Writes are atomic: a local file is written to a temporary sibling and renamed;
an S3 ``PutObject`` is atomic by design. So an object is visible whole or not at all.

Retries, bounded: botocore retries throttling (``SlowDown``, 503) and 5xx with exponential backoff
and full jitter (``NSTRAY_S3_MAX_ATTEMPTS`` tries, 10 by default: about a minute of throttling), but
backs off only milliseconds on connection errors, so an endpoint that is down for a few seconds
would fail every call at once. Calls that fail to connect are therefore retried again with capped
exponential backoff and full jitter until ``NSTRAY_S3_RETRY_SECONDS`` (60) have passed.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

__all__ = [
    "StorageError",
    "Location",
    "parse",
    "join",
    "is_s3",
    "read_bytes",
    "write_bytes",
    "exists",
    "delete",
    "remove_partials",
    "version_tag",
    "list_files",
    "list_sizes",
    "real_local_path",
    "inside",
    "Conflict",
    "create_exclusive",
    "replace_if",
    "delete_if",
    "read_tagged",
    "s3_client",
    "pyarrow_filesystem",
]


class StorageError(RuntimeError):
    """A read or write failed; the message names the URI and what to check."""


class Conflict(StorageError):
    """A conditional write or delete lost: the object exists (create) or is not the version expected."""


@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is ``"file"`` or ``"s3"``; ``path`` is the local path or the S3 key."""

    scheme: str
    bucket: str
    path: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.path}" if self.scheme == "s3" else self.path


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def parse(uri: str | os.PathLike) -> Location:
    """Parse ``s3://bucket/key``, ``file:///path`` or a plain path."""
    text = str(uri)
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text!r}: an S3 URI needs a bucket, e.g. s3://my-bucket/prefix")
        return Location("s3", bucket, key)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise StorageError(f"{text!r}: unsupported URI scheme; use a local path, file:// or s3://")
    return Location("file", "", text)


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI."""
    text = str(base)
    if is_s3(text):
        out = text.rstrip("/")
        for p in parts:
            if p:
                out += "/" + p.strip("/")
        return out
    return str(Path(parse(text).path, *parts))


def _retry_seconds() -> float:
    return float(os.environ.get("NSTRAY_S3_RETRY_SECONDS", "60"))


def _s3_call(fn):
    """``fn()`` again while it fails to reach the endpoint (connection refused, reset, timed out), with
    exponential backoff and full jitter, until ``NSTRAY_S3_RETRY_SECONDS`` have passed; then its error."""
    deadline = time.monotonic() + _retry_seconds()
    cap = 0.5
    while True:
        try:
            return fn()
        except _connection_errors() as exc:
            wait = random.uniform(0, cap)
            if time.monotonic() + wait > deadline:
                raise
            if cap == 0.5:  # say so on the first failure: a wrong endpoint should not look like a hang
                log.warning("cannot reach S3 at %s (%s); retrying for up to %g s (NSTRAY_S3_RETRY_SECONDS)",
                            _endpoint() or "the AWS default endpoint", type(exc).__name__, _retry_seconds())
            time.sleep(wait)
            cap = min(cap * 2, 8.0)


def _connection_errors() -> tuple[type[Exception], ...]:
    """The botocore errors of an endpoint that cannot be reached (imported lazily: local-only use needs no boto)."""
    from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    return (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _max_attempts() -> int:
    """botocore's tries per S3 call, the first included (``NSTRAY_S3_MAX_ATTEMPTS``, default 10: about a
    minute of throttling is ridden out before a record fails; connection failures: see :func:`_s3_call`)."""
    return int(os.environ.get("NSTRAY_S3_MAX_ATTEMPTS", "10"))


@functools.lru_cache(maxsize=None)
def _client(pid: int, max_attempts: int, endpoint: str | None):  # noqa: ARG001 - cache keys
    """One client per process (boto3 clients are not fork-safe) and per environment setting it reads."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "adaptive"},  # the first try included
        connect_timeout=float(os.environ.get("NSTRAY_S3_CONNECT_TIMEOUT", "5")),
        read_timeout=float(os.environ.get("NSTRAY_S3_READ_TIMEOUT", "60")),
    )
    return boto3.session.Session().client("s3", config=config)


def s3_client():
    """A boto3 S3 client (cached per process) with bounded adaptive retries (throttling, 503, 5xx)."""
    return _client(os.getpid(), _max_attempts(), _endpoint())


def _s3_error(action: str, uri: str, exc: Exception) -> StorageError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        hint = "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role"
    elif isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        hint = {
            "NoSuchKey": "the object does not exist",
            "404": "the object does not exist",
            "NoSuchBucket": "the bucket does not exist; create it or fix the URI",
            "AccessDenied": "access denied: check the credentials' permissions for this bucket",
            "403": "access denied: check the credentials' permissions for this bucket",
        }.get(code, f"S3 error {code}")
    else:
        hint = f"{type(exc).__name__}: {exc} (is the endpoint reachable? AWS_ENDPOINT_URL={_endpoint() or '<unset>'})"
        if isinstance(exc, _connection_errors()):
            hint += f"; retried for {_retry_seconds():g} s (NSTRAY_S3_RETRY_SECONDS)"
    return StorageError(f"cannot {action} {uri}: {hint}")


def real_local_path(path: str | os.PathLike) -> Path:
    """The real path of a local file or folder (symlinks resolved), even if its last parts do not exist yet."""
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(str(path)))))


def inside(uri: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``uri`` is ``root`` or lies below it: local paths after resolving symlinks, S3 by bucket and
    key prefix (on ``/`` boundaries). A local path and an S3 URI are never inside each other."""
    a, b = parse(uri), parse(root)
    if a.scheme != b.scheme:
        return False
    if a.scheme == "s3":
        if a.bucket != b.bucket:
            return False
        key, prefix = a.path.strip("/"), b.path.strip("/")
        return not prefix or key == prefix or key.startswith(prefix + "/")
    real, real_root = real_local_path(a.path), real_local_path(b.path)
    return real == real_root or real.is_relative_to(real_root)


def read_bytes(uri: str | os.PathLike, *, within: str | os.PathLike | None = None) -> bytes:
    """Read a whole object or file. With ``within`` (a local root), a file whose real path (symlinks
    resolved) lies outside that root is refused without being opened."""
    loc = parse(uri)
    if loc.scheme == "file":
        if within is not None and not is_s3(within) and not inside(loc.path, within):
            raise StorageError(f"cannot read {loc.path}: it resolves to {real_local_path(loc.path)}, outside the "
                               f"images root {real_local_path(parse(within).path)} (a symlink pointing out of it); "
                               "nstray reads only files inside the root: copy the file in instead of linking it")
        try:
            return Path(loc.path).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"cannot read {loc.path}: file not found") from None
        except IsADirectoryError:
            raise StorageError(f"cannot read {loc.path}: it is a directory, not a file") from None
        except OSError as exc:
            raise StorageError(f"cannot read {loc.path}: {exc.strerror}") from None
    try:
        return _s3_call(lambda: s3_client().get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read())
    except Exception as exc:  # botocore raises many types; all become one clear error
        raise _s3_error("read", str(uri), exc) from None


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a whole object or file atomically (never half-written under its final name)."""
    loc = parse(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # os.open honours the umask (mkstemp would force 0600 on every output)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise StorageError(f"cannot write {loc.path}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):  # disk full, a folder under the final name ...
                raise StorageError(f"cannot write {loc.path}: {exc.strerror or exc}") from None
            raise
        return
    try:
        _s3_call(lambda: s3_client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data))
    except Exception as exc:
        raise _s3_error("write", str(uri), exc) from None


def delete(uri: str | os.PathLike) -> None:
    """Remove a file or object (no error when it is already gone)."""
    loc = parse(uri)
    if loc.scheme == "file":
        Path(loc.path).unlink(missing_ok=True)
        return
    try:
        _s3_call(lambda: s3_client().delete_object(Bucket=loc.bucket, Key=loc.path))
    except Exception as exc:
        raise _s3_error("delete", str(uri), exc) from None


def remove_partials(folder: str | os.PathLike) -> int:
    """Remove the temporary ``.*.partial`` files that writers killed mid-write leave in a local folder
    (S3 puts are atomic and leave none); returns how many. Call only when no writer is running."""
    loc = parse(folder)
    if loc.scheme != "file" or not Path(loc.path).is_dir():
        return 0
    n = 0
    for p in Path(loc.path).rglob(".*.partial"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def exists(uri: str | os.PathLike) -> bool:
    loc = parse(uri)
    if loc.scheme == "file":
        return Path(loc.path).exists()
    from botocore.exceptions import ClientError

    try:
        _s3_call(lambda: s3_client().head_object(Bucket=loc.bucket, Key=loc.path))
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _s3_error("check", str(uri), exc) from None
    except Exception as exc:
        raise _s3_error("check", str(uri), exc) from None


def version_tag(uri: str | os.PathLike) -> str:
    """A string that changes when the object changes: S3 ETag, or a local file's size and mtime."""
    loc = parse(uri)
    if loc.scheme == "file":
        st = Path(loc.path).stat()
        return f"{st.st_size}-{st.st_mtime_ns}"
    try:
        return _s3_call(lambda: s3_client().head_object(Bucket=loc.bucket, Key=loc.path))["ETag"].strip('"')
    except Exception as exc:
        raise _s3_error("check", str(uri), exc) from None


def _listing(prefix: str | os.PathLike) -> Iterator[tuple[str, int]]:
    """``(URI, size)`` of every file/object below a folder or S3 prefix (recursively; local paths sorted,
    temporary ``.partial`` files left out); S3: one ``ListObjectsV2`` page per 1000 keys."""
    loc = parse(prefix)
    if loc.scheme == "file":
        root = Path(loc.path)
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and not p.name.endswith(".partial"):
                    try:
                        yield str(p), p.stat().st_size
                    except OSError:  # removed meanwhile
                        continue
        return
    key_prefix = loc.path.rstrip("/") + "/" if loc.path else ""
    token: dict[str, str] = {}
    while True:
        try:
            page = _s3_call(lambda: s3_client().list_objects_v2(Bucket=loc.bucket, Prefix=key_prefix, **token))
        except Exception as exc:
            raise _s3_error("list", str(prefix), exc) from None
        for obj in page.get("Contents", []):
            yield f"s3://{loc.bucket}/{obj['Key']}", int(obj["Size"])
        if not page.get("IsTruncated"):
            return
        token = {"ContinuationToken": page["NextContinuationToken"]}


def list_files(prefix: str | os.PathLike) -> Iterator[str]:
    """Yield URIs of every file/object below a folder or S3 prefix (recursively), sorted for local paths."""
    return (uri for uri, _ in _listing(prefix))


def list_sizes(prefix: str | os.PathLike) -> dict[str, int]:
    """Every file/object below a folder or S3 prefix with its size in bytes, in one listing (no request per object)."""
    return dict(_listing(prefix))


def _local_tag(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _precondition_failed(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
        "PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def create_exclusive(uri: str | os.PathLike, data: bytes) -> str:
    """Create ``uri`` only if it does not exist (local ``O_EXCL``; S3 ``If-None-Match: *``); returns its
    version tag (for :func:`replace_if` / :func:`delete_if`). Raises :class:`Conflict` when it exists."""
    loc = parse(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise Conflict(f"{loc.path} exists") from None
        except OSError as exc:
            raise StorageError(f"cannot write {loc.path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return _local_tag(data)
    try:
        return _s3_call(lambda: s3_client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data,
                                                       IfNoneMatch="*"))["ETag"].strip('"')
    except Exception as exc:
        if _precondition_failed(exc):
            raise Conflict(f"{uri} exists") from None
        raise _s3_error("write", str(uri), exc) from None


def read_tagged(uri: str | os.PathLike) -> tuple[bytes, str]:
    """A file's bytes and its version tag (S3 ETag; local: a hash of the content)."""
    loc = parse(uri)
    if loc.scheme == "file":
        data = read_bytes(uri)
        return data, _local_tag(data)
    try:
        resp = _s3_call(lambda: s3_client().get_object(Bucket=loc.bucket, Key=loc.path))
        return resp["Body"].read(), resp["ETag"].strip('"')
    except Exception as exc:
        raise _s3_error("read", str(uri), exc) from None


def replace_if(uri: str | os.PathLike, data: bytes, tag: str) -> str:
    """Overwrite ``uri`` only if it is still the version ``tag`` (S3 ``If-Match``; locally a compare then an
    atomic rename, which is safe against other nstray processes only up to that small window); returns the
    new tag. Raises :class:`Conflict` when another version is there (or none)."""
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            _, current = read_tagged(uri)
        except StorageError:
            raise Conflict(f"{loc.path} is gone") from None
        if current != tag:
            raise Conflict(f"{loc.path} was changed by another process")
        write_bytes(uri, data)
        return _local_tag(data)
    try:
        return _s3_call(lambda: s3_client().put_object(Bucket=loc.bucket, Key=loc.path, Body=data,
                                                       IfMatch=f'"{tag}"'))["ETag"].strip('"')
    except Exception as exc:
        if _precondition_failed(exc) or "NoSuchKey" in str(exc):
            raise Conflict(f"{uri} was changed by another process") from None
        raise _s3_error("write", str(uri), exc) from None


def delete_if(uri: str | os.PathLike, tag: str) -> bool:
    """Delete ``uri`` only if it is still the version ``tag``; returns whether it was deleted."""
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            _, current = read_tagged(uri)
        except StorageError:
            return False
        if current != tag:
            return False
        Path(loc.path).unlink(missing_ok=True)
        return True
    try:
        _s3_call(lambda: s3_client().delete_object(Bucket=loc.bucket, Key=loc.path, IfMatch=f'"{tag}"'))
        return True
    except Exception as exc:
        if _precondition_failed(exc):
            return False
        raise _s3_error("delete", str(uri), exc) from None


def pyarrow_filesystem(uri: str | os.PathLike, *, with_credentials: bool = True):
    """A ``(pyarrow.fs.FileSystem, path)`` pair for reading/writing Parquet at ``uri``.

    For S3 it takes endpoint and region from the same environment as boto3, and the credentials
    boto3 finds unless ``with_credentials=False`` (a filesystem shipped to Ray workers must carry no
    secret: pyarrow then resolves credentials on each worker through the standard AWS chain).
    """
    import pyarrow.fs as pafs

    loc = parse(uri)
    if loc.scheme == "file":
        return pafs.LocalFileSystem(), os.path.abspath(loc.path)
    import boto3

    creds = boto3.session.Session().get_credentials() if with_credentials else None
    endpoint = _endpoint()
    kwargs: dict = {}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or endpoint, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # the same bound as boto3's (throttling, 5xx and connection errors are retried with backoff)
    kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=_max_attempts())
    return pafs.S3FileSystem(**kwargs), f"{loc.bucket}/{loc.path}"
