"""``nstray run``, ``nstray submit``, ``nstray demo``: the dataset jobs on Ray (images, or videos with
``kind: video``; ``run`` and ``submit`` dispatch on the config's kind)."""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nstray.cli.common import is_user_error

if TYPE_CHECKING:
    from nstray.config import JobConfig, VideoJobConfig
    from nstray.pipeline.job import JobSummary
    from nstray.pipeline.video_job import VideoJobSummary

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "jobs/stylize_dataset.py"
VIDEO_ENTRYPOINT = "jobs/stylize_video.py"
# never shipped to the cluster with the working dir
SUBMIT_EXCLUDES = [".venv", ".git", "out", "outputs", "nstray-demo", "*.egg-info", "__pycache__", ".pytest_cache",
                   ".dev", "build", "dist", "*.log"]


def entrypoint(cfg: JobConfig | VideoJobConfig) -> str:
    """The Ray job entrypoint script of a config's kind."""
    return VIDEO_ENTRYPOINT if getattr(cfg, "kind", "images") == "video" else ENTRYPOINT


def _inputs(cfg: JobConfig | VideoJobConfig) -> tuple[dict[str, str], str]:
    """``(what the job reads, the field of the folder it lists)``, for the output-overlap check."""
    from nstray.pipeline.safety import job_inputs

    if getattr(cfg, "kind", "images") != "video":
        return job_inputs(cfg.input.annotations, cfg.input.images, cfg.plan,
                          cfg.segment.model if cfg.segment else None), "input.images"
    from nstray.pipeline.video_job import video_inputs

    return video_inputs(cfg)


def _load(config: str | dict) -> JobConfig | VideoJobConfig:
    """Load the config, turning every config / plan problem into a clean CLI error."""
    from nstray.config import ConfigError, load_config

    try:
        return load_config(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class _Progress:
    """A progress bar on a terminal (tqdm); a line every ~10% (or 30 s) in logs (Ray jobs, CI)."""

    def __init__(self, enabled: bool = True, unit: str = "img") -> None:
        self.enabled = enabled
        self.unit = unit
        self.bar: Any = None
        self.t0 = time.monotonic()
        self.last_line = 0.0
        self.last_frac = -1.0

    def __call__(self, done: int, failed: int, total: int) -> None:
        if not self.enabled:
            return
        if sys.stderr.isatty():
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit=self.unit, desc="styling", dynamic_ncols=True)
            self.bar.n = done + failed
            self.bar.set_postfix(failed=failed, refresh=False)
            self.bar.refresh()
            return
        frac = (done + failed) / max(total, 1)
        now = time.monotonic()
        if frac >= 1 or frac - self.last_frac >= 0.1 or now - self.last_line > 30:
            rate = done / max(now - self.t0, 1e-9)
            what = "chunks" if self.unit == "chunk" else "outputs"
            click.echo(f"progress: {done + failed}/{total} {what} ({failed} failed), {rate:.2f} {what}/s", err=True)
            self.last_line, self.last_frac = now, frac

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def format_summary(s: JobSummary) -> str:
    """The closing summary: speed, done / skipped / failed, and where every output is."""
    lines = []
    if s.pipeline_seconds > 0:
        lines.append(f"styled {s.done} output(s) in {s.pipeline_seconds:.1f} s: {s.images_per_s:.2f} images/s")
    else:
        lines.append("nothing to do: every output is already done" if not s.failed else "")
    lines.append(f"done {s.done}, skipped (already done) {s.skipped}, failed {s.failed}; "
                 f"{s.records} usable image(s), {s.bad_records} bad input record(s)")
    if s.redone:
        lines.append(f"redone {s.redone} output(s) recorded as done but missing or damaged")
    if s.removed or s.unexpected:
        lines.append(f"removed {s.removed} superseded output file(s); {s.unexpected} other file(s) under images/ "
                     "left in place")
    p = s.paths
    lines += [
        f"images:        {p.get('outputs')}",
        f"manifest:      {p.get('manifest')}/",
        f"errors:        {p.get('errors')} ({s.error_rows} row(s))",
        f"COCO:          {p.get('annotations')}",
        f"contact sheet: {p.get('contact_sheet')}",
    ]
    lines += s.stage_lines()
    if p.get("report"):
        lines.append(f"job report:    {p['report']}")
    if s.written:
        lines.append(f"wrote {len(s.written)} file(s) besides the images this run")
    else:
        lines.append("wrote nothing this run")
    return "\n".join(x for x in lines if x)


