"""shards: the Parquet index round-trips losslessly (local and S3), replaces stale shards, reads as one Parquet dataset."""

from __future__ import annotations

import pytest

from nstray import storage
from nstray.data.coco import DatasetError, ImageRecord, Part
from nstray.data.shards import list_shards, read_index, write_index


def make_records(n: int) -> list[ImageRecord]:
    out = []
    for i in range(n):
        parts = [
            Part(10 * i + 1, 1, "door", [[1.5, 2.25, 10.0, 2.0, 10.0, 9.0 + i / 7]], (1.5, 2.0, 8.5, 7.0 + i / 7), False, 55.5),
            Part(10 * i + 2, 2, "wheel", {"size": [24, 32], "counts": [5, 10, 24 * 32 - 15]}, (0.0, 5.0, 1.0, 10.0), True, 10.0),
            Part(10 * i + 3, 3, "rétroviseur", None, (3.0, 3.0, 2.0, 2.0), False, 4.0),
        ][: i % 4]
        out.append(ImageRecord(1000 + i, f"cars/ç{i}.png", 32, 24, parts, f"s3://b/images/cars/ç{i}.png"))
    return out


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_round_trip_several_shards(kind, tmp_path, request):
    uri = str(tmp_path / "index") if kind == "local" else request.getfixturevalue("s3_bucket") + "/index"
    records = make_records(11)
    shards = write_index(records, uri, rows_per_shard=4)
    assert [s.rsplit("/", 1)[-1] for s in shards] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert list_shards(uri) == shards
    assert read_index(uri) == records

    # rewriting with fewer shards removes the stale ones: a rerun never duplicates rows
    write_index(records[:3], uri, rows_per_shard=4)
    assert len(list_shards(uri)) == 1
    assert read_index(uri) == records[:3]


def test_empty_index_keeps_schema(tmp_path):
    import pyarrow.parquet as pq

    shards = write_index([], str(tmp_path / "idx"))
    assert len(shards) == 1
    assert "parts" in pq.read_schema(shards[0]).names
    assert read_index(str(tmp_path / "idx")) == []


def test_read_errors(tmp_path):
    with pytest.raises(DatasetError, match="no shard-\\*.parquet"):
        read_index(str(tmp_path / "none"))
    storage.write_bytes(tmp_path / "bad" / "shard-00000.parquet", b"not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet shard"):
        read_index(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="rows_per_shard"):
        write_index([], str(tmp_path / "x"), rows_per_shard=0)


def test_folder_reads_as_one_parquet_dataset(tmp_path):
    """The folder is a plain Parquet dataset (what ``ray.data.read_parquet(uri)`` streams, shard by shard)."""
    import pyarrow.dataset as pads

    records = make_records(9)
    uri = str(tmp_path / "idx")
    write_index(records, uri, rows_per_shard=3)
    ds = pads.dataset(uri, format="parquet")
    assert len(ds.files) == 3 and ds.count_rows() == 9
    rows = ds.to_table().to_pylist()
    assert sorted((ImageRecord.from_row(r) for r in rows), key=lambda r: r.image_id) == records


def test_job_index_groups_images_by_size(tmp_path):
    """The dataset job's index lists images by size, so Ray Data's blocks (the stylizer's batches) hold one size."""
    from nstray.pipeline.job import ensure_index

    sizes = [(48, 64), (32, 32), (48, 64), (0, 0), (32, 32), (64, 48), (48, 64), (32, 32), (0, 0)]
    records = [ImageRecord(500 - i, f"{i}.png", w, h, [], f"{tmp_path}/{i}.png") for i, (w, h) in enumerate(sizes)]
    shards = ensure_index(str(tmp_path / "out"), records, rows_per_shard=3)
    got = read_index(shards[0].rsplit("/", 1)[0])  # every shard of the index, in shard order
    assert sorted(got, key=lambda r: r.image_id) == sorted(records, key=lambda r: r.image_id)  # nothing lost
    order = [(r.height, r.width) for r in got]
    assert order == sorted(order)  # one run per size: unknown sizes (0) first, then by height, width
    assert [r.image_id for r in got[:2]] == [492, 497]  # same size: id order
