"""Video I/O: round trips keep frames, timing, size and audio; every bad input gets a clear error."""

from __future__ import annotations

import wave
from fractions import Fraction

import av
import numpy as np
import pytest
from videofixtures import VIDEOS, moving_frames, write_video

from nstray.video.io import VideoError, VideoReader, VideoWriter, probe, write_gif

REAL = sorted(VIDEOS.glob("*.mp4")) if VIDEOS.is_dir() else []


def _read(path, **kw):
    with VideoReader(path, **kw) as r:
        return [f for f in r], r


def test_round_trip_keeps_count_timing_and_pixels(tmp_path):
    frames = moving_frames(12)
    path = write_video(tmp_path / "a.mp4", frames, fps=10)
    got, r = _read(path)
    assert r.info.fps == 10 and r.info.frames == 12 and (r.info.width, r.info.height) == (64, 48)
    assert len(got) == 12 and r.frames_lost == 0
    assert [f.pts for f in got] == sorted({f.pts for f in got})
    err = np.mean([np.abs(a.astype(float) - f.rgb).mean() for a, f in zip(frames, got)])
    assert err < 10.0  # crf 10; 4:2:0 chroma costs a little on this colourful texture


def test_odd_size_is_padded_and_cropped_back(tmp_path):
    frames = [f[:47, :63] for f in moving_frames(5)]
    path = write_video(tmp_path / "odd.mp4", [np.ascontiguousarray(f) for f in frames])
    got, r = _read(path)
    assert (r.info.width, r.info.height) == (63, 47) and got[0].rgb.shape == (47, 63, 3)
    c = av.open(str(path))
    assert (c.streams.video[0].width, c.streams.video[0].height) == (64, 48)  # what other players see
    c.close()


def test_rotation_metadata_is_honoured(tmp_path):
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :16] = 255  # a white band on the left of the stored frame
    path = tmp_path / "rot.mp4"
    out = av.open(str(path), mode="w")
    s = out.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
    s.set_display_rotation(90)
    for i in range(3):
        f = av.VideoFrame.from_ndarray(frame, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()
    got, r = _read(path)
    assert r.info.rotation in (90, 270) and (r.info.width, r.info.height) == (32, 64)
    img = got[0].rgb
    assert img.shape == (64, 32, 3)
    band = img.mean(axis=(1, 2)) > 128  # the band is now a horizontal strip at the top or bottom
    assert band[:14].all() != band[-14:].all()


def test_truncated_stream_styles_to_last_good_frame(tmp_path):
    path = write_video(tmp_path / "t.mp4", moving_frames(30))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got, r = _read(cut)
    assert 0 < len(got) < 30 and r.frames_lost == 30 - len(got)
    assert "truncated" in r.problem or "stopped" in r.problem


def test_not_a_video(tmp_path):
    p = tmp_path / "x.mp4"
    p.write_bytes(b"this is not a video at all" * 50)
    with pytest.raises(VideoError, match=r"x\.mp4: not a video"):
        probe(p)


def test_no_video_stream(tmp_path):
    p = tmp_path / "sound.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.zeros(800, np.int16).tobytes())
    with pytest.raises(VideoError, match=r"sound\.wav: no video stream"):
        VideoReader(p)


def test_zero_frames(tmp_path):
    data = write_video(tmp_path / "a.mp4", moving_frames(5)).read_bytes()
    p = tmp_path / "empty.mp4"
    p.write_bytes(data[: data.index(b"mdat") + 4])  # the header announces 5 frames; no frame data follows
    with pytest.raises(VideoError, match=r"empty\.mp4: the video stream holds no decodable frame"):
        _read(p)


def test_pixel_limit(tmp_path):
    path = write_video(tmp_path / "a.mp4", moving_frames(2))
    with pytest.raises(VideoError, match=r"a\.mp4: frames are 64x48 = 3,072 pixels, above the limit of 1,000"):
        VideoReader(path, max_pixels=1000)


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "nope.mp4")


def test_gif_preview(tmp_path):
    n = write_gif(tmp_path / "p.gif", moving_frames(4), fps=10)
    from PIL import Image

    im = Image.open(tmp_path / "p.gif")
    assert n == 4 and im.n_frames == 4 and im.size == (64, 48)


