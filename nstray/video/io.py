"""Video decode and encode with PyAV, streamed: one frame in memory at a time.

Conventions: a frame is ``uint8[H, W, 3]`` RGB, upright (see rotation below).

Choices (and why):

* **Streamed.** :class:`VideoReader` is an iterator of :class:`Frame`; :class:`VideoWriter`
  encodes each frame as it comes. A long video is never held whole in memory.
* **Timestamps kept.** Each frame carries its source ``pts`` and the stream's ``time_base``;
  the writer encodes with the same time base and the same ``pts``, so frame count, frame rate
  and timing (variable frame rate included) come out as they went in.
* **Audio copied, not re-encoded.** The writer remuxes the source's first audio stream packet by
  packet (same codec, same bytes), interleaved with the video as it is written.
* **Rotation honoured.** Phones store portrait video as landscape plus a display-matrix rotation;
  the reader rotates each frame upright (``Frame.rgb`` is what a player shows) and the writer
  writes upright frames with no rotation, so styled output displays the same way.
* **Odd sizes.** H.264 in 4:2:0 needs even width and height. The writer pads an odd side by one
  replicated row/column and records the true size in the container's ``comment`` tag
  (``nstray:size=WxH``); :class:`VideoReader` crops such files back, so a round trip keeps the
  size. Other players show the one extra edge row/column.
* **A folder of frames** (``frame_00001.png`` ...; PNG, JPEG, WebP, BMP, TIFF) reads as a video
  through :class:`FrameFolderReader`, the same interface: frames in natural name order (``2`` before
  ``10``), at a frame rate the caller gives (a folder has none), no audio. :func:`open_video` and
  :func:`probe` take either.
* **Bad input is a :class:`VideoError`** naming the file: not a video, no video stream, zero
  frames, a frame size over the pixel limit. A stream truncated mid-way is not an error: the
  reader stops at the last good frame and :attr:`VideoReader.frames_lost` says how many of the
  frames the header announced never came.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["VideoError", "VideoInfo", "Frame", "VideoReader", "FrameFolderReader", "open_video", "VideoWriter", "probe",
           "write_gif", "FRAME_EXTENSIONS",
           "DEFAULT_MAX_PIXELS", "DEFAULT_CRF"]

DEFAULT_MAX_PIXELS = 40_000_000  # 8K UHD is 33 Mpx; a bigger frame is almost surely a mistake or an attack
DEFAULT_CRF = 18  # visually lossless-ish: styled texture is high-frequency and suffers at the x264 default of 23
_SIZE_TAG = re.compile(r"nstray:size=(\d+)x(\d+)")


class VideoError(ValueError):
    """A video that cannot be read or written; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (after rotation: ``width``/``height`` are upright)."""

    path: str
    width: int
    height: int
    fps: Fraction  # average frame rate
    frames: int  # frames the header announces (0 when unknown)
    time_base: Fraction
    rotation: int  # display rotation in degrees counter-clockwise (0, 90, 180, 270)
    codec: str
    audio_codec: str | None  # None: no audio stream

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.fps) if self.fps else 0.0


@dataclass
class Frame:
    """One decoded frame: its index in the stream, its timestamp (in the stream's time base) and pixels."""

    index: int
    pts: int | None
    rgb: np.ndarray


def _open(path: str | os.PathLike):
    import av

    p = str(path)
    if not Path(p).is_file():
        raise VideoError(f"{p}: no such file; check the path")
    try:
        return av.open(p)
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"{p}: not a video file FFmpeg can read ({exc.__class__.__name__}); "
                         f"give an MP4/MOV/MKV/WebM/AVI video") from None


