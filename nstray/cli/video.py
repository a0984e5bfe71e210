"""``nstray video IN --out OUT.mp4 --plan P`` and ``nstray video metrics ORIGINAL STYLED``.

``video`` is a group whose default command is ``style``: ``nstray video IN ...`` is
``nstray video style IN ...`` (a video file literally named ``metrics`` or ``style`` needs ``./``).
"""

from __future__ import annotations

import json
import sys
import time

import click

from nstray.cli.common import DEVICE_HELP, PRECISION_HELP, check_device

_STABILIZE = click.Choice(["flow", "none"])


class _DefaultGroup(click.Group):
    """A group that runs ``style`` when the first argument is not one of its subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["style", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
def video() -> None:
    """Style a video by parts without flicker (``nstray video IN --out OUT.mp4 --plan P``), or measure one."""


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


def _video_masks(annotations: str | None, video_id: int | None, keyframes_every: int | None, video_path: str):
    """(VideoMasks or None, keyframe mode) of the video at ``video_path``; bad records are reported (COCO
    frames past the video's frame count too), a useless file is an error."""
    if annotations is None:
        if keyframes_every:
            _fail("--keyframes-every needs --annotations (the masks to keep on every K-th frame)")
        return None, False
    from nstray.data.video_annotations import VideoAnnotationError, VideoMasks, load_video_annotations
    from nstray.video.io import VideoError, probe

    try:
        frames = probe(video_path).frames or None
    except VideoError as exc:
        _fail(str(exc))
    try:
        ann = load_video_annotations(annotations, frames)
        for p in ann.problems:
            click.echo(f"warning: {annotations}: {p} (left out)", err=True)
        rec = ann.only(video_id)
    except VideoAnnotationError as exc:
        _fail(str(exc))
    if keyframes_every:
        rec = rec.keyframes(keyframes_every)
    annotated = rec.annotated_frames()
    keyframes = bool(keyframes_every) or len(annotated) < rec.length
    return VideoMasks(rec), keyframes


@video.command(name="style")
@click.argument("input_path", metavar="IN")
@click.option("--out", "out_path", required=True, help="Output video (.mp4, H.264; the audio is copied).")
@click.option("--plan", "plan_path", required=True, help="Style plan YAML (parts and background -> styles).")
@click.option("--annotations", default=None,
              help="Part masks of the video (JSON): YouTube-VIS style, or COCO whose images are frames (video_id, frame_id).")
@click.option("--video-id", type=int, default=None, help="Which video of --annotations (needed when it holds several).")
@click.option("--keyframes-every", type=click.IntRange(min=1), default=None,
              help="Keep the masks of every K-th frame only and propagate them along the flow (tests propagation).")
@click.option("--stabilize", type=_STABILIZE, default="flow", show_default=True,
              help="flow: stabilize along optical flow; none: naive per-frame styling.")
@click.option("--strength", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Consistency strength (0 = per-frame styling, 1 = strongest).")
@click.option("--side-by-side", is_flag=True, help="Write original | naive | stabilized next to each other.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N frames.")
@click.option("--gif", "gif_path", default=None,
              help="Also write a GIF preview (at most 30 frames, 240 px wide per panel).")
@click.option("--size", type=click.IntRange(min=16), default=None, help="Longest side in px to style at (downscale).")
@click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="H.264 quality (lower = better).")
@click.option("--fps", type=click.FloatRange(min=0.01), default=25.0, show_default=True,
              help="Frame rate when IN is a folder of frames (a video file keeps its own).")
@click.option("--metrics", "with_metrics", is_flag=True,
              help="Measure the warping error of naive vs stabilized output (slower: an extra flow per frame).")
@click.option("--no-reconcile", is_flag=True, help="Use each frame's own masks as given (no temporal reconciliation).")
@click.option("--variant", type=int, default=0, show_default=True, help="Variant number (style lists draw per variant).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the style choices.")
@click.option("--device", default="cpu", show_default=True, callback=check_device,
              help=f"{DEVICE_HELP} (falls back to cpu with a warning).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help=PRECISION_HELP)
def style_cmd(input_path: str, out_path: str, plan_path: str, annotations: str | None, video_id: int | None,
              keyframes_every: int | None, stabilize: str, strength: float, side_by_side: bool,
              max_frames: int | None, gif_path: str | None, size: int | None, crf: int, fps: float, with_metrics: bool,
              no_reconcile: bool, variant: int, seed: int, device: str, precision: str) -> None:
    """Style the video IN (a video file, or a folder of frames played at --fps) by parts (plan) into --out,
    stabilized along optical flow; audio kept."""
    import numpy as np
    from tqdm import tqdm

    from nstray.data.masksource import MaskSourceError
    from nstray.plan import BACKGROUND, PlanError, load_plan
    from nstray.stylize.parts import PartStylizer, StylizeError
    from nstray.video.io import VideoError, VideoWriter, open_video, write_gif
    from nstray.video.masks import MaskPropagationError
    from nstray.video.metrics import Meter
    from nstray.video.stabilize import Stabilizer
    from nstray.video.style import StageTimes, style_frames

    masks, keyframes = _video_masks(annotations, video_id, keyframes_every, input_path)
    categories = masks.categories if masks is not None else []
    try:
        plan = load_plan(plan_path, categories=sorted(set(categories)) or None)
    except PlanError as exc:
        _fail(f"{plan_path}: {exc}")
    if masks is None and not plan.may_style(BACKGROUND):
        _fail(f"{plan_path}: without --annotations the whole frame is background, but the plan does not style "
              f"'background'; add e.g. 'background: {{style: NAME}}' under parts, or give --annotations")
    try:
        reader = open_video(input_path, fps=fps, max_frames=max_frames, size=size)
    except VideoError as exc:
        _fail(str(exc))
    info = reader.info
    w, h = reader.out_size
    from nstray.assets import AssetError, load_plan_assets
    from nstray.data.images import DEFAULT_MAX_PIXELS as IMAGE_MAX_PIXELS
    from nstray.preflight import check_plan_assets

    check_plan_assets(plan, max_pixels=IMAGE_MAX_PIXELS, limit_hint="the image pixel limit")
    try:  # style images and checkpoints are read here, at the edge; the stylizer takes arrays
        stylizer = PartStylizer(plan, device, precision=precision,
                                assets=load_plan_assets(plan, max_pixels=IMAGE_MAX_PIXELS))
    except (StylizeError, AssetError) as exc:
        _fail(str(exc))
    key = f"video:{info.path.rsplit('/', 1)[-1]}" if masks is None else f"video:{masks.video.video_id}"
    background = np.full((h, w), -1, np.int32)

    def network(x, labels):
        return stylizer(x, background if labels is None else labels, categories, variant=variant, seed=seed,
                        key=key).image

    stab = Stabilizer(strength) if stabilize == "flow" and strength > 0 else None
    want_naive = side_by_side or with_metrics
    meter = Meter(["naive", "stabilized"], reference="naive", categories=categories) if with_metrics else None
    out_w = w * (3 if stab is not None else 2) if side_by_side else w
    total = min(info.frames, max_frames) if info.frames and max_frames else (info.frames or max_frames)
    times = StageTimes()
    gif_frames: list = []
    gif_every = max(1, -(-(total or 30) // 30))
    t_start = time.perf_counter()
    encode_s = 0.0
    try:
        with reader, VideoWriter(out_path, out_w, h, info.fps, time_base=info.time_base, crf=crf,
                                 audio_from=info.path if info.audio_codec else None) as writer, \
                tqdm(total=total, unit="frame", desc="styling", dynamic_ncols=True, file=sys.stderr) as bar:
            for sf in style_frames(reader, network, stab, masks=masks, keyframes=keyframes,
                                   reconcile=not no_reconcile, keep_naive=want_naive, times=times):
                if side_by_side:
                    row = [sf.original, sf.naive] + ([sf.output] if stab is not None else [])
                    frame = np.concatenate(row, axis=1)
                else:
                    frame = sf.output
                t = time.perf_counter()
                writer.write(frame, sf.pts)
                encode_s += time.perf_counter() - t
                if gif_path and sf.index % gif_every == 0 and len(gif_frames) < 30:
                    gif_frames.append(frame)
                if meter is not None:
                    meter.add(sf.original, {"naive": sf.naive, "stabilized": sf.output}, sf.labels)
                bar.update(1)
            if max_frames is not None and reader.frames_read >= max_frames:
                writer.audio_until_s = writer.duration_s  # only part of the video: as much audio
    except (VideoError, StylizeError) as exc:
        _fail(str(exc))
    except (MaskSourceError, MaskPropagationError) as exc:  # masks that do not fit the video
        _fail(f"{annotations}: {exc}")
    seconds = time.perf_counter() - t_start
    if gif_path:
        write_gif(gif_path, gif_frames, float(info.fps) / gif_every, width=min(240 * (out_w // w), out_w))
    n = times.frames
    click.echo(f"wrote {out_path}: {n} frames {out_w}x{h} at {float(info.fps):g} fps in {seconds:.1f} s "
               f"({n / seconds:.2f} frames/s); audio: {'copied (' + info.audio_codec + ')' if info.audio_codec else 'none'}")
    if reader.frames_lost:
        click.echo(f"warning: {input_path}: {reader.problem}; styled up to the last good frame, "
                   f"{reader.frames_lost} frames lost", err=True)
    fps = times.fps()
    click.echo("frames/s per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in fps.items())
               + f", encode {n / encode_s if encode_s else float('inf'):.1f}")
    if stab is not None and stab.stats.cuts:
        click.echo(f"shot cuts detected (stabilization reset): {stab.stats.cuts}")
    if gif_path:
        click.echo(f"wrote {gif_path}")
    if meter is not None:
        res = meter.result()
        nv, st = res["naive"], res["stabilized"]
        ratio = st.warping_error / nv.warping_error if nv.warping_error else float("nan")
        click.echo(f"warping error: naive {nv.warping_error:.5f}, stabilized {st.warping_error:.5f} "
                   f"({100 * ratio:.0f}% of naive); source {nv.source_warping_error:.5f}")
        click.echo(f"style strength: naive {nv.style_strength:.4f}, stabilized {st.style_strength:.4f} "
                   f"({100 * st.style_strength / nv.style_strength:.0f}%); SSIM to naive {st.ssim_to_naive:.3f}")


@video.command(name="metrics")
@click.argument("original")
@click.argument("styled")
@click.option("--naive", default=None, help="The naive per-frame styled video, for SSIM to naive.")
@click.option("--annotations", default=None,
              help="Masks of ORIGINAL (YouTube-VIS style, or COCO with frames as images): per-part figures.")
@click.option("--video-id", type=int, default=None, help="Which video of --annotations.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Measure the first N frames only.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def metrics_cmd(original: str, styled: str, naive: str | None, annotations: str | None, video_id: int | None,
                max_frames: int | None, as_json: bool) -> None:
    """Temporal consistency of STYLED against ORIGINAL: warping error (Lai et al. 2018, by Farneback flow on
    ORIGINAL), the same for ORIGINAL (the floor), style strength, SSIM to --naive, per part with --annotations."""
    from contextlib import ExitStack

    from nstray.video.io import VideoError, open_video
    from nstray.video.metrics import Meter, MetricError

    masks, _ = _video_masks(annotations, video_id, None, original)
    names = ["styled"] + (["naive"] if naive else [])
    meter = Meter(names, reference="naive" if naive else None, categories=masks.categories if masks else [])
    try:
        with ExitStack() as stack:
            readers = {n: stack.enter_context(open_video(p, max_frames=max_frames))
                       for n, p in (("original", original), ("styled", styled), ("naive", naive)) if p}
            sizes = {n: (r.info.width, r.info.height) for n, r in readers.items()}
            if len(set(sizes.values())) != 1:
                _fail("the videos differ in size: " + ", ".join(f"{n} {w}x{h}" for n, (w, h) in sizes.items())
                      + "; compare a styled video with its own original")
            its = {n: iter(r) for n, r in readers.items()}
            from nstray.data.video_annotations import fit_labels

            while True:
                frames = {}
                for n, it in its.items():
                    f = next(it, None)
                    if f is not None:
                        frames[n] = f
                if len(frames) < len(its):
                    if frames:
                        short = [n for n in its if n not in frames]
                        click.echo(f"warning: {', '.join(short)} ended first; measured {meter.frames} frames",
                                   err=True)
                    break
                o = frames.pop("original")
                lm = masks.frame_labels(o.index) if masks is not None else None
                if lm is not None:
                    lm = fit_labels(lm, o.rgb.shape[:2], f"frame {o.index}")
                meter.add(o.rgb, {n: f.rgb for n, f in frames.items()}, lm)
    except (VideoError, MetricError) as exc:
        _fail(str(exc))
    res = meter.result()
    s = res["styled"]
    if as_json:
        out = {"styled": s.to_dict()}
        if naive:
            out["naive"] = res["naive"].to_dict()
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"frames: {s.frames}")
    click.echo(f"warping error: {s.warping_error:.5f} (original video, the floor: {s.source_warping_error:.5f})")
    if naive:
        nv = res["naive"]
        click.echo(f"naive warping error: {nv.warping_error:.5f} -> styled is {100 * s.warping_error / nv.warping_error:.0f}%")
    click.echo(f"style strength: {s.style_strength:.4f}" + (f" ({100 * s.style_strength / res['naive'].style_strength:.0f}% of naive)" if naive else ""))
    if s.ssim_to_naive is not None:
        click.echo(f"SSIM to naive: {s.ssim_to_naive:.3f}")
    for part, figs in s.parts.items():
        click.echo(f"  {part}: " + ", ".join(f"{k} {v:.5f}" for k, v in figs.items()))
