"""The Johnson transformer network: sizes, instance norm, trainability, checkpoints (local and S3, weights_only)."""

from __future__ import annotations

import io

import pytest
import torch

from nstray import storage
from nstray.models.johnson import MIN_SIDE, JohnsonNet, johnson, johnson_from_checkpoint
from nstray.stylize.feedforward import johnson_checkpoint


def _image(b: int = 1, h: int = 32, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [(32, 32), (33, 45), (MIN_SIDE, 7), (17, 6)])
def test_output_has_the_input_size_and_range(size):
    torch.manual_seed(0)
    net = johnson(None, channels=8, res_blocks=1).eval()
    x = _image(2, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0


def test_bad_inputs_are_clear():
    net = johnson(None, channels=4, res_blocks=0)
    with pytest.raises(ValueError, match="both sides need at least 5 pixels"):
        net(_image(1, 4, 32))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\]"):
        net(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        JohnsonNet(channels=0)


def test_architecture_is_the_papers():
    net = johnson(None)
    assert net.arch() == {"channels": 32, "res_blocks": 5}
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs][:3] == [32, 64, 128] and convs[-1].out_channels == 3
    assert all(c.padding_mode == "reflect" for c in convs)
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in net.modules()) == 3 + 2 * 5 + 2
    # conv (no bias) + instance norm first: the output ignores the input's overall brightness scale
    torch.manual_seed(1)
    small = johnson(None, channels=8, res_blocks=1).eval()
    x = _image(1, 24, 24)
    assert torch.allclose(small(x), small(0.5 * x), atol=1e-4)


def test_every_parameter_trains():
    torch.manual_seed(0)
    net = johnson(None, channels=4, res_blocks=1)
    net(_image(2, 16, 16)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_checkpoint_round_trip_keeps_its_architecture(tmp_path):
    torch.manual_seed(0)
    net = johnson(None, channels=8, res_blocks=2).eval()
    path = tmp_path / "model.pt"
    torch.save(johnson_checkpoint(net, {"step": 3, "style_image": "s.png"}), path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["kind"] == "johnson" and ckpt["arch"] == {"channels": 8, "res_blocks": 2} and ckpt["meta"]["step"] == 3
    loaded = johnson(path)
    assert loaded.arch() == {"channels": 8, "res_blocks": 2} and not loaded.training
    x = _image(1, 21, 30)
    assert torch.equal(loaded(x), net(x))
    # a bare state dict means the default architecture
    bare = tmp_path / "bare.pt"
    torch.save(johnson(None).state_dict(), bare)
    assert johnson(bare).arch() == {"channels": 32, "res_blocks": 5}


def test_wrong_checkpoints_are_clear(tmp_path):
    with pytest.raises(ValueError, match="kind 'cin', not 'johnson'"):
        johnson_from_checkpoint({"kind": "cin", "state_dict": {}})
    small = johnson_checkpoint(johnson(None, channels=4, res_blocks=1))
    small["arch"] = {"channels": 8, "res_blocks": 1}
    with pytest.raises(ValueError, match="do not fit JohnsonNet"):
        johnson_from_checkpoint(small)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        johnson(junk)


def test_loads_from_s3(s3_bucket):
    torch.manual_seed(0)
    net = johnson(None, channels=4, res_blocks=1).eval()
    buf = io.BytesIO()
    torch.save(johnson_checkpoint(net), buf)
    uri = f"{s3_bucket}/models/j.pt"
    storage.write_bytes(uri, buf.getvalue())
    x = _image(1, 16, 16)
    assert torch.equal(johnson(uri)(x), net(x))
