"""Sweep the video stabilizer's settings cheaply over cached clips: strength vs warping error per clip.

Decoding and the style network are the slow part, so per clip (the shared real videos, or
``--videos``) this caches once, under ``--cache``: the original frames at ``--size`` px, the naive
per-frame styled frames (whole frame, multi-style ``--style``), the stabilizer's flows (DIS, both
directions, per frame pair) and the metric's flows (Farneback, the ones :mod:`nstray.video.metrics`
uses, with their reliable masks). Each setting then reruns only the stabilizer's blending and the
figures: warping error relative to naive, style strength relative to naive, SSIM to naive — the
same definitions as ``benchmarks/video.py`` and ``nstray video metrics``.

Settings are the cartesian product of ``--set NAME=V1,V2,...`` (any :class:`Stabilizer` keyword;
``interpolation`` takes ``linear``, ``cubic``, ``lanczos`` or an OpenCV code). A setting *meets the
target* when on every clip the warping error is ≤ ``--max-we`` of naive and the strength ≥ ``--min-strength``.

    python benchmarks/video_sweep.py --set strength=0.8,0.9 --set interpolation=linear,cubic --json sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstray.video.flow import FlowEstimator, reliable_mask  # noqa: E402
from nstray.video.metrics import METRIC_FLOW, FrameFlow, WarpingError, ssim  # noqa: E402
from nstray.video.stabilize import DEFAULT_FLOW, Stabilizer  # noqa: E402

SHARED_VIDEOS = ROOT.parent / "shared" / "data" / "videos"
INTERP = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4,
          "nearest": cv2.INTER_NEAREST}


class CachedFlow:
    """A stand-in for :class:`FlowEstimator` that answers ``both(cur, prev)`` from precomputed flows."""

    def __init__(self, frames: list[np.ndarray], fwd: np.ndarray, bwd: np.ndarray) -> None:
        self._idx = {id(f): i for i, f in enumerate(frames)}
        self.fwd, self.bwd = fwd, bwd

    def both(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i, j = self._idx[id(a)], self._idx[id(b)]
        if j != i - 1:
            raise KeyError(f"no cached flow for frames {i} -> {j}")
        return self.fwd[i - 1], self.bwd[i - 1]


def _cache(path: Path, args: argparse.Namespace, stylizer_box: list) -> dict[str, np.ndarray]:
    """The clip's cached arrays (computed and saved on first use)."""
    f = Path(args.cache) / f"{path.stem}_{args.size}_{args.max_frames}_s{args.style}_{args.flow}.npz"
    if f.exists():
        return dict(np.load(f))
    from nstray.video.io import VideoReader

    if not stylizer_box:
        from nstray.plan import load_plan
        from nstray.stylize.parts import PartStylizer

        plan = load_plan({"styles": {"s": {"kind": "multistyle", "index": args.style}},
                          "parts": {"background": {"style": "s"}}})
        stylizer_box.append(PartStylizer(plan, args.device))
    stylizer = stylizer_box[0]
    t = time.perf_counter()
    with VideoReader(path, max_frames=args.max_frames, size=args.size) as rd:
        originals = [fr.rgb for fr in rd]
    h, w = originals[0].shape[:2]
    background = np.full((h, w), -1, np.int32)
    naive = [stylizer(o, background, [], key=path.name).image for o in originals]
    est, met = FlowEstimator(args.flow), FlowEstimator(METRIC_FLOW)
    fwd, bwd, mflow, mrel = [], [], [], []
    for cur, prev in zip(originals[1:], originals[:-1]):
        a, b = est.both(cur, prev)
        fwd.append(a)
        bwd.append(b)
        a, b = met.both(cur, prev)
        mflow.append(a)
        mrel.append(reliable_mask(a, b))
    arrays = {"originals": np.stack(originals), "naive": np.stack(naive), "fwd": np.stack(fwd), "bwd": np.stack(bwd),
              "metric_flow": np.stack(mflow), "metric_reliable": np.stack(mrel)}
    f.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f, **arrays)
    print(f"  cached {path.name}: {len(originals)} frames {w}x{h} in {time.perf_counter() - t:.0f} s", flush=True)
    return arrays