def format_video_summary(s: VideoJobSummary) -> str:
    """The closing summary of a video job."""
    lines = []
    if s.pipeline_seconds > 0:
        lines.append(f"styled {s.frames} frame(s) in {s.chunks_done} chunk(s) and joined {s.done} video(s) in "
                     f"{s.pipeline_seconds:.1f} s: {s.frames_per_s:.2f} frames/s")
    elif not s.failed:
        lines.append("nothing to do: every output is already done")
    lines.append(f"videos: done {s.done}, skipped (already done) {s.skipped}, failed {s.failed}; chunks: done "
                 f"{s.chunks_done}, reused {s.chunks_skipped}, failed {s.chunks_failed}; {s.videos} usable "
                 f"video(s), {s.bad_videos} bad")
    p = s.paths
    lines += [f"videos:        {p.get('outputs')}", f"manifest:      {p.get('manifest')}/",
              f"errors:        {p.get('errors')}", f"contact sheet: {p.get('contact_sheet')}"]
    lines += s.stage_lines()
    if p.get("report"):
        lines.append(f"job report:    {p['report']}")
    lines.append(f"wrote {len(s.written)} file(s) besides the videos this run" if s.written else "wrote nothing this run")
    return "\n".join(x for x in lines if x)


def run_config(config: str | dict | JobConfig | VideoJobConfig, *, address: str | None = None, progress: bool = True,
               verify: bool = False, kind: str | None = None) -> JobSummary | VideoJobSummary:
    """Run a job (image or video, by the config's ``kind``) with progress and the closing summary on stdout;
    user errors (see :data:`nstray.cli.common.USER_ERRORS`) become CLI errors, also for the job entrypoints.
    ``kind``: the kind the caller expects (an entrypoint of one kind refuses the other)."""
    cfg = config if not isinstance(config, (str, dict)) else _load(config)
    video = getattr(cfg, "kind", "images") == "video"
    if kind is not None and kind != cfg.kind:
        other = entrypoint(cfg)
        raise click.ClickException(f"this is a {cfg.kind} job config (kind: {cfg.kind}); run it with {other} "
                                   "or `nstray run`")
    if video:
        from nstray.pipeline.video_job import run_video_job as run_job
    else:
        from nstray.pipeline.job import run_job
    bar = _Progress(progress, unit="chunk" if video else "img")
    try:
        summary = run_job(cfg, address=address, on_progress=bar, notify=lambda m: click.echo(m, err=True),
                          verify=verify)
    except Exception as exc:
        if not is_user_error(exc):
            raise
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()
    click.echo(format_video_summary(summary) if video else format_summary(summary))
    return summary


@click.command()
@click.argument("config")
@click.option("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verify", is_flag=True,
              help="Also re-read every output the manifest records as done and check its SHA-256 (a plain rerun "
                   "checks presence and size from one listing).")
def run(config: str, address: str | None, no_progress: bool, verify: bool) -> None:
    """Run a dataset job (CONFIG.yaml; images, or videos with ``kind: video``) on the current Ray cluster,
    or a local one.

    Rerunning resumes: outputs the manifest records as done, and found there with their recorded size,
    are skipped; missing or damaged ones and failed records are redone. One job per output at a time.
    """
    run_config(config, address=address, progress=not no_progress, verify=verify)


# ---------------------------------------------------------------- submit


