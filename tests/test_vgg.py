"""VGG encoder: layer names, truncation, normalization inside, frozen, weights from files / S3 / registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from nstray import storage, weights
from nstray.models.vgg import IMAGENET_MEAN, IMAGENET_STD, layer_names, vgg16_encoder, vgg_encoder


@pytest.mark.parametrize("arch,cfg", [("vgg19", "E"), ("vgg16", "D")])
def test_layer_names_index_torchvision_modules(arch, cfg):
    names = layer_names(arch)
    modules = list(make_layers(cfgs[cfg]))
    assert len(names) == len(modules)
    for name, module in zip(names, modules):
        expected = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4]]
        assert isinstance(module, expected), name
    assert names[-1] == "pool5"


def test_vgg19_names_follow_gatys_convention():
    names = layer_names("vgg19")
    assert names.index("conv4_2") == 21 and names.index("relu4_2") == 22
    assert names.index("relu5_1") == 29 and names.index("relu5_4") == 35
    assert "relu3_4" in names and "relu3_4" not in layer_names("vgg16")


def test_truncated_after_deepest_layer_and_shapes():
    enc = vgg_encoder(layers=["relu2_1", "relu1_1"], weights=None)
    assert len(enc.features) == layer_names().index("relu2_1") + 1
    out = enc(torch.rand(2, 3, 32, 24))
    assert set(out) == {"relu1_1", "relu2_1"}
    assert out["relu1_1"].shape == (2, 64, 32, 24) and out["relu2_1"].shape == (2, 128, 16, 12)


def test_conv_output_survives_the_relu_after_it():
    enc = vgg_encoder(layers=["conv1_1", "relu1_1"], weights=None)
    out = enc(torch.rand(1, 3, 16, 16))
    assert (out["conv1_1"] < 0).any()
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp(min=0))


def test_imagenet_normalization_is_inside():
    enc = vgg_encoder(layers=["conv1_1"], weights=None)
    x = torch.rand(1, 3, 12, 12)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    conv = enc.features[0]
    expected = F.conv2d((x - mean) / std, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(enc(x)["conv1_1"], expected)


def test_frozen_eval_and_gradient_reaches_the_input():
    enc = vgg_encoder(layers=["relu2_1"], weights=None)
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    enc(x)["relu2_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_avg_pool_option():
    enc = vgg_encoder(layers=["relu3_1"], weights=None, pool="avg")
    pools = [m for m in enc.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
    assert len(pools) == 2 and all(isinstance(m, nn.AvgPool2d) for m in pools)
    with pytest.raises(ValueError, match="pool"):
        vgg_encoder(layers=["relu1_1"], weights=None, pool="min")


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"no layer\(s\) \['relu6_1'\].*relu5_4"):
        vgg_encoder(layers=["relu6_1"], weights=None)
    with pytest.raises(ValueError, match="unknown VGG architecture"):
        vgg_encoder("vgg11", layers=["relu1_1"], weights=None)


def _small_torchvision_state(depth: int = 7, arch_cfg: str = "E") -> dict[str, torch.Tensor]:
    """A torchvision-format state dict (``features.N.*`` and a classifier key) for the first ``depth`` modules."""
    feats = make_layers(cfgs[arch_cfg])[:depth]
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


def test_loads_a_torchvision_state_dict_file(tmp_path):
    state = _small_torchvision_state()
    path = tmp_path / "vgg19_part.pth"
    torch.save(state, path)
    enc = vgg_encoder(layers=["relu2_1"], weights=str(path))
    torch.testing.assert_close(enc.features[5].weight, state["features.5.weight"])
    bare = tmp_path / "features_only.pth"  # a features module's own state dict works too
    torch.save({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}, bare)
    torch.testing.assert_close(vgg_encoder(layers=["relu2_1"], weights=str(bare)).features[0].bias, state["features.0.bias"])


def test_weights_that_do_not_fit_are_clear_errors(tmp_path):
    path = tmp_path / "vgg19_part.pth"
    torch.save(_small_torchvision_state(depth=7), path)
    with pytest.raises(ValueError, match="lack .* up to relu3_1"):
        vgg_encoder(layers=["relu3_1"], weights=str(path))
    state = _small_torchvision_state(depth=7)
    state["features.5.weight"] = torch.zeros(128, 32, 3, 3)  # another network's shapes
    torch.save(state, path)
    with pytest.raises(ValueError, match="do not fit vgg19"):
        vgg_encoder(layers=["relu2_1"], weights=str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        vgg_encoder(layers=["relu1_1"], weights=str(path))


def test_registry_weights_offline_say_how_to_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(weights.WeightsNotFound, match=r"nstray weights pull.*nstray weights push"):
        vgg_encoder(layers=["relu1_1"])
    with pytest.raises(weights.WeightsNotFound, match="VGG16_Weights"):
        vgg16_encoder(layers=["relu1_1"])
    with pytest.raises(weights.WeightsNotFound, match="no file at"):
        vgg_encoder(layers=["relu1_1"], weights=str(tmp_path / "missing.pth"))


def test_loads_weights_from_s3(s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("NSTRAY_CACHE", str(tmp_path / "cache"))
    state = _small_torchvision_state(depth=2)
    local = tmp_path / "w.pth"
    torch.save(state, local)
    uri = f"{s3_bucket}/weights/vgg19_part.pth"
    storage.write_bytes(uri, local.read_bytes())
    enc = vgg_encoder(layers=["relu1_1"], weights=uri, sha256=weights.sha256_file(local))
    torch.testing.assert_close(enc.features[0].weight, state["features.0.weight"])
    with pytest.raises(weights.WeightsChecksumError):
        vgg_encoder(layers=["relu1_1"], weights=uri, sha256="0" * 64)
