"""``nstray train-style``: train a new feed-forward style (Johnson network or a new CIN style) on Ray Train."""

from __future__ import annotations

import click

from nstray.models.builtin_styles import NUM_STYLES

_LAYERS_HELP = "Comma-separated VGG layers, each optionally weighted: 'relu1_2,relu2_2' or 'relu1_2=1,relu3_3=0.5'."


def _parse_layers(text: str | None, option: str) -> dict[str, float] | None:
    """``"relu1_2,relu2_2=0.5"`` -> ``{"relu1_2": 1.0, "relu2_2": 0.5}``; None stays None (the default)."""
    if text is None:
        return None
    out: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise click.BadParameter(f"{item!r}: the weight after '=' must be a number", param_hint=option) from None
    if not out:
        raise click.BadParameter("give at least one layer", param_hint=option)
    return out


@click.command("train-style")
@click.argument("style_image")
@click.option("--data", required=True, help="Content images: a folder or s3:// prefix of images, or a COCO annotations .json (local or s3://).")
@click.option("--images", default=None, help="Images root of a COCO --data file [default: the JSON's folder, or its images/ subfolder].")
@click.option("--out", required=True, help="Output folder or s3:// prefix; the run goes to OUT/NAME.")
@click.option("--name", default=None, help="Run name [default: <style image stem>-<mode>]. The same OUT/NAME resumes.")
@click.option("--mode", type=click.Choice(["johnson", "cin"]), default="johnson", show_default=True,
              help="johnson: a whole Johnson network for this style; cin: a new style for the 26-style CIN network (only its gamma/beta train).")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="Total optimizer steps (a resumed run trains up to this).")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Images per step per worker.")
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True, help="Side of the square training crops (px).")
@click.option("--style-size", type=click.IntRange(min=16), default=None, help="Shorter side the style image is resized to [default: --size].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam learning rate [default: 1e-3 johnson, 1e-2 cin].")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=100, show_default=True, help="Linear learning-rate warmup.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Ray Train workers (DDP).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True, help="GPUs per worker (0: train on CPUs).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="CPUs per worker (torch threads on CPU).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True, help="Checkpoint (and rewrite model.pt and the loss curves) every K steps.")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=3, show_default=True, help="Checkpoints kept in storage (the newest).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue OUT/NAME from its last checkpoint; --no-resume refuses to touch an existing run.")
@click.option("--vgg-arch", type=click.Choice(["vgg16", "vgg19"]), default="vgg16", show_default=True, help="Loss network.")
@click.option("--vgg-weights", default=None, help="VGG weights: registry name, state-dict file or s3:// URI [default: the arch's torchvision weights]; 'none' = random init (smoke tests only).")
@click.option("--content-layers", default=None, help=_LAYERS_HELP + " [default: relu2_2]")
@click.option("--style-layers", default=None, help=_LAYERS_HELP + " [default: relu1_2,relu2_2,relu3_3,relu4_3]")
@click.option("--content-weight", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--style-weight", type=click.FloatRange(min=0), default=1e5, show_default=True)
@click.option("--tv-weight", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--init-style", type=click.IntRange(0, NUM_STYLES - 1), default=None, help="cin: start the new style from this builtin style [default: the mean of all].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--loader-workers", type=click.IntRange(min=0), default=2, show_default=True, help="Image-reading processes per worker.")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True, help="Worker failures to recover from (restart from the last checkpoint).")
@click.option("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local Ray).")
def train_style(style_image: str, data: str, images: str | None, out: str, name: str | None, mode: str, steps: int,
                batch_size: int, size: int, style_size: int | None, lr: float | None, warmup_steps: int, workers: int,
                gpus_per_worker: float, cpus_per_worker: float, checkpoint_every: int, keep_checkpoints: int,
                resume: bool, vgg_arch: str, vgg_weights: str | None, content_layers: str | None,
                style_layers: str | None, content_weight: float, style_weight: float, tv_weight: float,
                init_style: int | None, seed: int, loader_workers: int, max_failures: int,
                address: str | None) -> None:
    """Train a feed-forward network for STYLE_IMAGE (local or s3://) on Ray Train (DDP across workers).

    Checkpoints go to OUT/NAME every --checkpoint-every steps; OUT/NAME/model.pt is what a style
    plan uses (kind: feedforward); rerunning the command resumes from the last checkpoint.
    """
    from nstray.train.data import TrainDataError
    from nstray.train.ray_trainer import TrainConfig, TrainConfigError, TrainingError, train_style as run

    if vgg_weights is not None and vgg_weights.lower() == "none":
        click.echo("warning: --vgg-weights none: random VGG weights, the result is not a real style", err=True)
        weights_ref: str | None = None
    else:
        weights_ref = vgg_weights or vgg_arch
    config = TrainConfig(
        style_image=style_image, data=data, images=images, out=out, name=name, mode=mode, steps=steps,
        batch_size=batch_size, size=size, style_size=style_size, lr=lr, warmup_steps=warmup_steps,
        workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, resume=resume, vgg_arch=vgg_arch,
        vgg_weights=weights_ref, content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
        cin_init_style=init_style, seed=seed, loader_workers=loader_workers, max_failures=max_failures,
    )
    layers = {"content_layers": _parse_layers(content_layers, "--content-layers"),
              "style_layers": _parse_layers(style_layers, "--style-layers")}
    for key, value in layers.items():
        if value is not None:
            setattr(config, key, value)
    try:
        summary = run(config, address=address, notify=lambda m: click.echo(m, err=True))
    except (TrainConfigError, TrainingError, TrainDataError) as exc:
        raise click.ClickException(str(exc)) from None
    metrics = summary.metrics
    if summary.trained:
        loss = f" (loss {metrics['total']:.4g})" if "total" in metrics else ""
        click.echo(f"trained {config.mode} style to step {summary.step}{loss}, from step {summary.resumed_from}")
    click.echo(f"model:       {summary.model_uri}")
    click.echo(f"checkpoint:  {summary.checkpoint}")
    click.echo(f"loss curves: {summary.losses_png}  ({summary.losses_csv}, {summary.losses_json})")
    click.echo("use it in a style plan:\n")
    click.echo(summary.plan_snippet())
