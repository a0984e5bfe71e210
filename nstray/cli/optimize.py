"""``nstray optimize``: optimization-based NST (Gatys), per-part styles, reconstructions.

Per-part mode (``--coco ANN --image-id ID --plan PLAN.yaml``): the plan picks a style per part
(``Plan.choose`` with ``--variant``/``--seed``, as the dataset job does); parts that share a style
form one region, and all regions are optimized together with guided Gram matrices. How the plan's
style kinds map to the optimization:

* ``kind: arbitrary`` — its ``image`` is the region's style image; a blend ``{image: weight}``
  mixes the images' Gram matrices with those weights;
* ``kind: multistyle`` / ``kind: feedforward`` — networks, with no style image to optimize toward:
  such parts take ``--style STYLE`` when it is given, otherwise the command stops and names them;
* ``none`` — no style loss: the part (and the background, unless the plan styles ``background``)
  only follows the content.

Then, unless ``--no-composite``, the result is blended into the original like the other engines do
(``nstray.compose``): each part's ``strength`` and ``preserve_color`` and the plan's
``edges.feather_px`` apply, and unstyled pixels are the original's. ``scale`` does not apply here.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from nstray.cli.common import DEVICE_HELP, check_device, image_output, png_output, read_image, refuse_overwrite


def _layers(text: str) -> dict[str, float]:
    """``"relu1_1,relu2_1:0.5"`` -> ``{"relu1_1": 1.0, "relu2_1": 0.5}``."""
    out: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, weight = item.partition(":")
        try:
            out[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise click.BadParameter(f"{item!r}: write LAYER or LAYER:WEIGHT, e.g. relu2_1:0.5") from None
    if not out:
        raise click.BadParameter("give at least one layer")
    return out


def _steps(text: str) -> int | list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: an integer, or one per level coarse→fine like 200,100") from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter("steps must be positive")
    return values[0] if len(values) == 1 else values


def _auto_levels(height: int, width: int) -> int:
    """One level up to 512 px, one more per doubling above it."""
    side = max(height, width)
    return 1 if side <= 512 else 1 + math.ceil(math.log2(side / 512))


def _deepest(arch: str, layers: list[str]) -> str:
    from nstray.models.vgg import layer_names

    names = layer_names(arch)
    return max(layers, key=names.index)


def _tensor(image):
    import torch

    return torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0).contiguous()


def _part_regions(plan, categories: list[str], key: int, label_map, fallback, variant: int, seed: int,
                  max_pixels: int | None = None):
    """Regions of one image from the plan: (region label map, style per region, per-part info).

    Returns ``regions[H, W]`` (−1 = no style, else region index), the styles per region (blends of
    uint8 images), and for compositing per part label (background = len(parts)) its style name,
    strength and preserve flag.
    """
    import numpy as np

    from nstray.plan import NONE, ArbitrarySpec
    from nstray.assets import AssetError, load_style_image

    background, *parts = plan.resolve(categories, variant, seed, key)
    choices = [*parts, background]  # region label len(categories) = the background
    region_of: dict[str, int] = {}
    styles: list[list[tuple[object, float]]] = []
    unmapped: list[str] = []
    images: dict[str, np.ndarray] = {}

    def image(uri: str) -> np.ndarray:
        if uri not in images:
            try:
                images[uri] = load_style_image(uri, **({"max_pixels": max_pixels} if max_pixels else {}))
            except AssetError as exc:
                raise click.ClickException(str(exc)) from None
        return images[uri]

    for cat, name, _ in choices:
        if name == NONE or name in region_of:
            continue
        spec = plan.styles[name]
        if isinstance(spec, ArbitrarySpec):
            blend = [(image(uri), w) for uri, w in spec.images().items()]
        elif fallback is not None:
            blend = [(fallback, 1.0)]
        else:
            unmapped.append(f"{cat} (style {name!r}, kind {spec.kind})")
            continue
        region_of[name] = len(styles)
        styles.append(blend)
    if unmapped:
        raise click.ClickException(
            "these parts' styles have no style image to optimize toward: " + "; ".join(unmapped)
            + ". Give --style IMAGE for them, or map them to a `kind: arbitrary` style with an image."
        )
    part_region = np.array([region_of.get(c.style, -1) for c in choices], dtype=np.int64)  # last entry: background
    lm = np.where(label_map < 0, len(categories), label_map)
    regions = part_region[lm].astype(np.int32)
    info = []
    for c in choices:
        spec = c.spec if c.styled else None
        info.append((c.style, spec.strength if spec else 0.0, bool(spec.preserve_color) if spec else False))
    return regions, styles, info


@click.command()
@click.argument("content")
@click.option("--style", "style_uri", default=None, help="Style image (path or s3://). With --plan: the style of parts whose plan style has no image.")
@click.option("--coco", "coco_uri", default=None, help="COCO annotations (path or s3://) holding CONTENT's parts.")
@click.option("--image-id", type=int, default=None, help="CONTENT's image id in --coco.")
@click.option("--plan", "plan_uri", default=None, help="Style plan YAML: a style per part (kind: arbitrary styles give the images; others take --style).")
@click.option("--variant", type=int, default=0, show_default=True, help="Variant for plan parts with a list of styles.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for plan sampling and noise init.")
@click.option("--out", required=True, callback=image_output, help="Output image (.png, .jpg, .webp or .tif, encoded as named; path or s3://).")
@click.option("--optimizer", type=click.Choice(["lbfgs", "adam"]), default="lbfgs", show_default=True)
@click.option("--init", type=click.Choice(["content", "style", "noise"]), default=None, help="Start image [default: content; noise with --reconstruct].")
@click.option("--reconstruct", type=click.Choice(["content", "style"]), default=None, help="Rebuild an image from one representation only.")
@click.option("--steps", default="300", show_default=True, help="Iterations (forward+backward passes) per level, or one count per level coarse→fine (200,100).")
@click.option("--max-size", type=click.IntRange(min=1), default=512, show_default=True,
              help="Cap on the long side (pixels) of the result; the short side must stay large enough for the VGG layers (16 px up to relu5_1).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Pixel limit for CONTENT and the style images (width x height), checked before decoding  [default: 50,000,000].")
@click.option("--levels", type=int, default=None, help="Coarse-to-fine levels [default: 1 up to 512 px, +1 per doubling].")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 1.0 L-BFGS, 0.02 Adam].")
@click.option("--content-weight", type=float, default=1.0, show_default=True)
@click.option("--style-weight", type=float, default=1e6, show_default=True)
@click.option("--tv-weight", type=float, default=0.0, show_default=True)
@click.option("--content-layers", default="relu4_2", show_default=True, help="LAYER[:WEIGHT],...")
@click.option("--style-layers", default="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", show_default=True, help="LAYER[:WEIGHT],...")
@click.option("--arch", type=click.Choice(["vgg19", "vgg16"]), default="vgg19", show_default=True)
@click.option("--pool", type=click.Choice(["max", "avg"]), default="max", show_default=True, help="avg: Gatys' smoother pooling.")
@click.option("--weights", "weights_ref", default=None, help="VGG weights: registry name, state-dict file or s3:// URI [default: the arch's torchvision weights]; 'none' = random init (smoke tests only).")
@click.option("--device", default=None, callback=check_device, help=DEVICE_HELP + " [default: cuda if available].")
@click.option("--save-every", type=int, default=None, help="Keep an animation frame every K steps [default: ~30 frames].")
@click.option("--animation", default=None, help="Progress animation (.gif or .mp4).")
@click.option("--fps", type=float, default=10.0, show_default=True)
@click.option("--loss-plot", default=None, callback=png_output, help="Loss curves (.png).")
@click.option("--no-composite", is_flag=True, help="With --plan: keep the raw optimization instead of blending into the original.")
def optimize(
    content: str, style_uri: str | None, coco_uri: str | None, image_id: int | None, plan_uri: str | None,
    variant: int, seed: int, out: str, optimizer: str, init: str | None, reconstruct: str | None, steps: str,
    max_size: int, max_pixels: int | None, levels: int | None, lr: float | None, content_weight: float, style_weight: float,
    tv_weight: float, content_layers: str, style_layers: str, arch: str, pool: str, weights_ref: str | None,
    device: str | None, save_every: int | None, animation: str | None, fps: float, loss_plot: str | None,
    no_composite: bool,
) -> None:
    """Optimize an image toward CONTENT and a style (Gatys et al.), optionally a style per part.

    \b
    nstray optimize car.jpg --style starry.jpg --out car_starry.png
    nstray optimize car.jpg --coco ann.json --image-id 7 --plan plan.yaml --out parts.png --animation run.gif
    nstray optimize car.jpg --reconstruct content --steps 200 --out rec.png --loss-plot loss.png
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from nstray import storage
    from nstray import weights as registry
    from nstray.data.images import encode_as
    from nstray.models.vgg import DEFAULT_WEIGHTS, min_input_side, vgg_encoder
    from nstray.plots import render_loss_plot
    from nstray.stylize.optimize import FrameRecorder, encode_animation, level_sizes
    from nstray.stylize.optimize import optimize as run_optimize
    from nstray.stylize.optimize import to_uint8

    per_part = any(v is not None for v in (coco_uri, image_id, plan_uri))
    if per_part and None in (coco_uri, image_id, plan_uri):
        raise click.UsageError("per-part mode needs all of --coco, --image-id and --plan")
    if reconstruct != "content" and not per_part and style_uri is None:
        raise click.UsageError("give --style STYLE (or --plan for per-part styles, or --reconstruct content)")
    if animation is not None and Path(animation).suffix.lower() not in (".gif", ".mp4"):
        raise click.UsageError("--animation must end in .gif or .mp4")
    if save_every is not None and save_every < 1:
        raise click.UsageError("--save-every must be >= 1")
    step_spec = _steps(steps)
    c_layers, s_layers = _layers(content_layers), _layers(style_layers)
    refuse_overwrite({"--out": out, "--animation": animation, "--loss-plot": loss_plot},
                     {"CONTENT": content, "--style": style_uri, "--coco": coco_uri, "--plan": plan_uri})

    # the encoder first: a bad --weights fails before any image is read
    if weights_ref is not None and weights_ref.lower() == "none":
        click.echo("warning: --weights none: random VGG weights, the result is not a real stylization", err=True)
        weights_arg = None
    else:
        weights_arg = weights_ref or DEFAULT_WEIGHTS
    try:
        encoder = vgg_encoder(arch, [*c_layers, *s_layers], weights_arg, pool=pool)
    except (registry.WeightsNotFound, registry.WeightsChecksumError, ValueError) as exc:  # WeightsLoadError too
        raise click.ClickException(str(exc)) from None

    image = read_image(content, "content image", max_pixels)
    h, w = image.shape[:2]
    style_img = read_image(style_uri, "style image", max_pixels) if style_uri else None

    regions = None
    info = None
    label = None
    if per_part:
        from nstray.data.coco import DatasetError, load_coco
        from nstray.data.masksource import CocoParts, MaskSourceError, coco_record
        from nstray.plan import PlanError, load_plan

        try:
            coco = load_coco(coco_uri)
            categories = [c["name"] for c in coco.get("categories", []) if isinstance(c, dict) and "name" in c]
            plan = load_plan(plan_uri, categories=categories)
        except (DatasetError, PlanError) as exc:
            raise click.ClickException(str(exc)) from None
        try:
            parts = CocoParts(plan.overlaps).labels(coco_record(coco, coco_uri, image_id), image)
        except MaskSourceError as exc:
            raise click.ClickException(str(exc)) from None
        label = parts.label_map
        regions, region_styles, info = _part_regions(plan, parts.categories, image_id, label, style_img, variant, seed,
                                                     max_pixels)
        feather = plan.edges.feather_px
        if not region_styles and reconstruct != "content":
            raise click.ClickException(f"the plan styles no part of image {image_id}: nothing to optimize")

    # processed size: the long side capped at --max-size; images and label maps resized here
    scale = min(1.0, max_size / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    need = min_input_side(arch, [*c_layers, *s_layers])
    if min(size) < need:
        at = f" (at --max-size {max_size})" if size != (h, w) else ""
        raise click.ClickException(
            f"content image {content} is {size[1]}x{size[0]} px{at}; VGG layers up to {_deepest(arch, [*c_layers, *s_layers])} "
            f"need at least {need} px on each side: use a larger image" + (", raise --max-size" if at else "")
            + " or shallower --content-layers/--style-layers")
    content_t = _tensor(image)
    if size != (h, w):
        content_t = F.interpolate(content_t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0, 1)
    n_levels = levels or (len(step_spec) if isinstance(step_spec, list) else _auto_levels(*size))
    sizes = level_sizes(*size, n_levels)
    n_levels = len(sizes)

    kwargs: dict = {}
    if per_part:
        regions_t = torch.from_numpy(regions)[None, None].float()
        if size != (h, w):
            regions_t = F.interpolate(regions_t, size=size, mode="nearest")
        regions_t = regions_t[0, 0].long()
        k = len(region_styles)
        kwargs["masks"] = torch.stack([regions_t == i for i in range(k)]) if k else None
        style_arg = [[(_tensor(img), wt) for img, wt in blend] for blend in region_styles] if k else None
        if not k:  # content reconstruction with nothing styled
            kwargs.pop("masks")
    else:
        style_arg = _tensor(style_img) if style_img is not None else None

    total = step_spec * n_levels if isinstance(step_spec, int) else sum(step_spec)
    recorder = FrameRecorder(save_every or max(1, total // 30), size=size) if animation else None
    bar = tqdm(total=total, desc="optimize", unit="it", file=sys.stderr, dynamic_ncols=True)

    def progress(p) -> None:
        bar.update(p.step - bar.n)
        bar.set_postfix_str(
            f"L{p.level + 1}/{p.levels} {p.size[1]}x{p.size[0]} content={p.losses['content']:.4g} "
            f"style={p.losses['style']:.4g} tv={p.losses['tv']:.3g} total={p.losses['total']:.4g}",
            refresh=False,
        )
        if recorder is not None:
            recorder(p)

    try:
        result = run_optimize(
            content_t, style_arg, encoder=encoder, content_layers=c_layers, style_layers=s_layers,
            content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight, optimizer=optimizer,
            lr=lr, init=init, steps=step_spec, reconstruct=reconstruct, levels=n_levels, seed=seed,
            device=device, callback=progress, **kwargs,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()

    final = result.image
    if recorder is not None:
        recorder.add(final)  # the end state (callbacks show the image each loss was taken at)
    if per_part and not no_composite and reconstruct is None:
        from nstray.compose import composite

        lm = torch.from_numpy(np.where(label < 0, len(info) - 1, label).astype(np.int64))
        if size != (h, w):
            lm = F.interpolate(lm[None, None].float(), size=size, mode="nearest")[0, 0].long()
        final = composite(content_t, final[None], lm, [s for _, s, _ in info], [p for _, _, p in info],
                          layer_of=[0] * len(info), feather_px=feather)

    try:
        storage.write_bytes(out, encode_as(to_uint8(final), out))
        written = [out]
        if animation:
            storage.write_bytes(animation, encode_animation(recorder.frames, Path(animation).suffix, fps=fps))
            written.append(f"{animation} ({len(recorder.frames)} frames)")
        if loss_plot:
            title = f"{optimizer} · " + (f"{reconstruct} reconstruction" if reconstruct else "style transfer")
            storage.write_bytes(loss_plot, render_loss_plot(result.history, title=title))
            written.append(loss_plot)
    except storage.StorageError as exc:
        raise click.ClickException(str(exc)) from None
    last = result.history[-1] if result.history else {}
    click.echo(
        f"{len(result.history)} steps over {n_levels} level(s) {' → '.join(f'{s[1]}x{s[0]}' for s in result.sizes)} "
        f"in {result.seconds:.1f}s; final losses: "
        + ", ".join(f"{k}={last[k]:.4g}" for k in ("content", "style", "tv", "total") if k in last)
    )
    for item in written:
        click.echo(f"wrote {item}")
