"""Video mask sources: YouTube-VIS parsing and validation, keyframe propagation, reconciliation, stability."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from videofixtures import coco_frames

from nstray.data.masksource import CocoParts, MaskSourceError, WholeFrame
from nstray.data.synth_video import generate_video, render_video
from nstray.data.video_annotations import (VideoAnnotationError, VideoMasks, load_video_annotations, parse_coco_frames,
                                           parse_video_annotations)
from nstray.video.flow import FlowEstimator, reliable_mask
from nstray.video.masks import Reconciler, mean_stability, propagate, propagate_stream, stability


def _render(n: int, seed: int = 3, w: int = 160, h: int = 96):
    """Lossless frames, exact owner maps (track ids) and the tracks' categories of a synthetic video."""
    gen = render_video(n, seed, w, h)
    frames, owners = [], []
    try:
        while True:
            f, o = next(gen)
            frames.append(f)
            owners.append(o)
    except StopIteration as stop:
        return frames, owners, stop.value


def _miou(a: np.ndarray, b: np.ndarray) -> float:
    ious = []
    for k in np.union1d(np.unique(a), np.unique(b)):
        if k < 0:
            continue
        inter, union = ((a == k) & (b == k)).sum(), ((a == k) | (b == k)).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def test_synth_video_masks_round_trip_through_the_json(tmp_path):
    v = generate_video(tmp_path, 6, seed=2, width=128, height=80)
    ann = load_video_annotations(str(v.annotations))
    assert not ann.problems
    rec = ann.only()
    frames, owners, cats = _render(6, 2, 128, 80)
    assert rec.length == 6 and all(t.category == cats[t.ann_id - 1] for t in rec.tracks)
    masks = VideoMasks(rec)
    track_to_owner = np.array([t.ann_id - 1 for t in rec.tracks] + [-1])
    for t in range(6):
        assert np.array_equal(track_to_owner[masks.frame_labels(t)], owners[t])  # exact per-frame masks


def test_propagation_beats_holding_the_nearest_keyframe():
    frames, owners, cats = _render(11)
    keys = {0: owners[0], 5: owners[5], 10: owners[10]}
    got = propagate(frames, keys, len(cats))
    between = [t for t in range(11) if t not in keys]
    prop = np.mean([_miou(got[t], owners[t]) for t in between])
    hold = np.mean([_miou(owners[0 if t < 3 else 5 if t < 8 else 10], owners[t]) for t in between])
    assert prop > 0.8 and prop > hold + 0.02
    streamed = [lm for _, lm in propagate_stream(frames, lambda i: keys.get(i), len(cats))]
    assert all(np.array_equal(a, b) for a, b in zip(streamed, got))


def test_reconciliation_steadies_jittering_masks():
    frames, owners, cats = _render(16)
    rng = np.random.default_rng(0)
    jittered = []
    for o in owners:  # per-frame annotation noise: parts grown or shrunk by a pixel at random
        lab = o.astype(np.float32)
        k = np.ones((3, 3), np.uint8)
        lab = cv2.dilate(lab, k) if rng.random() < 0.5 else cv2.erode(lab, k)
        jittered.append(lab.astype(np.int32))
    rec = Reconciler()
    reconciled = [rec(f, j) for f, j in zip(frames, jittered)]
    est = FlowEstimator()
    raw, rec_s = [], []
    for t in range(1, 16):
        flow, back = est.both(frames[t], frames[t - 1])
        ok = reliable_mask(flow, back)
        raw.append(stability(jittered[t - 1], jittered[t], flow, ok))
        rec_s.append(stability(reconciled[t - 1], reconciled[t], flow, ok))
    assert mean_stability(rec_s, cats)["all"] > mean_stability(raw, cats)["all"]


def test_bad_records_are_named_and_the_rest_is_used():
    rle_ok = {"size": [4, 6], "counts": [0, 24]}  # uncompressed RLE: no zeros, then 24 ones
    doc = {"videos": [{"id": 1, "width": 6, "height": 4, "length": 2, "file_names": ["a", "b"]},
                      {"id": 2, "width": 6, "height": 4, "length": 3, "file_names": ["a"]}],
           "categories": [{"id": 1, "name": "wheel"}],
           "annotations": [
               {"id": 1, "video_id": 1, "category_id": 1, "segmentations": [rle_ok, None], "bboxes": [[0, 0, 6, 4], None]},
               {"id": 2, "video_id": 9, "category_id": 1, "segmentations": [None, None]},
               {"id": 3, "video_id": 1, "category_id": 1, "segmentations": [{"size": [5, 6], "counts": [30]}, None]},
               {"id": 4, "video_id": 1, "category_id": 1, "segmentations": [None, None, None]},
               {"id": 5, "video_id": 1, "category_id": 7, "segmentations": [None, None]}]}
    ann = parse_video_annotations(doc, "a.json")
    text = "\n".join(str(p) for p in ann.problems)
    assert "video 2: 'length' is 3 but 'file_names' lists 1" in text
    assert "annotation 2: unknown video id 9" in text
    assert "annotation 3: frame 0: RLE size [5, 6] is not the video's [height, width] = [4, 6]" in text
    assert "annotation 4: 3 per-frame segmentations for a video of 2 frames (frame index out of range)" in text
    assert "annotation 5: unknown category_id 7" in text
    rec = ann.only()
    assert [t.ann_id for t in rec.tracks] == [1]
    masks = VideoMasks(rec)
    assert (masks.frame_labels(0) == 0).all() and masks.frame_labels(1) is None
    with pytest.raises(MaskSourceError, match="frame 2 is out of range"):
        masks.frame_labels(2)
    assert rec.keyframes(5).annotated_frames() == [0]


