"""``nstray video`` end to end on small videos: styled by parts, stabilized, audio kept, clear errors."""

from __future__ import annotations

import json

import av
import pytest
from click.testing import CliRunner
from videofixtures import VIDEOS, coco_frames, moving_frames, write_video

from nstray.cli import main
from nstray.video.io import probe

PLAN = """styles:
  night: {kind: multistyle, index: 19}
  vivid: {kind: multistyle, index: 3}
parts:
  body: {style: night}
  wheel: {style: vivid}
  background: {style: vivid, strength: 0.5}
"""


@pytest.fixture()
def plan(tmp_path):
    p = tmp_path / "plan.yaml"
    p.write_text(PLAN)
    return p


def _run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r


def test_synthetic_labeled_video_styled_by_parts_with_metrics(tmp_path, plan):
    r = _run("datasets", "synth", tmp_path / "v", "--video", "--frames", "5", "--width", "128", "--height", "80")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out.mp4"
    r = _run("video", tmp_path / "v" / "video.mp4", "--out", out, "--plan", plan, "--annotations",
             tmp_path / "v" / "annotations.json", "--metrics", "--gif", tmp_path / "p.gif", "--side-by-side")
    assert r.exit_code == 0, r.output
    assert "warping error: naive" in r.output and "5 frames 384x80" in r.output
    info = probe(out)
    assert info.frames == 5 and info.fps == 10 and (info.width, info.height) == (384, 80)
    naive, stab = (float(x.split()[0].rstrip(",")) for x in r.output.split("warping error: naive ")[1].split(", stabilized ")[:2])
    assert stab < naive
    r = _run("video", "metrics", tmp_path / "v" / "video.mp4", tmp_path / "v" / "video.mp4", "--json",
             "--annotations", tmp_path / "v" / "annotations.json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["styled"]
    assert m["frames"] == 5 and m["style_strength"] == 0.0 and "body" in m["parts"]


def test_keyframe_propagation_from_the_cli(tmp_path, plan):
    _run("datasets", "synth", tmp_path / "v", "--video", "--frames", "6", "--width", "96", "--height", "64")
    r = _run("video", tmp_path / "v" / "video.mp4", "--out", tmp_path / "o.mp4", "--plan", plan, "--annotations",
             tmp_path / "v" / "annotations.json", "--keyframes-every", "3", "--stabilize", "none")
    assert r.exit_code == 0, r.output
    assert probe(tmp_path / "o.mp4").frames == 6


def test_coco_with_frames_as_images_from_the_cli(tmp_path, plan):
    """COCO whose images are frames (video_id / frame_id) styles by parts; a bad frame is named and left out."""
    _run("datasets", "synth", tmp_path / "v", "--video", "--frames", "4", "--width", "96", "--height", "64")
    doc = coco_frames(json.loads((tmp_path / "v" / "annotations.json").read_text()))
    doc["images"].append({"id": 5000, "video_id": 1, "frame_id": 12, "file_name": "f12.jpg", "width": 96, "height": 64})
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    r = CliRunner().invoke(main, [str(a) for a in ("video", tmp_path / "v" / "video.mp4", "--out", tmp_path / "o.mp4",
                                                   "--plan", plan, "--annotations", tmp_path / "coco.json",
                                                   "--stabilize", "none", "--metrics")])
    assert r.exit_code == 0, r.output
    assert "frame index 12 is out of range: the video has 4 frames" in r.output and "(left out)" in r.output
    assert probe(tmp_path / "o.mp4").frames == 4
    r = _run("video", "metrics", tmp_path / "v" / "video.mp4", tmp_path / "o.mp4", "--json",
             "--annotations", tmp_path / "coco.json")
    assert r.exit_code == 0, r.output
    assert "body" in json.loads(r.output[r.output.index("{"):])["styled"]["parts"]


def test_a_folder_of_frames_with_coco_frames_annotations(tmp_path, plan):
    """IN may be a folder of frames (natural order, --fps): styled by parts, frame count and rate as given."""
    from nstray.data.synth_video import generate_video

    v = generate_video(tmp_path / "v", 4, seed=1, width=96, height=64, write_frames=True)
    (tmp_path / "coco.json").write_text(json.dumps(coco_frames(json.loads(v.annotations.read_text()))))
    r = _run("video", tmp_path / "v" / "frames", "--out", tmp_path / "o.mp4", "--plan", plan, "--annotations",
             tmp_path / "coco.json", "--fps", "12", "--stabilize", "none")
    assert r.exit_code == 0, r.output
    info = probe(tmp_path / "o.mp4")
    assert info.frames == 4 and info.fps == 12 and (info.width, info.height) == (96, 64)
    (tmp_path / "empty").mkdir()
    r = _run("video", tmp_path / "empty", "--out", tmp_path / "x.mp4", "--plan", plan)
    assert r.exit_code == 1 and "a folder with no frame images" in r.output


def test_unlabeled_video_whole_frame_and_errors(tmp_path, plan):
    src = write_video(tmp_path / "in.mp4", moving_frames(5, w=64, h=48))
    r = _run("video", src, "--out", tmp_path / "o.mp4", "--plan", plan, "--max-frames", "3")
    assert r.exit_code == 0, r.output
    assert probe(tmp_path / "o.mp4").frames == 3
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"nope" * 100)
    r = _run("video", bad, "--out", tmp_path / "x.mp4", "--plan", plan)
    assert r.exit_code == 1 and "bad.mp4: not a video" in r.output and "Traceback" not in r.output
    r = _run("video", src, "--out", tmp_path / "x.mp4", "--plan", plan, "--keyframes-every", "2")
    assert r.exit_code == 1 and "--keyframes-every needs --annotations" in r.output
    (tmp_path / "nobg.yaml").write_text("styles:\n  a: {kind: multistyle, index: 1}\nparts:\n  body: {style: a}\n")
    r = _run("video", src, "--out", tmp_path / "x.mp4", "--plan", tmp_path / "nobg.yaml")
    assert r.exit_code == 1 and "does not style 'background'" in r.output and not (tmp_path / "x.mp4").exists()


@pytest.mark.skipif(not VIDEOS.is_dir(), reason="shared real videos absent")
def test_real_video_keeps_audio_count_and_fps(tmp_path, plan):
    src = VIDEOS / "udacity_vehicle-detection_test_video.mp4"
    out = tmp_path / "o.mp4"
    r = _run("video", src, "--out", out, "--plan", plan, "--size", "96", "--max-frames", "6")
    assert r.exit_code == 0, r.output
    a, b = probe(src), probe(out)
    assert (b.frames, b.fps, b.audio_codec) == (6, a.fps, "aac")

    def packets(p):
        c = av.open(str(p))
        got = [bytes(x) for x in c.demux(c.streams.audio[0]) if x.size]
        c.close()
        return got

    got = packets(out)  # the audio of the styled part only: the source's first packets, unchanged
    assert 0 < len(got) < len(packets(src)) and got == packets(src)[: len(got)]
    assert len(got) * 1024 / 48000 <= 6 / 25 + 0.05  # AAC frames of 1024 samples at 48 kHz: about 0.24 s
