"""Training feed-forward styles: pure parts (loss, new CIN style, data order) and real Ray Train runs to S3 and disk.

The Ray runs use a random-weight, truncated VGG-16 and 32 px crops of a fixed set of images that
exactly fills the global batch, so every step sees the same images and the losses are comparable.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from nstray import storage
from nstray.models.multistyle import multistyle26
from nstray.models.vgg import vgg_encoder
from nstray.plan import load_plan
from nstray.plots import render_loss_plot
from nstray.assets import AssetError, load_feedforward, load_plan_assets, read_checkpoint
from nstray.stylize.feedforward import CINStyleNet, FeedforwardError, append_style
from nstray.stylize.parts import PartStylizer, StylizeError
from nstray.train.curves import history_csv
from nstray.train.data import ContentImages, TrainDataError, list_content_images, sample_positions
from nstray.train.ray_trainer import TrainConfig, TrainConfigError, TrainingError, latest_checkpoint, train_style
from nstray.train.style_training import NewStyleCIN, PerceptualLoss, fit_crop, train_step

CONTENT = {"relu2_2": 1.0}
STYLE = {"relu1_2": 1.0, "relu2_2": 1.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- helpers


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _content_array(i: int, h: int = 40, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy + i)], -1)
    return (img * 255).round()


def _style_array(seed: int = 1, side: int = 32) -> np.ndarray:
    cells = np.random.default_rng(seed).random((4, 4, 3)) * 255
    return np.kron(cells, np.ones((side // 4, side // 4, 1)))


def _write_images(base: str, n: int = 4) -> list[str]:
    uris = [storage.join(base, f"img{i}.png") for i in range(n)]
    for i, uri in enumerate(uris):
        storage.write_bytes(uri, _png(_content_array(i)))
    return uris


def _config(**kw) -> TrainConfig:
    base = dict(size=32, batch_size=2, vgg_weights=None, content_layers=CONTENT, style_layers=STYLE, loader_workers=0,
                warmup_steps=4, johnson_channels=16, johnson_res_blocks=2, checkpoint_every=3)
    base.update(kw)
    return TrainConfig(**base)


def _history(run_uri: str) -> list[dict]:
    return json.loads(storage.read_bytes(storage.join(run_uri, "losses.json")))["history"]


def _photo_and_labels(h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.5 * xx, 0.4 + 0.3 * np.sin(6 * yy), 0.6 - 0.4 * yy], -1) + rng.normal(0, 0.02, (h, w, 3))
    labels = np.full((h, w), -1, dtype=np.int32)
    labels[10:36, 12:44] = 0
    return (img.clip(0, 1) * 255).round().astype(np.uint8), labels


def _styles_the_part_only(weights: str, scale: float = 1.0) -> None:
    plan = load_plan({"styles": {"mine": {"kind": "feedforward", "weights": weights}},
                      "parts": {"hood": {"style": "mine", "scale": scale}}})
    image, labels = _photo_and_labels()
    out = PartStylizer(plan, assets=load_plan_assets(plan))(image, labels, ["hood"])
    inside = labels == 0
    assert out.styles["hood"] == "mine"
    assert np.array_equal(out.image[~inside], image[~inside])  # outside the part: the input's bytes
    assert np.abs(out.image[inside].astype(int) - image[inside]).mean() > 5  # inside: styled


# ---------------------------------------------------------------- pure parts


def test_new_cin_style_computes_what_the_extended_network_computes():
    base = multistyle26()
    model = NewStyleCIN(base)
    with torch.no_grad():  # move the new style away from its init so the check is not trivial
        for g, b in zip(model.gamma, model.beta):
            g.mul_(1.3).add_(0.1)
            b.add_(torch.linspace(-0.2, 0.2, b.numel()))
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    gamma, beta = model.tables()
    extended = append_style(base, gamma, beta)
    assert extended.num_styles == 27
    with torch.no_grad():
        ours = model(x)
    with torch.inference_mode():
        theirs = CINStyleNet(extended, 26)(x)
    assert ours.shape == theirs.shape == x.shape
    assert (ours - theirs).abs().max() < 1e-4


def test_new_cin_style_trains_only_its_gamma_and_beta():
    base = multistyle26()
    model = NewStyleCIN(base)
    trainable = [p for p in model.parameters() if p.requires_grad]
    channels = sum(g.shape[1] for n, g in base.state_dict().items() if n.endswith(".gamma"))
    assert len(model.norm_names) == 18 and sum(p.numel() for p in trainable) == 2 * channels
    mean_gamma = base.contract[0].norm.gamma.mean(0)
    assert torch.equal(model.gamma[0].detach(), mean_gamma)
    norms = dict(base.named_modules())
    assert torch.equal(NewStyleCIN(base, init=7).beta[3].detach(), norms[model.norm_names[3]].beta[7])
    with pytest.raises(ValueError, match="init style 26 is out of range"):
        NewStyleCIN(base, init=26)


def test_perceptual_loss_and_steps_decrease_it():
    torch.manual_seed(0)
    encoder = vgg_encoder("vgg16", ["relu1_2", "relu2_2"], None)
    style = torch.tensor(_style_array()).permute(2, 0, 1).float() / 255
    loss = PerceptualLoss(encoder, style, content_layers=CONTENT, style_layers=STYLE, style_weight=1e5, tv_weight=2.0)
    x = torch.stack([fit_crop(_content_array(i).astype(np.uint8), 32) for i in range(2)])
    terms = loss(x, x)
    assert float(terms["content"]) == 0.0 and float(terms["style"]) > 0 and float(terms["tv"]) > 0
    assert torch.allclose(terms["total"], terms["content"] + terms["style"] + terms["tv"])
    assert float(PerceptualLoss(encoder, style, content_layers=CONTENT, style_layers=STYLE, style_weight=0)(x, x)["style"]) == 0
    with pytest.raises(ValueError, match=r"does not return layer\(s\) \['relu3_3'\]"):
        PerceptualLoss(encoder, style, content_layers=CONTENT, style_layers={"relu3_3": 1.0})
    model = NewStyleCIN(multistyle26())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    totals = [float(train_step(model, loss, opt, x)["total"]) for _ in range(6)]
    assert totals[-1] < 0.8 * totals[0]
    assert all(b < a for a, b in zip(totals, totals[1:]))


def test_fit_crop():
    arr = _content_array(0, 40, 80).astype(np.uint8)
    left, right = fit_crop(arr, 32, 0.0), fit_crop(arr, 32, 1.0)
    assert left.shape == right.shape == (3, 32, 32) and 0 <= float(left.min()) and float(left.max()) <= 1
    assert not torch.equal(left, right)
    assert fit_crop(arr[:32, :32], 32).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy().tolist() == arr[:32, :32].tolist()


def test_data_order_is_a_function_of_the_step():
    n, b, world = 5, 2, 2
    steps = [[sample_positions(n, s, b, r, world, seed=3) for r in range(world)] for s in range(5)]
    flat = [p for step in steps for rank in step for p in rank]
    assert [pos for _, pos in flat] == list(range(20))  # consecutive global positions, ranks disjoint
    for epoch in range(4):  # every epoch is a permutation of all images
        assert sorted(i for i, pos in flat if pos // n == epoch) == list(range(n))
    assert sample_positions(n, 3, b, 1, world, seed=3) == steps[3][1]  # no state: a resume sees the same
    assert sample_positions(n, 0, b, 0, world, seed=4) != steps[0][0] or sample_positions(n, 1, b, 0, world, seed=4) != steps[1][0]


def test_content_images_from_folders_and_coco(tmp_path, s3_bucket):
    uris = _write_images(str(tmp_path / "imgs"))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert list_content_images(str(tmp_path / "imgs")) == uris
    s3_uris = _write_images(f"{s3_bucket}/data")
    assert list_content_images(f"{s3_bucket}/data") == s3_uris
    # COCO: file names under the JSON's images/ subfolder
    coco_uris = _write_images(str(tmp_path / "coco" / "images"))
    coco = {"images": [{"id": i, "file_name": f"img{i}.png", "width": 48, "height": 40} for i in range(3)],
            "annotations": [], "categories": [{"id": 1, "name": "hood"}]}
    (tmp_path / "coco" / "ann.json").write_text(json.dumps(coco))
    assert list_content_images(str(tmp_path / "coco" / "ann.json")) == coco_uris[:3]
    assert list_content_images(str(tmp_path / "coco" / "ann.json"), str(tmp_path / "imgs")) == uris[:3]
    with pytest.raises(TrainDataError, match="no image files"):
        list_content_images(str(tmp_path / "empty"))
    # an unreadable file is replaced by the next image (same crop every time)
    (tmp_path / "imgs" / "img1.png").write_bytes(b"broken")
    ds = ContentImages(uris, 32, seed=0)
    assert ds[(1, 5)].shape == (3, 32, 32) and torch.equal(ds[(1, 5)], ds[(2, 5)])


def test_loss_curves():
    history = [{"step": i + 1, "content": 1.0 / (i + 1), "style": 2.0, "tv": 0.0, "total": 2 + 1.0 / (i + 1)} for i in range(5)]
    csv = history_csv(history).splitlines()
    assert csv[0] == "step,content,style,tv,total" and csv[1] == "1,1.0,2.0,0.0,3.0" and len(csv) == 6
    assert render_loss_plot(history).startswith(b"\x89PNG")


def test_config_errors_name_every_field():
    with pytest.raises(TrainConfigError) as err:
        _config(style_image="s.png", data="d", out="o", mode="gan", steps=0, style_layers={"relu9_9": 1.0}).validate()
    text = str(err.value)
    assert "mode: 'gan' is not one of johnson, cin" in text and "steps: must be >= 1" in text
    assert "style_layers: vgg16 has no layer(s) ['relu9_9']" in text
    cfg = _config(style_image="s3://b/styles/Starry Night.jpg", data="d", out="s3://b/runs", mode="cin")
    assert cfg.run_name == "Starry-Night-cin" and cfg.model_uri == "s3://b/runs/Starry-Night-cin/model.pt"
    assert [round(cfg.lr_at(s), 6) for s in (0, 3, 10)] == [0.0025, 0.01, 0.01]


def test_feedforward_loader_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else", "x": 1}, bad)
    with pytest.raises(FeedforwardError, match="not an nstray feed-forward checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(FeedforwardError, match="cannot read feed-forward weights"):
        read_checkpoint("s3://no-such-bucket-here/model.pt")
    plan = load_plan({"styles": {"vg": {"kind": "feedforward", "weights": str(tmp_path / "missing.pt")}},
                      "parts": {"hood": {"style": "vg"}}})
    with pytest.raises(AssetError, match="styles.vg.weights: cannot read feed-forward weights"):
        load_plan_assets(plan)
    with pytest.raises(StylizeError, match="style vg: its weights .* are not loaded"):
        PartStylizer(plan)


# ---------------------------------------------------------------- Ray Train


def test_johnson_training_on_ray_to_s3_resumes_and_styles_through_the_plan(ray_train_env, s3_bucket):
    data, style = f"{s3_bucket}/data", f"{s3_bucket}/styles/checks.png"
    _write_images(data, 4)  # 2 workers x batch 2: every step trains on all four images
    storage.write_bytes(style, _png(_style_array()))
    cfg = _config(style_image=style, data=data, out=f"{s3_bucket}/runs", workers=2, steps=6, seed=5)
    summary = train_style(cfg)
    run = f"{s3_bucket}/runs/checks-johnson"
    assert summary.run_uri == run and summary.step == 6 and summary.resumed_from == 0 and summary.images == 4
    keys = {u[len(run) + 1:] for u in storage.list_files(run)}
    assert {"checkpoint_0000003/state.pt", "checkpoint_0000003/model.pt", "checkpoint_0000006/state.pt",
            "model.pt", "losses.csv", "losses.json", "losses.png"} <= keys
    assert latest_checkpoint(run) == (6, f"{run}/checkpoint_0000006/state.pt")
    history = _history(run)
    totals = [r["total"] for r in history]
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert np.mean(totals[-2:]) < 0.7 * totals[0], totals
    ckpt = torch.load(io.BytesIO(storage.read_bytes(summary.model_uri)), weights_only=True)
    assert ckpt["kind"] == "johnson" and ckpt["meta"]["step"] == 6 and ckpt["meta"]["style_image"] == style
    state = torch.load(io.BytesIO(storage.read_bytes(f"{run}/checkpoint_0000006/state.pt")), weights_only=True)
    assert state["step"] == 6 and len(state["history"]) == 6 and state["optimizer"]["state"]

    # resume to 9 steps: continues at step 7 with the trained weights and the same history. One worker with
    # batch 4 is the same global batch (the data order depends on global positions only), so it may resume
    # on another worker count.
    resumed = train_style(_config(style_image=style, data=data, out=f"{s3_bucket}/runs", batch_size=4, steps=9, seed=5))
    assert resumed.resumed_from == 6 and resumed.step == 9
    longer = _history(run)
    assert [r["step"] for r in longer] == list(range(1, 10)) and longer[:6] == history
    assert longer[6]["total"] < 0.8 * totals[0]  # not back to the untrained loss
    assert read_checkpoint(summary.model_uri)["meta"]["step"] == 9
    # at its steps already: nothing to do; --no-resume refuses to touch it
    again = train_style(_config(style_image=style, data=data, out=f"{s3_bucket}/runs", workers=2, steps=9, seed=5))
    assert not again.trained and again.step == 9
    with pytest.raises(TrainingError, match="already holds a training run"):
        train_style(_config(style_image=style, data=data, out=f"{s3_bucket}/runs", steps=12, resume=False))

    _styles_the_part_only(summary.model_uri)


def test_cin_training_via_the_job_entrypoint_changes_only_the_new_style(ray_train_env, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    images = tmp_path / "coco" / "images"
    _write_images(str(images), 2)
    coco = {"images": [{"id": i, "file_name": f"img{i}.png", "width": 48, "height": 40} for i in range(2)],
            "annotations": [], "categories": [{"id": 1, "name": "hood"}]}
    (tmp_path / "coco" / "annotations.json").write_text(json.dumps(coco))
    storage.write_bytes(str(tmp_path / "waves.png"), _png(_style_array(seed=2)))

    spec = importlib.util.spec_from_file_location("train_style_job", Path(__file__).parents[1] / "jobs" / "train_style.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    rc = job.main([str(tmp_path / "waves.png"), "--data", str(tmp_path / "coco" / "annotations.json"),
                   "--out", str(tmp_path / "out"), "--mode", "cin", "--steps", "4", "--batch-size", "2",
                   "--size", "32", "--checkpoint-every", "2", "--vgg-weights", "none", "--content-layers", "relu2_2",
                   "--style-layers", "relu1_2,relu2_2", "--loader-workers", "0", "--warmup-steps", "2", "--lr", "0.02"])
    out = capsys.readouterr().out
    assert rc == 0, out
    model = tmp_path / "out" / "waves-cin" / "model.pt"
    assert f"model:       {model}" in out and "kind: feedforward" in out and "losses.png" in out

    ckpt = torch.load(model, weights_only=True)
    assert ckpt["kind"] == "cin" and ckpt["base"]["weights"] == "multistyle26" and len(ckpt["base"]["sha256"]) == 64
    assert sum(v.numel() for v in ckpt["gamma"].values()) + sum(v.numel() for v in ckpt["beta"].values()) < 2000
    base = multistyle26()
    net = load_feedforward(str(model))
    assert isinstance(net, CINStyleNet) and net.index == 26
    base_state, new_state = base.state_dict(), net.net.state_dict()
    for key, value in base_state.items():
        if key.endswith((".gamma", ".beta")):
            assert torch.equal(new_state[key][:26], value), key  # the 26 pretrained styles are untouched
            layer, which = key.rsplit(".", 1)
            assert torch.equal(new_state[key][26], ckpt[which][layer])
        else:
            assert torch.equal(new_state[key], value), key  # and so is every convolution
    moved = sum(float((ckpt["gamma"][n] - base_state[f"{n}.gamma"].mean(0)).abs().max()) for n in ckpt["gamma"])
    assert moved > 0  # the new style trained away from its init
    totals = [r["total"] for r in _history(str(tmp_path / "out" / "waves-cin"))]
    assert len(totals) == 4 and totals[-1] < totals[0]

    _styles_the_part_only(str(model))
    _styles_the_part_only(str(model), scale=2.0)  # a scaled part goes through the crop pass


def test_cli_errors_before_ray(tmp_path):
    from nstray.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["train-style", str(tmp_path / "s.png"), "--data", str(tmp_path / "none"),
                               "--out", str(tmp_path / "o"), "--vgg-weights", "none"])
    assert res.exit_code == 1 and "no image files" in res.output
    _write_images(str(tmp_path / "d"), 1)
    res = runner.invoke(main, ["train-style", str(tmp_path / "s.png"), "--data", str(tmp_path / "d"),
                               "--out", str(tmp_path / "o"), "--vgg-weights", "none"])
    assert res.exit_code == 1 and "cannot read the style image" in res.output
    res = runner.invoke(main, ["train-style", "s.png", "--data", "d", "--out", "o", "--style-layers", "relu1_2=x"])
    assert res.exit_code == 2 and "must be a number" in res.output
