"""weights registry: package files verified by sha256, local and s3:// files cached, clear errors."""

from __future__ import annotations

import pytest

from nstray import storage, weights


def test_package_weights_resolve_and_verify():
    path = weights.resolve("multistyle26")
    assert path.name == "multistyle26.onnx"
    assert weights.sha256_file(path) == weights.REGISTRY["multistyle26"].sha256


def test_checksum_mismatch_is_an_error(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    with pytest.raises(weights.WeightsChecksumError, match="does not match"):
        weights.resolve(str(f), sha256="0" * 64)
    assert weights.resolve(str(f), sha256=weights.sha256_file(f)) == f


def test_missing_weights_say_where_they_looked(tmp_path, monkeypatch):
    with pytest.raises(weights.WeightsNotFound, match="no file at"):
        weights.resolve(str(tmp_path / "nope.pt"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(weights.WeightsNotFound, match=r"nstray weights pull"):
        weights.resolve("vgg19")
    with pytest.raises(weights.WeightsNotFound, match="not installed"):
        weights.resolve("package://no_such_pkg_xyz/w.onnx")


def test_s3_weights_are_cached(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("NSTRAY_CACHE", str(tmp_path / "cache"))
    uri = s3_bucket + "/models/w.pt"
    storage.write_bytes(uri, b"weights-bytes")
    path = weights.resolve(uri)
    assert path.read_bytes() == b"weights-bytes" and str(tmp_path / "cache") in str(path)
    path.write_bytes(b"weights-bytes")  # the same object version is served from the cached file
    assert weights.resolve(uri) == path
    storage.write_bytes(uri, b"retrained")  # a new version of the object (new ETag) is fetched anew
    assert weights.resolve(uri).read_bytes() == b"retrained"
    with pytest.raises(weights.WeightsNotFound, match="does not exist"):
        weights.resolve(s3_bucket + "/models/missing.pt")
