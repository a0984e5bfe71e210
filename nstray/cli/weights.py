"""``nstray weights ...``: list, pull and push model weights (air-gapped clusters load them from S3).

* ``nstray weights list`` — the registry: name, source URI, sha256, whether the file is here.
* ``nstray weights pull NAME`` — on a machine with internet: fetch into the cache (torch hub cache for
  torchvision weights, ``$NSTRAY_CACHE`` for ``s3://``) and verify the checksum.
* ``nstray weights push NAME s3://bucket/prefix/`` — upload a resolved file to S3 (sha256 stored as
  object metadata), read it back to verify, and print the URI and sha256 to put in configs.

Checksums: registry sha256 where known; torchvision files carry the first hex digits of their
sha256 in the file name (``vgg19-dcbb9e9d.pth``), which is checked; ``s3://`` objects pushed here
carry their sha256 as metadata, which ``pull`` checks.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import click

_TV_SPEC = re.compile(r"^[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+$")
_TV_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_META_KEY = "sha256"


def _ref(name: str) -> str:
    """Accept a bare torchvision enum spec (``VGG19_Weights.IMAGENET1K_V1``) as ``torchvision://...``."""
    return f"torchvision://{name}" if _TV_SPEC.match(name) else name


def _is_torchvision(ref: str) -> bool:
    from nstray import weights as registry

    entry = registry.REGISTRY.get(ref)
    return (entry.uri if entry else ref).startswith("torchvision://")


def _check_torchvision_hash(path: Path, sha: str) -> None:
    """torchvision names its files ``<arch>-<first hex of sha256>.pth``: check that prefix."""
    from nstray.weights import WeightsChecksumError

    m = _TV_HASH.search(path.name)
    if m and not sha.startswith(m.group(1)):
        raise WeightsChecksumError(
            f"{path}: sha256 {sha} does not start with {m.group(1)} as its torchvision file name says; "
            "the download is corrupt: delete the file and pull again"
        )


def _s3_sha256(uri: str) -> str | None:
    """The sha256 stored as metadata on an S3 object by ``nstray weights push`` (None when absent)."""
    from nstray import storage

    loc = storage.parse(uri)
    try:
        head = storage.s3_client().head_object(Bucket=loc.bucket, Key=loc.path)
    except Exception as exc:
        raise storage._s3_error("check", uri, exc) from None
    return head.get("Metadata", {}).get(_META_KEY)


def _s3_object_sha256(uri: str) -> str:
    """Stream an S3 object and hash it (no copy on disk)."""
    from nstray import storage

    loc = storage.parse(uri)
    h = hashlib.sha256()
    try:
        body = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.path)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            h.update(chunk)
    except Exception as exc:
        raise storage._s3_error("read", uri, exc) from None
    return h.hexdigest()


@click.group()
def weights() -> None:
    """List, pull and push model weights."""


@weights.command("list")
def list_weights() -> None:
    """Show the registry: name, source, sha256 and whether the file is available here."""
    from rich.console import Console
    from rich.table import Table

    from nstray import weights as registry

    table = Table(title="nstray weights registry")
    for col in ("name", "source", "sha256", "here", "description"):
        table.add_column(col, overflow="fold")
    for name, entry in sorted(registry.REGISTRY.items()):
        try:
            registry.resolve(name)
            here = "[green]yes[/green]"
        except registry.WeightsNotFound:
            here = "[yellow]no[/yellow] (pull)" if entry.uri.startswith("torchvision://") else "[yellow]no[/yellow]"
        except registry.WeightsChecksumError:
            here = "[red]corrupt[/red]"
        table.add_row(name, entry.uri, entry.sha256[:16] + "…" if entry.sha256 else "-", here, entry.description)
    Console(width=max(120, Console().width)).print(table)


@weights.command()
@click.argument("name")
@click.option("--sha256", "expected", default=None, help="Expected sha256 (for files not in the registry).")
def pull(name: str, expected: str | None) -> None:
    """Fetch weights NAME into the local cache and verify them.

    NAME is a registry name (see `nstray weights list`), a torchvision weights spec
    (VGG19_Weights.IMAGENET1K_V1 or torchvision://...) or an s3:// URI; an object pushed by
    `nstray weights push` is checked against the sha256 stored with it.
    """
    from nstray import storage
    from nstray import weights as registry

    ref = _ref(name)
    try:
        if expected is None and storage.is_s3(ref):
            expected = _s3_sha256(ref)
        path = registry.resolve(ref, sha256=expected, download=True)
        sha = registry.sha256_file(path)
        if _is_torchvision(ref):
            _check_torchvision_hash(path, sha)
    except (registry.WeightsNotFound, registry.WeightsChecksumError, storage.StorageError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # network errors from torch.hub downloads
        raise click.ClickException(f"cannot download {name}: {exc}; without internet here, pull it on a machine that "
                                   "has it, then `nstray weights push` it to S3 and use the s3:// URI") from None
    click.echo(f"{name}: {path}")
    click.echo(f"  size   {path.stat().st_size:,} bytes")
    click.echo(f"  sha256 {sha} (verified)" if expected or _is_torchvision(ref) or name in registry.REGISTRY else f"  sha256 {sha}")


@weights.command()
@click.argument("name")
@click.argument("dest")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Read the object back and compare sha256.")
def push(name: str, dest: str, verify: bool) -> None:
    """Upload weights NAME (registry name, local file, torchvision spec) to DEST (s3://...).

    DEST ending in / gets the file's name appended. The sha256 is stored with the object and
    checked by reading it back; the URI and sha256 printed are what to pass as --weights (or put
    in a config) on machines without internet.
    """
    from nstray import storage
    from nstray import weights as registry

    if not storage.is_s3(dest):
        raise click.ClickException(f"DEST must be an s3:// URI (e.g. s3://bucket/weights/), got {dest!r}")
    ref = _ref(name)
    try:
        path = registry.resolve(ref)
        sha = registry.sha256_file(path)
        if _is_torchvision(ref):
            _check_torchvision_hash(path, sha)
    except (registry.WeightsNotFound, registry.WeightsChecksumError) as exc:
        raise click.ClickException(f"{exc}\n(pull it first: `nstray weights pull {name}`)") from None
    uri = storage.join(dest, path.name) if dest.endswith("/") else dest
    loc = storage.parse(uri)
    if not loc.path:
        raise click.ClickException(f"{dest!r} has no key: give s3://bucket/prefix/ or s3://bucket/key")
    try:
        storage.s3_client().upload_file(str(path), loc.bucket, loc.path, ExtraArgs={"Metadata": {_META_KEY: sha}})
    except Exception as exc:  # boto3 S3UploadFailedError, ClientError, connection errors
        raise click.ClickException(f"cannot upload {path} to {uri}: {exc}") from None
    if verify:
        try:
            remote = _s3_object_sha256(uri)
        except storage.StorageError as exc:
            raise click.ClickException(str(exc)) from None
        if remote != sha:
            raise click.ClickException(f"{uri}: uploaded object has sha256 {remote}, the file {sha}; upload again")
    click.echo(f"pushed {path} ({path.stat().st_size:,} bytes)")
    click.echo(f"  uri    {uri}")
    click.echo(f"  sha256 {sha}" + (" (verified on S3)" if verify else ""))
    click.echo(f"use it: --weights {uri}   (config: weights: {uri}, sha256: {sha})")
