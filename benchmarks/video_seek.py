"""Reading a chunk late in a video: VideoReader's keyframe seek vs decoding from the first frame.

Side by side in one process, per video (default: the shared real videos): the time to get ``--chunk``
RGB frames starting at a few positions, (a) as the video job's chunk actors read them now
(``VideoReader(start=s, max_frames=s + chunk)``: demux to place frame ``s``, seek to its keyframe, decode
the GOP) and (b) as they did before (decode every frame from the first, converting only the chunk's).
Also checks that both give the same frames. Best of ``--repeats``.

    python benchmarks/video_seek.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstray.video.io import VideoReader, probe  # noqa: E402

SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos"


def from_first_frame(path: Path, start: int, stop: int) -> list[np.ndarray]:
    """Frames ``start .. stop-1`` by decoding from the first frame (the reader before keyframe seeking)."""
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i >= stop:
                break
            if i >= start:
                out.append(frame.to_ndarray(format="rgb24"))
    return out


def seeking(path: Path, start: int, stop: int) -> list[np.ndarray]:
    with VideoReader(path, start=start, max_frames=stop) as r:
        return [f.rgb for f in r]


def best(fn, repeats: int) -> tuple[float, list[np.ndarray]]:
    times, out = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="*", type=Path, default=None)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    videos = args.videos or sorted(SHARED_VIDEOS.glob("*.mp4"))
    if not videos:
        print(f"no videos (give --videos; the shared ones are in {SHARED_VIDEOS})")
        return 1
    print(f"{'video':42} {'frames':>6} {'start':>6} {'from first ms':>14} {'seek ms':>8} {'ratio':>6}  same")
    for path in videos:
        n = probe(path).frames
        for start in sorted({n // 2, max(0, n - args.chunk)}):
            stop = min(n, start + args.chunk)
            t_old, old = best(lambda: from_first_frame(path, start, stop), args.repeats)
            t_new, new = best(lambda: seeking(path, start, stop), args.repeats)
            same = len(old) == len(new) and all(np.array_equal(a, b) for a, b in zip(old, new))
            print(f"{path.name:42} {n:6d} {start:6d} {1000 * t_old:14.1f} {1000 * t_new:8.1f} "
                  f"{t_old / t_new:5.1f}x  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