def _ship_config(config: str, cfg: JobConfig) -> tuple[str, list[str]]:
    """How the entrypoint finds the config on the cluster: ``(entrypoint args, py_modules)``.

    A config inside the project travels with the working dir (its relative paths resolve there);
    one outside is shipped, resolved and self-contained, as a tiny package in ``py_modules``.
    """
    import yaml

    path = Path(config).resolve() if "://" not in config else None
    if path is not None and path.is_relative_to(PROJECT_ROOT) and path.is_file():
        return str(path.relative_to(PROJECT_ROOT)), []
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    name = "nstray_job_" + hashlib.sha256(text.encode()).hexdigest()[:12]
    pkg = Path(tempfile.mkdtemp(prefix="nstray-submit-")) / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A job config shipped by `nstray submit`."""\n')
    (pkg / "config.yaml").write_text(text)
    return f"--config-module {name}", [str(pkg)]


@click.command()
@click.argument("config")
@click.option("--address", required=True, envvar="RAY_API_SERVER_ADDRESS",
              help="The Ray dashboard / Jobs API address, e.g. http://HEAD:8265.")
@click.option("--no-wait", is_flag=True, help="Submit and return; do not follow the logs.")
@click.option("--python", "python_exe", default="python", show_default=True,
              help="The Python the cluster runs the entrypoint with.")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Environment for the job (e.g. AWS_ENDPOINT_URL=...). Not for secrets: give the cluster "
                   "credentials through its own AWS chain (instance role, profile).")
def submit(config: str, address: str, no_wait: bool, python_exe: str, env: tuple[str, ...]) -> None:
    """Submit a dataset job to a Ray cluster through the Ray Jobs API and follow its logs.

    The project folder is the job's working dir (without .venv, .git, outputs); the config goes along.
    Exits with the job's status (0 when it succeeded).
    """
    import asyncio

    from ray.job_submission import JobStatus, JobSubmissionClient

    from nstray.pipeline.safety import check_output
    from nstray.preflight import check_plan_assets

    cfg = _load(config)  # fail here, not on the cluster (a ConfigError / PlanError is one `Error:` line)
    inputs, root_field = _inputs(cfg)
    check_output(cfg.output, inputs, images_field=root_field)
    # local style images and checkpoints must load; s3:// ones are the cluster's to read (its own credentials)
    check_plan_assets(cfg.load_plan(), max_pixels=cfg.limits.max_pixels, skip_s3=True)
    args, py_modules = _ship_config(config, cfg)
    env_vars = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--env")
        env_vars[key] = value
    runtime_env: dict[str, Any] = {"working_dir": str(PROJECT_ROOT), "excludes": SUBMIT_EXCLUDES}
    if py_modules:
        runtime_env["py_modules"] = py_modules
    if env_vars:
        runtime_env["env_vars"] = env_vars
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=f"{python_exe} {entrypoint(cfg)} {args}", runtime_env=runtime_env,
                                   metadata={"nstray_output": cfg.output})
    except Exception as exc:  # noqa: BLE001 - connection refused, HTTP errors ... one clear line
        raise click.ClickException(f"cannot submit to {address}: {type(exc).__name__}: {exc}") from None
    click.echo(f"submitted job {job_id} to {address} (output: {cfg.output})", err=True)
    if no_wait:
        click.echo(job_id)
        return

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            click.echo(lines, nl=False)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job goes on (ray job stop {job_id} --address {address} to stop it)",
                   err=True)
        sys.exit(130)
    status = client.get_job_status(job_id)
    while not status.is_terminal():
        time.sleep(1)
        status = client.get_job_status(job_id)
    click.echo(f"job {job_id}: {status.value}", err=True)
    sys.exit(0 if status == JobStatus.SUCCEEDED else 1)


# ---------------------------------------------------------------- demo

DEMO_PLAN = PROJECT_ROOT / "examples" / "plans" / "demo.yaml"
_INLINE_DEMO_PLAN = {
    "styles": {"strokes": {"kind": "multistyle", "index": 16}, "starry": {"kind": "multistyle", "index": 19},
               "vivid": {"kind": "multistyle", "index": 3}, "ink": {"kind": "multistyle", "index": 15},
               "fire": {"kind": "multistyle", "index": 20}},
    "parts": {"body": {"style": ["strokes", "vivid"]}, "window": {"style": "starry"}, "windshield": {"style": "starry"},
              "wheel": {"style": "ink"}, "headlight": {"style": "fire"}, "taillight": {"style": "fire"},
              "background": {"style": "none"}},
}


@click.command()
@click.option("--out", default="nstray-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the sample dataset (data/) and the styled set (styled/).")
@click.option("--images", "n_images", default=8, show_default=True, type=click.IntRange(min=1),
              help="How many sample images.")
@click.option("--variants", default=2, show_default=True, type=click.IntRange(min=1), help="Styled copies per image.")
@click.option("--actors", default=2, show_default=True, type=click.IntRange(min=1), help="Stylizer actors.")
@click.option("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local Ray).")
def demo(out: str, n_images: int, variants: int, actors: int, address: str | None) -> None:
    """Generate sample data, style it by parts on local Ray, and say where the results are."""
    from nstray.data.synth import generate

    import yaml

    root = Path(out).resolve()
    click.echo(f"generating {n_images} synthetic labeled vehicles in {root / 'data'} ...", err=True)
    data = generate(root / "data", n_images, seed=0)
    plan: Any = str(DEMO_PLAN) if DEMO_PLAN.is_file() else _INLINE_DEMO_PLAN
    cfg = {
        "input": {"annotations": str(data.annotations), "images": str(data.images_dir)},
        "output": str(root / "styled"),
        "variants": variants,
        "seed": 0,
        "plan": plan,
        "resources": {"actors": actors, "gpus_per_actor": 0, "batch_size": 2},
        "format": {"type": "png"},
    }
    config = root / "job.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary = run_config(str(config), address=address)
    click.echo("")
    click.echo(f"open the contact sheet (original | variants): {summary.paths['contact_sheet']}")
    click.echo(f"the demo's job config: {config} (plan: {plan if isinstance(plan, str) else 'built in'})")
    click.echo(f"run it again (resumes; writes nothing when all is done): nstray run {config}")