def _info(container, path: str, max_pixels: int) -> VideoInfo:
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise VideoError(f"{path}: no video stream (the file holds {kinds}); give a file with a video track")
    v = container.streams.video[0]
    v.thread_type = "AUTO"  # before the rotation peek opens the codec
    w, h = int(v.codec_context.width), int(v.codec_context.height)
    if w <= 0 or h <= 0:
        raise VideoError(f"{path}: the video stream has no frame size; the file is damaged, re-export it")
    if w * h > max_pixels:
        raise VideoError(f"{path}: frames are {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,}; "
                         f"downscale the video first or raise the pixel limit")
    m = _SIZE_TAG.search(str(container.metadata.get("comment", "")))
    if m and int(m.group(1)) <= w and int(m.group(2)) <= h:
        w, h = int(m.group(1)), int(m.group(2))  # our own padded odd size: crop back
    rotation = _rotation(container, v)
    if rotation in (90, 270):
        w, h = h, w
    fps = Fraction(v.average_rate) if v.average_rate else (Fraction(v.guessed_rate) if v.guessed_rate else Fraction(0))
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    return VideoInfo(path=path, width=w, height=h, fps=fps, frames=int(v.frames or 0),
                     time_base=Fraction(v.time_base), rotation=rotation, codec=v.codec_context.name,
                     audio_codec=audio)


def _rotation(container, stream) -> int:
    """The stream's display rotation (degrees counter-clockwise, a multiple of 90), from the display matrix."""
    import av

    deg = 0.0  # PyAV exposes the display matrix on decoded frames: peek at the first one, then rewind
    try:
        for frame in container.decode(stream):
            deg = float(getattr(frame, "rotation", 0) or 0)
            break
        container.seek(0, stream=stream)
    except (av.error.FFmpegError, StopIteration):
        deg = 0.0
    return int(round(deg / 90.0)) * 90 % 360


