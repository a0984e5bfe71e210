"""``nstray weights list/pull/push`` against the real S3 fixture: sha256 printed, stored, verified."""

from __future__ import annotations

import hashlib

import pytest
import torch
from click.testing import CliRunner

from nstray import storage, weights
from nstray.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, ["weights", *args], catch_exceptions=False)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NSTRAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision weights here
    return tmp_path / "cache"


def test_list_shows_the_registry_and_what_is_here():
    r = invoke("list")
    assert r.exit_code == 0, r.output
    for name in ("vgg19", "vgg16", "multistyle26", "deeplabv3_resnet50"):
        assert name in r.output
    line = next(l for l in r.output.splitlines() if "multistyle26" in l)
    assert "yes" in line
    line = next(l for l in r.output.splitlines() if "│ vgg19 " in l)
    assert "no" in line and "pull" in line


def test_push_then_pull_round_trip_with_checksums(s3_bucket, cache):
    sha = weights.REGISTRY["multistyle26"].sha256
    r = invoke("push", "multistyle26", f"{s3_bucket}/weights/")
    assert r.exit_code == 0, r.output
    uri = f"{s3_bucket}/weights/multistyle26.onnx"
    assert uri in r.output and sha in r.output and "verified on S3" in r.output
    head = storage.s3_client().head_object(Bucket=storage.parse(uri).bucket, Key=storage.parse(uri).path)
    assert head["Metadata"]["sha256"] == sha

    r = invoke("pull", uri)
    assert r.exit_code == 0, r.output
    assert f"sha256 {sha} (verified)" in r.output and str(cache) in r.output
    assert weights.sha256_file(weights.resolve(uri)) == sha


def test_pull_rejects_a_corrupted_object(s3_bucket):
    good = b"weights-v1" * 100
    uri = f"{s3_bucket}/weights/w.pth"
    loc = storage.parse(uri)
    storage.s3_client().put_object(Bucket=loc.bucket, Key=loc.path, Body=b"tampered",
                                   Metadata={"sha256": hashlib.sha256(good).hexdigest()})
    r = invoke("pull", uri)
    assert r.exit_code == 1 and "does not match" in r.output


def test_push_a_local_state_dict_and_load_the_encoder_from_s3(s3_bucket, tmp_path):
    from nstray.models.vgg import vgg_encoder

    state = {"features.0.weight": torch.randn(64, 3, 3, 3), "features.0.bias": torch.randn(64)}
    local = tmp_path / "vgg19_tiny.pth"
    torch.save(state, local)
    dest = f"{s3_bucket}/models/vgg19_tiny.pth"
    r = invoke("push", str(local), dest)
    assert r.exit_code == 0, r.output
    assert f"--weights {dest}" in r.output and weights.sha256_file(local) in r.output
    enc = vgg_encoder(layers=["relu1_1"], weights=dest)
    torch.testing.assert_close(enc.features[0].weight, state["features.0.weight"])


def test_torchvision_files_are_checked_against_their_name(tmp_path):
    fake = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the real weights")
    for name in ("vgg19", "VGG19_Weights.IMAGENET1K_V1"):
        r = invoke("pull", name)
        assert r.exit_code == 1 and "does not start with dcbb9e9d" in r.output, r.output


def test_push_errors(s3_bucket, tmp_path):
    r = invoke("push", "vgg19", f"{s3_bucket}/weights/")
    assert r.exit_code == 1 and "nstray weights pull vgg19" in r.output
    r = invoke("push", str(tmp_path / "nope.pth"), f"{s3_bucket}/weights/")
    assert r.exit_code == 1 and "no file at" in r.output
    r = invoke("push", "multistyle26", str(tmp_path / "local"))
    assert r.exit_code == 1 and "s3://" in r.output
