"""storage: local and real S3 (SeaweedFS) round trips, atomic writes, clear errors."""

from __future__ import annotations

import pytest

from nstray import storage


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_roundtrip_list_exists(kind, tmp_path, request):
    base = str(tmp_path / "out") if kind == "local" else request.getfixturevalue("s3_bucket") + "/pre"
    a = storage.join(base, "x", "a.bin")
    b = storage.join(base, "y.bin")
    assert not storage.exists(a)
    storage.write_bytes(a, b"hello")
    storage.write_bytes(b, b"\x00" * 10)
    assert storage.read_bytes(a) == b"hello"
    assert storage.exists(a)
    assert sorted(storage.list_files(base)) == sorted([a, b])


def test_local_write_leaves_no_partial(tmp_path):
    target = tmp_path / "d" / "f.bin"
    storage.write_bytes(target, b"1" * 1000)
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_missing_errors_name_the_uri(tmp_path, s3_bucket):
    with pytest.raises(storage.StorageError, match="file not found"):
        storage.read_bytes(tmp_path / "nope.json")
    with pytest.raises(storage.StorageError, match=r"nope\.json.*does not exist"):
        storage.read_bytes(s3_bucket + "/nope.json")
    with pytest.raises(storage.StorageError, match="bucket"):
        storage.read_bytes("s3://")


def test_pyarrow_filesystem_reads_what_boto_wrote(s3_bucket):
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = s3_bucket + "/t.parquet"
    fs, path = storage.pyarrow_filesystem(uri)
    pq.write_table(pa.table({"a": [1, 2]}), path, filesystem=fs)
    assert storage.exists(uri)
    assert pq.read_table(path, filesystem=fs)["a"].to_pylist() == [1, 2]
