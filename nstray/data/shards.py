"""The shard index: Parquet files ``shard-00000.parquet`` ... under a folder or ``s3://`` prefix.

One row per image (:meth:`ImageRecord.to_row`), so ``ray.data.read_parquet(uri)``
streams it shard by shard. Each shard is written whole (``storage.write_bytes`` is
atomic); rewriting an index replaces its shards and removes stale ones beyond the new
count, so a rerun is idempotent.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

from nstray import storage
from nstray.data.coco import DatasetError, ImageRecord

__all__ = ["DEFAULT_ROWS_PER_SHARD", "index_schema", "shard_name", "write_index", "list_shards", "read_index"]

DEFAULT_ROWS_PER_SHARD = 1000
_SHARD = re.compile(r"shard-(\d{5,})\.parquet$")


def index_schema():
    """The Arrow schema of an index shard."""
    import pyarrow as pa

    return pa.schema([
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("num_parts", pa.int32()),
        ("box_only_parts", pa.int32()),
        ("categories", pa.list_(pa.string())),
        ("parts", pa.string()),  # JSON list of Part dicts: lossless, and simple for Ray rows
    ])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def list_shards(uri: str) -> list[str]:
    """URIs of the ``shard-*.parquet`` files directly under ``uri``, in shard order."""
    return [f for _, f in _numbered_shards(uri)]


def _numbered_shards(uri: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    if storage.is_s3(uri):
        base = str(uri).rstrip("/")
        for f in storage.list_files(base):
            m = _SHARD.fullmatch(f[len(base):].lstrip("/"))
            if m:
                found.append((int(m.group(1)), f))
    else:
        from pathlib import Path

        folder = Path(storage.parse(uri).path)
        if folder.is_dir():
            for p in folder.iterdir():
                m = _SHARD.fullmatch(p.name)
                if m and p.is_file():
                    found.append((int(m.group(1)), str(p)))
    return sorted(found)


def _delete(uri: str) -> None:
    fs, path = storage.pyarrow_filesystem(uri)
    fs.delete_file(path)


def write_index(records: Sequence[ImageRecord], uri: str, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> list[str]:
    """Write ``records`` as Parquet shards under ``uri``; return the shard URIs.

    Always at least one shard (an empty one, with the schema, for no records), so
    readers of an empty index still see its columns.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    schema = index_schema()
    rows = [r.to_row() for r in records]
    chunks = [rows[i:i + rows_per_shard] for i in range(0, len(rows), rows_per_shard)] or [[]]
    written = []
    for n, chunk in enumerate(chunks):
        table = pa.Table.from_pylist(chunk, schema=schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        target = storage.join(uri, shard_name(n))
        storage.write_bytes(target, buf.getvalue())
        written.append(target)
    for n, stale in _numbered_shards(uri):
        if n >= len(chunks):  # left over from an earlier, larger index
            _delete(stale)
    return written


def read_index(uri: str) -> list[ImageRecord]:
    """Read every shard under ``uri`` back into records (shard order, then row order)."""
    import pyarrow.parquet as pq

    shards = list_shards(uri)
    if not shards:
        raise DatasetError(f"{uri}: no shard-*.parquet files found; fix: write the index first (nstray datasets index)")
    records: list[ImageRecord] = []
    for shard in shards:
        try:
            table = pq.read_table(io.BytesIO(storage.read_bytes(shard)))
        except storage.StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid & co on corrupt files
            raise DatasetError(f"{shard}: not a readable Parquet shard ({exc}); fix: rewrite the index") from None
        records.extend(ImageRecord.from_row(row) for row in table.to_pylist())
    return records