def probe(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Read a video's header (no decoding beyond one frame); raises :class:`VideoError` on bad input.

    A folder of frames is probed as :class:`FrameFolderReader` reads it (its first frame decoded).
    """
    if Path(path).is_dir():
        return FrameFolderReader(path, max_pixels=max_pixels).info
    c = _open(path)
    try:
        return _info(c, str(path), max_pixels)
    finally:
        c.close()


_REORDER_MARGIN = 64  # packets demuxed past the start frame before its presentation-order rank is trusted


class VideoReader:
    """Decode a video's first video stream frame by frame as upright RGB ``uint8[H, W, 3]``.

    ``max_frames`` stops early (e.g. a preview); ``start`` skips the frames before it: the packets are
    demuxed (not decoded) to find each frame's timestamp, the decoder seeks to the last keyframe at or
    before frame ``start`` and decodes from there, so a chunk late in a long video costs its GOP, not the
    whole prefix (a stream without timestamps is decoded from its first frame). Indices keep counting from
    the video's first frame, so a chunk read with ``start=s, max_frames=e`` yields frames ``s .. e-1``.
    ``size`` (longest side in px) downscales each frame
    (area interpolation, even sides kept as is). After iteration, :attr:`frames_read` is how many came
    out, :attr:`frames_lost` how many the header announced but a truncated or damaged stream never
    delivered (0 when complete, or when stopped by ``max_frames``), :attr:`problem` what went wrong.
    Raises :class:`VideoError` when the stream yields no frame at all.
    """

    def __init__(self, path: str | os.PathLike, *, max_frames: int | None = None, size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, start: int = 0) -> None:
        self.path = str(path)
        self.start = max(0, int(start))
        self._container = _open(path)
        try:
            self.info = _info(self._container, self.path, max_pixels)
        except BaseException:
            self._container.close()
            raise
        self.max_frames = max_frames
        self.out_size = _scaled_size(self.info.width, self.info.height, size)
        self.frames_read = 0
        self.frames_lost = 0
        self.problem: str | None = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[Frame]:
        import av

        info = self.info
        stream = self._container.streams.video[0]
        rot_k = info.rotation // 90
        stored_w, stored_h = (info.height, info.width) if rot_k % 2 else (info.width, info.height)
        order = self._seek(stream) if self.start > 0 else None  # frame pts in presentation order
        it = self._container.decode(stream)
        while self.max_frames is None or self.frames_read < self.max_frames:
            try:
                frame = next(it)
            except StopIteration:
                break
            except (av.error.FFmpegError, EOFError) as exc:
                self.problem = f"decoding stopped at frame {self.frames_read}: {exc}"
                break
            if order is not None and self.frames_read < self.start:  # after a seek: a frame's index is its
                # timestamp's rank until the start frame; from there frames come in presentation order
                k = bisect.bisect_left(order, frame.pts) if frame.pts is not None else len(order)
                if k >= len(order) or order[k] != frame.pts:
                    raise VideoError(f"{self.path}: frame timestamp {frame.pts} after seeking is not in the stream's "
                                     "index; re-mux the file (e.g. ffmpeg -i IN -c copy OUT.mp4)")
                self.frames_read = k
            if self.frames_read < self.start:
                self.frames_read += 1
                continue
            rgb = frame.to_ndarray(format="rgb24")[:stored_h, :stored_w]
            if rot_k:
                rgb = np.ascontiguousarray(np.rot90(rgb, k=rot_k))
            if self.out_size != (info.width, info.height):
                import cv2

                rgb = cv2.resize(rgb, self.out_size, interpolation=cv2.INTER_AREA)
            yield Frame(self.frames_read, frame.pts, rgb)
            self.frames_read += 1
        if self.frames_read == 0:
            why = f" ({self.problem})" if self.problem else ""
            raise VideoError(f"{self.path}: the video stream holds no decodable frame{why}; "
                             f"the file is empty or damaged, re-export it")
        stopped = self.max_frames is not None and self.frames_read >= self.max_frames
        if not stopped and info.frames and self.frames_read < info.frames:
            self.frames_lost = info.frames - self.frames_read
            if self.problem is None:
                self.problem = f"the stream ends after {self.frames_read} of {info.frames} frames (truncated)"


    def _seek(self, stream) -> list[int] | None:
        """Position the decoder at the last keyframe at or before frame :attr:`start`; the sorted timestamps of
        the frames demuxed (up to a margin past ``start``), or None (decoder left at the first frame) when
        packets lack timestamps. Demuxing reads packets without decoding them: far cheaper than decoding."""
        entries: list[tuple[int, bool]] = []
        try:
            for packet in self._container.demux(stream):
                if packet.size == 0:  # the demuxer's final flush packet
                    continue
                if packet.pts is None:
                    entries = []
                    break
                entries.append((int(packet.pts), bool(packet.is_keyframe)))
                if len(entries) > self.start + _REORDER_MARGIN:  # frame ``start`` is placed: H.264/HEVC reorder
                    break                                        # at most 16 frames
        finally:
            self._container.seek(0, stream=stream)
        if len(entries) <= self.start:
            return None  # too short, or no timestamps: decode from the first frame
        order = sorted(p for p, _ in entries)
        target = order[self.start]
        keys = [p for p, key in entries if key and p <= target]
        if keys and max(keys) > order[0]:
            self._container.seek(max(keys), stream=stream, backward=True, any_frame=False)
        return order


FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class FrameFolderReader:
    """A folder of frame images read as a video (see the module docstring); :class:`VideoReader`'s interface.

    ``fps`` is the frame rate the frames are played at (written to the output's timestamps). Every
    frame must be the first one's size; a frame that cannot be decoded is a :class:`VideoError`
    naming it.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float | Fraction = 25, max_frames: int | None = None,
                 size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        folder = Path(path)
        self.path = str(path)
        self.max_pixels = max_pixels
        self.files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS),
                            key=lambda p: _natural(p.name))
        if not self.files:
            raise VideoError(f"{path}: a folder with no frame images ({', '.join(FRAME_EXTENSIONS)}); "
                             f"give a video file or a folder of frames")
        rate = Fraction(fps).limit_denominator(1001)
        if rate <= 0:
            raise VideoError(f"{path}: the frame rate must be positive, got {fps}")
        h, w = self._decode(self.files[0]).shape[:2]
        self.info = VideoInfo(path=self.path, width=w, height=h, fps=rate, frames=len(self.files),
                              time_base=1 / rate, rotation=0, codec="images", audio_codec=None)
        self.max_frames = max_frames
        self.out_size = _scaled_size(w, h, size)
        self.frames_read = 0
        self.frames_lost = 0
        self.problem: str | None = None

    def _decode(self, file: Path) -> np.ndarray:
        from nstray.data.images import ImageDecodeError, decode_image

        try:
            return decode_image(file.read_bytes(), name=str(file), max_pixels=self.max_pixels)
        except (OSError, ImageDecodeError) as exc:
            raise VideoError(f"{file}: cannot read this frame ({exc}); fix or remove it") from None

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Frame]:
        w, h = self.info.width, self.info.height
        for file in self.files[: self.max_frames]:
            rgb = self._decode(file)
            if rgb.shape[:2] != (h, w):
                raise VideoError(f"{file}: {rgb.shape[1]}x{rgb.shape[0]} but the folder's first frame is {w}x{h}; "
                                 f"give frames of one size")
            if self.out_size != (w, h):
                import cv2

                rgb = cv2.resize(rgb, self.out_size, interpolation=cv2.INTER_AREA)
            yield Frame(self.frames_read, self.frames_read, rgb)
            self.frames_read += 1