def _packets(path):
    c = av.open(str(path))
    out = [(bytes(p), p.pts) for p in c.demux(c.streams.audio[0]) if p.size]
    codec = c.streams.audio[0].codec_context.name
    c.close()
    return codec, out


@pytest.mark.skipif(not REAL, reason="shared real videos absent")
def test_real_video_audio_copied_frame_count_and_fps_kept(tmp_path):
    src = min(REAL, key=lambda p: p.stat().st_size)  # the short 1280x720 clip
    info = probe(src)
    out = tmp_path / "copy.mp4"
    with VideoReader(src, size=320) as r, VideoWriter(out, *r.out_size, info.fps, time_base=info.time_base,
                                                    audio_from=str(src), preset="ultrafast") as w:
        for f in r:
            w.write(f.rgb, f.pts)
    got = probe(out)
    assert got.frames == info.frames and got.fps == info.fps and got.audio_codec == info.audio_codec
    assert _packets(src) == _packets(out)  # the same codec and the very same audio packets


@pytest.mark.skipif(not REAL, reason="shared real videos absent")
def test_real_videos_decode_as_documented():
    facts = {"intel_car-detection.mp4": (768, 432, 377, Fraction(25, 2)),
             "udacity_vehicle-detection_test_video.mp4": (1280, 720, 38, Fraction(25)),
             "udacity_lanelines_solidWhiteRight.mp4": (960, 540, 221, Fraction(25))}
    for p in REAL:
        if p.name in facts:
            i = probe(p)
            assert (i.width, i.height, i.frames, i.fps) == facts[p.name] and i.audio_codec == "aac"


def test_a_folder_of_frames_reads_in_natural_order_and_checks_sizes(tmp_path):
    from PIL import Image

    from nstray.video.io import FrameFolderReader, open_video

    for i in (1, 2, 10):
        Image.fromarray(np.full((6, 8, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    with open_video(tmp_path, fps=12.5) as rd:
        got = [(f.index, f.pts, int(f.rgb[0, 0, 0])) for f in rd]
    assert isinstance(rd, FrameFolderReader) and got == [(0, 0, 1), (1, 1, 2), (2, 2, 10)]
    assert (rd.info.width, rd.info.height, rd.info.frames, rd.info.fps, rd.info.audio_codec) == (8, 6, 3, 12.5, None)
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tmp_path / "f11.png")
    with pytest.raises(VideoError, match=r"f11.png: 8x4 but the folder's first frame is 8x6"):
        list(FrameFolderReader(tmp_path))


def _gop_video(path, frames, gop: int, b_frames: int):
    """An H.264 MP4 with a keyframe every ``gop`` frames and B-frames (frames reordered in the stream)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.max_b_frames = b_frames
        s.options = {"crf": "10", "keyint_min": str(gop), "sc_threshold": "0", "bf": str(b_frames)}
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


@pytest.mark.parametrize("b_frames", [0, 3])
def test_a_chunk_read_by_seeking_equals_the_same_frames_decoded_from_the_start(tmp_path, b_frames):
    frames = moving_frames(90, seed=4)
    path = _gop_video(tmp_path / "gop.mp4", frames, gop=10, b_frames=b_frames)
    with av.open(str(path)) as c:  # the file has what the test is about: keyframes to seek to, reordering
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    assert sum(p.is_keyframe for p in packets) >= 8
    assert b_frames == 0 or any(a.pts > b.pts for a, b in zip(packets, packets[1:]))
    with VideoReader(path) as r:
        whole = [f.rgb for f in r]
    for start, stop in [(1, 5), (9, 12), (10, 11), (5, 90), (37, 90), (85, 200), (89, 90)]:  # (5, 90): past the demux margin
        with VideoReader(path, start=start, max_frames=stop) as r:
            got = [(f.index, f.rgb) for f in r]
            assert r.frames_lost == 0
        assert [i for i, _ in got] == list(range(start, min(stop, 90)))
        assert all(np.array_equal(rgb, whole[i]) for i, rgb in got), (start, stop)
