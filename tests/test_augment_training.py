"""Augmentation in segmentation training (issue 13): the styled variants of a dataset job's output join the
training split at the asked ratio and never the validation split; online style augmentation changes pixels,
never labels, and is a function of the step (exact resume)."""

from __future__ import annotations

import random

import pytest
import torch

from nstray.data import synth
from nstray.pipeline import run_job
from nstray.train.seg_data import SegCrops, SegDataError, class_index, load_split, split_records
from nstray.train.seg_trainer import SegTrainConfig, _styled_variants

PLAN = {"styles": {"a": {"kind": "multistyle", "index": 3}, "b": {"kind": "multistyle", "index": 12}},
        "parts": {"body": {"style": ["a", "b"]}, "wheel": {"style": "a"}, "background": {"style": "none"}}}


@pytest.fixture(scope="module")
def styled(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("augtrain")
    ds = synth.generate(root / "ds", 6, seed=2, width=96, height=64)
    out = root / "styled"
    summary = run_job({"input": {"annotations": str(ds.annotations), "images": str(ds.images_dir)},
                       "output": str(out), "variants": 2, "plan": PLAN, "contact_sheet": 0,
                       "resources": {"actors": 1, "batch_size": 4}})
    assert summary.done == 12
    records, categories, _ = load_split(str(ds.annotations), str(ds.images_dir))
    train, val = split_records(records, 0.34, seed=0)
    cfg = SegTrainConfig(data=str(ds.annotations), images=str(ds.images_dir), out=str(root / "runs"), augment=str(out))
    return {"ds": ds, "out": out, "train": train, "val": val, "categories": categories, "cfg": cfg}


def test_offline_variants_join_training_only_at_the_ratio(styled):
    variants = _styled_variants(styled["cfg"], styled["train"], print)
    train_ids, val_ids = {r.image_id for r in styled["train"]}, {r.image_id for r in styled["val"]}
    assert set(variants) == train_ids and not set(variants) & val_ids  # validation never sees a styled image
    assert all(len(v) == 2 for v in variants.values())  # both variants of each training image
    classes, index = class_index(styled["categories"])
    rows = [r.to_row() for r in styled["train"]]
    for ratio in (0.0, 0.3, 1.0):
        crops = SegCrops(rows, index, 32, styled=variants, styled_ratio=ratio)
        picks = [crops.pick(crops.records[p % len(rows)], random.Random(p)) for p in range(600)]
        share = sum(r.uri.startswith(str(styled["out"])) for r in picks) / len(picks)
        assert abs(share - ratio) < 0.06, (ratio, share)
    x, y = SegCrops(rows, index, 32, styled=variants, styled_ratio=1.0)[(0, 5)]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)


def test_an_output_of_other_images_is_refused(styled, tmp_path):
    other = synth.generate(tmp_path / "other", 2, seed=9, width=64, height=48)
    records, _, _ = load_split(str(other.annotations), str(other.images_dir))
    shifted = [type(r)(r.image_id + 100, r.file_name, r.width, r.height, r.parts, r.uri) for r in records]
    with pytest.raises(SegDataError, match="none of its 12 styled image"):
        _styled_variants(styled["cfg"], shifted, print)


def test_online_style_changes_pixels_not_labels_and_is_a_function_of_the_step(styled):
    classes, index = class_index(styled["categories"])
    rows = [r.to_row() for r in styled["train"]]
    plain = SegCrops(rows, index, 48, seed=1)
    online = SegCrops(rows, index, 48, seed=1, style={"plan": None, "p": 1.0, "classes": classes})
    x0, y0 = plain[(0, 7)]
    x1, y1 = online[(0, 7)]
    assert torch.equal(y0, y1)  # the labels still hold
    assert (x0 - x1).abs().mean() > 0.01  # the pixels are styled
    x2, _ = online[(0, 7)]
    assert torch.equal(x1, x2)  # same step, same style: a resumed run sees the same sample