def _figures(c: dict[str, np.ndarray], frames: list[np.ndarray]) -> dict[str, float]:
    """Warping error, style strength and SSIM of ``frames`` against the clip's naive frames."""
    originals, naive = c["originals"], c["naive"]
    we = WarpingError()
    for i in range(1, len(frames)):
        we.add(frames[i - 1], frames[i], FrameFlow(c["metric_flow"][i - 1], c["metric_reliable"][i - 1]))
    strength = float(np.mean([np.abs(f.astype(np.float32) - o).mean() / 255.0 for f, o in zip(frames, originals)]))
    return {"warping_error": we.mean, "style_strength": strength,
            "ssim_to_naive": float(np.mean([ssim(f, n) for f, n in zip(frames, naive)]))}


def _run(c: dict[str, np.ndarray], kw: dict) -> list[np.ndarray]:
    originals = list(c["originals"])
    st = Stabilizer(flow=CachedFlow(originals, c["fwd"], c["bwd"]), **kw)
    out = []
    for o, n in zip(originals, c["naive"]):
        st.begin(o)
        out.append(st.finish(n))
    return out


def _value(name: str, v: str):
    if name == "interpolation":
        return INTERP[v] if v in INTERP else int(v)
    if name in ("boundaries", "occlusions"):
        return v.lower() in ("1", "true", "yes")
    return int(v) if name == "ref_every" else float(v)


def settings(specs: list[str]) -> list[dict]:
    """The cartesian product of ``NAME=V1,V2`` specs as keyword dicts."""
    axes = []
    for s in specs:
        name, _, vals = s.partition("=")
        axes.append([(name, _value(name, v)) for v in vals.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _label(kw: dict) -> str:
    inv = {v: k for k, v in INTERP.items()}
    return " ".join(f"{k}={inv.get(v, v) if k == 'interpolation' else v}" for k, v in kw.items()) or "defaults"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", nargs="*", default=None, help="Videos (default: the shared real videos).")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--max-frames", type=int, default=40)
    ap.add_argument("--style", type=int, default=19)
    ap.add_argument("--flow", default=DEFAULT_FLOW, help="The stabilizer's flow estimator (cached).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default="/tmp/nstray-video-sweep", help="Folder for the per-clip caches.")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=V1,V2", help="A Stabilizer keyword to sweep.")
    ap.add_argument("--max-we", type=float, default=0.30, help="Target: warping error at most this fraction of naive.")
    ap.add_argument("--min-strength", type=float, default=0.90, help="Target: style strength at least this of naive.")
    ap.add_argument("--json", default=None, help="Append every figure here (JSON lines).")
    args = ap.parse_args()
    videos = [Path(v) for v in args.videos] if args.videos else sorted(SHARED_VIDEOS.glob("*.mp4"))
    box: list = []
    clips = {}
    for v in videos:
        c = _cache(v, args, box)
        c["_naive"] = _figures(c, list(c["naive"]))
        clips[v.stem] = c
    names = list(clips)
    short = [n.split("_")[1][:9] if "_" in n else n[:9] for n in names]
    print("setting".ljust(48) + "".join(f"{s:>22s}" for s in short) + "   meets")
    print(" " * 48 + "".join(f"{'WE% str% SSIM':>22s}" for _ in short))
    for kw in settings(args.set):
        row, ok = {}, True
        for n in names:
            c = clips[n]
            f = _figures(c, _run(c, kw))
            base = c["_naive"]
            f["relative_warping_error"] = f["warping_error"] / base["warping_error"]
            f["relative_style_strength"] = f["style_strength"] / base["style_strength"]
            ok &= f["relative_warping_error"] <= args.max_we and f["relative_style_strength"] >= args.min_strength
            row[n] = f
        print(_label(kw).ljust(48) + "".join(
            f"{100 * f['relative_warping_error']:8.1f}{100 * f['relative_style_strength']:7.1f}{f['ssim_to_naive']:7.3f}"
            for f in row.values()) + ("   yes" if ok else ""), flush=True)
        if args.json:
            inv = {v: k for k, v in INTERP.items()}
            rec = {k: (inv.get(v, v) if k == "interpolation" else v) for k, v in kw.items()}
            with open(args.json, "a") as fh:
                fh.write(json.dumps({"setting": rec, "meets": ok, "clips": row}) + "\n")


if __name__ == "__main__":
    main()