def test_the_seam_whole_frame_and_coco_parts():
    img = np.zeros((4, 6, 3), np.uint8)
    lab = WholeFrame().labels(None, img)
    assert (lab.label_map == -1).all() and lab.categories == []
    from nstray.data.coco import ImageRecord, Part

    rec = ImageRecord(1, "a.jpg", 6, 4, [Part(1, 1, "wheel", None, (0.0, 0.0, 3.0, 4.0))])
    lab = CocoParts().labels(rec, img)
    assert lab.categories == ["wheel"] and (lab.label_map[:, :3] == 0).all() and (lab.label_map[:, 3:] == -1).all()
    with pytest.raises(MaskSourceError, match=r"image 1 \(a.jpg\): the annotations say 6x4 but the image is 5x4"):
        CocoParts().labels(rec, img[:, :5])


def test_not_youtube_vis(tmp_path):
    from nstray.data.video_annotations import VideoAnnotationError

    p = tmp_path / "coco.json"
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(VideoAnnotationError, match="no 'videos' list"):
        load_video_annotations(str(p))


def test_coco_with_frames_as_images_gives_the_same_masks(tmp_path):
    v = generate_video(tmp_path, 5, seed=2, width=96, height=64)
    ytvis = json.loads(v.annotations.read_text())
    (tmp_path / "coco.json").write_text(json.dumps(coco_frames(ytvis)))
    ann = load_video_annotations(str(tmp_path / "coco.json"), frames=5)
    assert not ann.problems
    got, want = VideoMasks(ann.only()), VideoMasks(load_video_annotations(str(v.annotations)).only())
    assert got.video.file_names == want.video.file_names
    img = np.zeros((64, 96, 3), np.uint8)
    for f in range(5):  # same tracks → same labels and categories on every frame
        a, b = got.labels(f, img), want.labels(f, img)
        names_a, names_b = np.array(a.categories + ["-"]), np.array(b.categories + ["-"])
        assert np.array_equal(names_a[a.label_map], names_b[b.label_map])
        ta = np.array([t.ann_id for t in got.video.tracks] + [-1])  # track identity: first annotation's id
        tb = np.array([t.ann_id for t in want.video.tracks] + [-1])
        pairs = set(zip(ta[a.label_map].ravel().tolist(), tb[b.label_map].ravel().tolist()))
        assert len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})  # one-to-one: none merged


def test_coco_frames_bad_records_are_named_and_the_rest_goes_on(tmp_path):
    v = generate_video(tmp_path, 4, seed=1, width=96, height=64)
    doc = coco_frames(json.loads(v.annotations.read_text()), with_track_ids=False)
    doc["images"].append({"id": 9001, "video_id": 7, "frame_id": 0, "file_name": "x.jpg", "width": 96, "height": 64})
    doc["images"].append({"id": 9002, "video_id": 1, "frame_id": 9, "file_name": "y.jpg", "width": 96, "height": 64})
    rle = next(a for a in doc["annotations"] if isinstance(a["segmentation"], dict))
    rle["segmentation"] = {**rle["segmentation"], "size": [32, 48]}
    ann = parse_coco_frames(doc, "c.json", frames=4)
    msgs = [str(p) for p in ann.problems]
    assert any("video 7" in m and "unknown video id 7" in m and "listed in 'videos'" in m for m in msgs), msgs
    assert any("frame index 9 is out of range: the video has 4 frames" in m and "fix:" in m for m in msgs), msgs
    assert any(f"annotation {rle['id']}" in m and "RLE size [32, 48]" in m and "re-export" in m for m in msgs), msgs
    assert len(msgs) == 3
    rec = ann.only()
    assert rec.length == 4 and rec.tracks and all(len(t.segmentations) == 4 for t in rec.tracks)
    lab = VideoMasks(rec).labels(3, np.zeros((64, 96, 3), np.uint8))
    assert (lab.label_map >= 0).any()
    with pytest.raises(VideoAnnotationError, match="not COCO with frames as images"):
        parse_coco_frames({"images": [{"id": 1}], "annotations": []}, "c.json")
