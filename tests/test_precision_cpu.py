"""Reduced precision on the CPU: bf16 where the CPU has native bf16 arithmetic (AVX512-BF16, AMX) within the
fp16/bf16 quality gate (PSNR >= 40 dB against fp32 over the styled pixels), fp32 with a warning elsewhere and
for fp16; the CLI shows nstray's warnings as one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nstray import masks, storage
from nstray.assets import load_plan_assets
from nstray.cli import main
from nstray.data.coco import load_coco, read_records
from nstray.data.images import decode_image
from nstray.data.synth import generate
from nstray.plan import load_plan
from nstray.stylize.parts import PRECISION_GATE_PSNR_DB, PartStylizer, cpu_has_bf16

SIX_PARTS = Path(__file__).resolve().parents[1] / "examples" / "plans" / "six-parts.yaml"


@pytest.fixture(scope="module")
def cars(tmp_path_factory):
    plan = load_plan(str(SIX_PARTS))
    data = generate(tmp_path_factory.mktemp("cars"), 3, seed=4, width=192, height=144)
    recs, _ = read_records(load_coco(str(data.annotations)), str(data.images_dir))
    images = [decode_image(storage.read_bytes(r.uri), name=r.file_name) for r in recs]
    labels = [masks.label_map(r.parts, r.height, r.width, plan.overlaps) for r in recs]
    return plan, images, labels, [[p.category for p in r.parts] for r in recs]


def _styled(stylizer: PartStylizer, images, labels, cats) -> list[np.ndarray]:
    n = len(images)
    return [r.image for r in stylizer.stylize_batch(images, labels, cats, variants=[0] * n, seeds=[1] * n,
                                                    keys=list(range(n)))]


def test_bf16_runs_where_the_cpu_has_it_within_the_gate_and_falls_back_elsewhere(cars):
    plan, images, labels, cats = cars
    assets = load_plan_assets(plan)
    ref = _styled(PartStylizer(plan, assets=assets), images, labels, cats)
    if cpu_has_bf16():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bf16 = PartStylizer(plan, precision="bf16", assets=assets)
        assert bf16.precision == "bf16" and next(bf16.multistyle.parameters()).dtype == torch.bfloat16
        out = _styled(bf16, images, labels, cats)
        d = np.concatenate([(o.astype(np.float64) - r)[lab >= 0] for o, r, lab in zip(out, ref, labels)])
        psnr = 10 * np.log10(255.0 ** 2 / float((d ** 2).mean()))
        assert np.abs(d).max() > 0 and psnr >= PRECISION_GATE_PSNR_DB, psnr  # bf16 really ran, within the gate
    else:
        with pytest.warns(RuntimeWarning, match="native bf16"):
            bf16 = PartStylizer(plan, precision="bf16", assets=assets)
        assert bf16.precision == "fp32"
        assert all(np.array_equal(o, r) for o, r in zip(_styled(bf16, images, labels, cats), ref))


def test_fp16_on_the_cpu_is_fp32_with_a_warning(cars):
    plan, images, labels, cats = cars
    with pytest.warns(RuntimeWarning, match="fp16 is for GPUs"):
        s = PartStylizer(plan, precision="fp16", assets=load_plan_assets(plan))
    assert s.precision == "fp32" and next(s.multistyle.parameters()).dtype == torch.float32


def test_the_cli_takes_precision_and_shows_a_fallback_as_one_warning_line(tmp_path, cars):
    from PIL import Image

    _, images, _, _ = cars
    Image.fromarray(images[0]).save(tmp_path / "car.png")
    (tmp_path / "p.yaml").write_text("styles:\n  a: {kind: multistyle, index: 3}\nparts:\n  background: {style: a}\n")
    hooks = []
    for out in ("o.png", "again.png"):  # a second run in the same process hooks the warnings no second time
        r = CliRunner().invoke(main, ["stylize", str(tmp_path / "car.png"), "--out", str(tmp_path / out),
                                      "--plan", str(tmp_path / "p.yaml"), "--precision", "fp16"])
        assert r.exit_code == 0, r.output
        assert "RuntimeWarning" not in r.output and "PartStylizer(" not in r.output
        assert (tmp_path / out).is_file()
        hooks.append(warnings.showwarning)
        if out == "o.png":  # (Python shows a warning once per place and process: the second run is silent)
            assert r.output.count("Warning: precision fp16: fp16 is for GPUs") == 1, r.output
    assert hooks[0] is hooks[1]


def test_a_cpu_actor_runs_the_jobs_precision_and_records_what_it_ran(tmp_path):
    """``resources.precision`` reaches CPU actors too (before, they always ran fp32), and each output row's
    worker JSON says what the network really ran (after any fallback)."""
    import json

    from nstray.pipeline.stages import StageOptions, Stylizer

    plan = {"styles": {"a": {"kind": "multistyle", "index": 3}}, "parts": {"background": {"style": "a"}}}
    opts = StageOptions(output=str(tmp_path), ext="jpg", quality=90, variants=(0,))
    want = "bf16" if cpu_has_bf16() else "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning where bf16 is not native (tested above)
        actor = Stylizer(plan, opts, threads=1, precision="bf16")
    assert actor.stylizer.precision == want
    assert json.loads(actor.worker.json())["precision"] == want