def open_video(path: str | os.PathLike, *, fps: float | Fraction = 25, **kw) -> VideoReader | FrameFolderReader:
    """A reader of the video file or folder of frames at ``path`` (``fps``: a folder's frame rate)."""
    if Path(path).is_dir():
        return FrameFolderReader(path, fps=fps, **kw)
    return VideoReader(path, **kw)


def _scaled_size(w: int, h: int, size: int | None) -> tuple[int, int]:
    """(w, h) scaled so the longer side is ``size`` (never up), each side at least 8 px."""
    if size is None or max(w, h) <= size:
        return w, h
    s = size / max(w, h)
    return max(8, round(w * s)), max(8, round(h * s))


class VideoWriter:
    """Encode RGB frames to H.264 MP4 (``libx264``, ``crf``), copying the audio of ``audio_from``.

    ``fps`` and ``time_base`` should be the source's (:class:`VideoInfo`); :meth:`write` takes the
    source frame's ``pts`` so timing is kept exactly. Odd sizes are padded (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: Fraction, *,
                 time_base: Fraction | None = None, crf: int = DEFAULT_CRF, audio_from: str | None = None,
                 preset: str = "medium") -> None:
        import av

        if width < 2 or height < 2:
            raise VideoError(f"{path}: cannot encode {width}x{height} frames; both sides need at least 2 px")
        if not fps or fps <= 0:
            raise VideoError(f"{path}: the frame rate must be positive, got {fps}")
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = int(width), int(height)
        self.enc_w, self.enc_h = self.width + self.width % 2, self.height + self.height % 2
        # faststart: the index goes first, so a file cut short later still plays (and reads) up to the cut
        self._out = av.open(self.path, mode="w", options={"movflags": "+faststart"})
        if (self.enc_w, self.enc_h) != (self.width, self.height):
            self._out.metadata["comment"] = f"nstray:size={self.width}x{self.height}"
        self._v = self._out.add_stream("libx264", rate=Fraction(fps))
        self._v.width, self._v.height, self._v.pix_fmt = self.enc_w, self.enc_h, "yuv420p"
        tb = self._tb = Fraction(time_base) if time_base else 1 / Fraction(fps)
        self._v.time_base = tb  # the muxer may pick another once open: pts below stay in ``tb``
        self._v.codec_context.time_base = tb  # frame pts are in the source's time base
        self._v.options = {"crf": str(int(crf)), "preset": preset}
        self._fps = Fraction(fps)
        self._frames = 0
        self._last_pts: int | None = None
        self._audio_in = None
        self._audio_out = None
        self._audio_iter = None
        self._pending = None
        if audio_from is not None:
            src = av.open(str(audio_from))
            if src.streams.audio:
                self._audio_in = src
                a = src.streams.audio[0]
                self._audio_out = self._out.add_stream_from_template(a)
                self._audio_iter = src.demux(a)
            else:
                src.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close(audio_until_s=self.audio_until_s)

    audio_until_s: float | None = None  # set before leaving the ``with`` block to trim the copied audio

    @property
    def duration_s(self) -> float:
        """The end of the last written frame, in seconds."""
        if self._last_pts is None:
            return 0.0
        return float(self._last_pts * self._tb) + 1.0 / float(self._fps)

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        """Encode one frame (``uint8[height, width, 3]``) at ``pts`` (the source's, in ``time_base``)."""
        import av

        if rgb.dtype != np.uint8 or rgb.shape != (self.height, self.width, 3):
            raise VideoError(f"{self.path}: frame {self._frames} is {rgb.dtype} {list(rgb.shape)}, "
                             f"expected uint8 [{self.height}, {self.width}, 3]")
        if (self.enc_w, self.enc_h) != (self.width, self.height):
            rgb = np.pad(rgb, ((0, self.enc_h - self.height), (0, self.enc_w - self.width), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if pts is None:  # no source timing: a constant rate
            pts = round(self._frames / (self._fps * self._tb))
        if self._last_pts is not None and pts <= self._last_pts:  # encoders need strictly rising pts
            pts = self._last_pts + 1
        frame.pts = int(pts)
        self._last_pts = frame.pts
        for packet in self._v.encode(frame):
            self._out.mux(packet)
        self._frames += 1
        self._pump_audio(float(frame.pts * self._tb))  # audio up to this frame; the rest on close

    def _pump_audio(self, until_s: float | None) -> None:
        """Mux source audio packets up to ``until_s`` seconds (all when None), keeping their bytes."""
        if self._audio_iter is None:
            return
        while True:
            pkt = self._pending
            self._pending = None
            if pkt is None:
                try:
                    pkt = next(self._audio_iter)
                except StopIteration:
                    self._audio_iter = None
                    return
            if pkt.dts is None:  # the demuxer's final flush packet
                continue
            if until_s is not None and pkt.pts is not None and float(pkt.pts * pkt.time_base) > until_s:
                self._pending = pkt
                return
            pkt.stream = self._audio_out
            self._out.mux(pkt)

    def close(self, *, audio_until_s: float | None = None) -> None:
        """Flush the encoder, write the remaining audio (up to ``audio_until_s`` seconds: pass the video's end
        when only part of the source was styled) and close the file."""
        if self._out is None:
            return
        try:
            if self._frames:
                for packet in self._v.encode(None):
                    self._out.mux(packet)
            self._pump_audio(audio_until_s)
        finally:
            self._out.close()
            self._out = None
            if self._audio_in is not None:
                self._audio_in.close()


def write_gif(path: str | os.PathLike, frames: list[np.ndarray] | Iterator[np.ndarray], fps: float,
              *, width: int | None = None) -> int:
    """Write a looping GIF preview (PIL, adaptive palette per frame); ``width`` downscales. Returns frames written."""
    import cv2
    from PIL import Image

    images = []
    for f in frames:
        if width is not None and f.shape[1] > width:
            f = cv2.resize(f, (width, max(2, round(f.shape[0] * width / f.shape[1]))), interpolation=cv2.INTER_AREA)
        images.append(Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    if not images:
        raise VideoError(f"{path}: no frames to write")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images[0].save(str(path), save_all=True, append_images=images[1:], duration=max(20, round(1000 / fps)), loop=0,
                   optimize=True)
    return len(images)
