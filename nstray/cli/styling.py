"""``nstray stylize`` and ``nstray styles ...``: style one image by parts; browse the style bank.

Part masks for ``nstray stylize`` come from one mask source (:mod:`nstray.data.masksource`):

* ``--coco ANNOTATIONS --image-id ID``: the image's annotations in a COCO JSON (local or
  ``s3://``); overlaps follow the plan's ``overlaps`` rule.
* ``--masks MASKS.png``: a single-channel label image (8- or 16-bit grey, or a palette PNG
  read by index) the size of IMAGE. A pixel value ``v > 0`` is a category id, 0 is background.
  Names for the ids come from ``--coco`` (its ``categories``), else ``--categories a,b,c``
  (``v = 1`` is ``a``), else the plan's ``parts`` in the order listed (``background`` skipped).
  All pixels of one value form one part.
* neither: the whole image is ``background``, styled by the plan's ``background`` entry.
"""

from __future__ import annotations

import click

from nstray.cli.common import DEVICE_HELP, PRECISION_HELP, check_device, image_output, read_image, refuse_overwrite

MIN_SIDE = 8
"""The smallest image side the style networks are run on (their strided layers need at least 5 px)."""

_MAX_PIXELS_HELP = "Pixel limit for IMAGE and the plan's style images (width x height), checked before decoding."


def _read_image(uri: str, what: str, max_pixels: int | None = None):
    """``uint8[H, W, 3]`` of an input image, at least :data:`MIN_SIDE` px on each side; errors name ``what``."""
    return read_image(uri, what, max_pixels, min_side=MIN_SIDE)


def _write_image(uri: str, array) -> None:
    """Write ``array`` encoded as its name's extension says (PNG, JPEG, WebP, TIFF)."""
    from nstray import storage
    from nstray.data.images import encode_as

    try:
        storage.write_bytes(uri, encode_as(array, uri))
    except storage.StorageError as exc:
        raise click.ClickException(str(exc)) from None


def _load_plan(path: str, categories: list[str] | None):
    from nstray.plan import PlanError, load_plan

    try:
        return load_plan(path, categories=categories)
    except PlanError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


def _downscale(image, labels, max_side: int | None):
    """Shrink the image (Lanczos) and its label map (nearest) so the longer side is at most ``max_side``."""
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image, labels
    s = max_side / max(h, w)
    size = (max(MIN_SIDE, round(w * s)), max(MIN_SIDE, round(h * s)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    lab = np.asarray(Image.fromarray(labels.astype(np.int32), mode="I").resize(size, Image.NEAREST)).astype(np.int32)
    return small, lab


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def _preview(original, labels, categories, styles, result, plan):
    """original | part overlay with a legend | result, side by side (uint8 [H', 3W', 3])."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from nstray import compose

    names = sorted(set(categories))
    cat_index = np.array([names.index(c) for c in categories] + [0], dtype=np.int64)
    per_cat = np.where(labels >= 0, cat_index[labels], -1)
    t = torch.tensor(original).permute(2, 0, 1).float() / 255
    over = compose.to_uint8(compose.overlay(t, torch.from_numpy(per_cat))).numpy()
    h, w = original.shape[:2]
    gap = 6
    font_px = max(11, min(22, w // 40))
    line = font_px + 6
    legend_rows = -(-len(names) // 3) + 1 if names else 1
    canvas = Image.new("RGB", (3 * w + 2 * gap, h + legend_rows * line + 8), "white")
    for i, arr in enumerate((original, over, result)):
        canvas.paste(Image.fromarray(arr), (i * (w + gap), 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_px)
    y = h + 4
    draw.text((4, y), "original", fill="black", font=font)
    draw.text((w + gap + 4, y), "parts", fill="black", font=font)
    draw.text((2 * (w + gap) + 4, y), "result", fill="black", font=font)
    col_w = (3 * w + 2 * gap) // 3
    for n, name in enumerate(names):
        r, c = divmod(n, 3)
        x0, y0 = c * col_w + 4, h + 4 + (r + 1) * line
        color = compose.PALETTE[n % len(compose.PALETTE)]
        draw.rectangle([x0, y0 + 2, x0 + font_px, y0 + font_px + 2], fill=color, outline="black")
        style = styles.get(name, "none")
        spec = plan.styles.get(style)
        detail = ""
        if spec is not None and spec.kind == "multistyle":
            detail = f" (multistyle {spec.index})" if spec.index is not None else " (multistyle blend)"
        elif spec is not None:
            detail = f" ({spec.kind})"
        draw.text((x0 + font_px + 6, y0), f"{name}: {style}{detail}", fill="black", font=font)
    bg = styles.get("background")
    if bg and bg != "none":
        draw.text((col_w + 4, y), f"   background: {bg}", fill="black", font=font)
    return np.asarray(canvas)


@click.command()
@click.argument("image")
@click.option("--out", "out", required=True, callback=image_output,
              help="Where to write the styled image (local path or s3:// URI); .png, .jpg, .webp or .tif: encoded as named.")
@click.option("--plan", "plan_path", required=True, help="The style plan YAML (see nstray.plan).")
@click.option("--coco", "coco_uri", default=None, help="COCO annotations JSON holding the image's parts.")
@click.option("--image-id", type=int, default=None, help="The image's id in --coco.")
@click.option("--masks", "masks_uri", default=None, help="A label PNG: pixel value = category id, 0 = background.")
@click.option("--categories", default=None,
              help="For --masks without --coco: comma-separated names, value 1 = the first (default: the plan's parts).")
@click.option("--preview", "preview_uri", default=None, callback=image_output,
              help="Also write original | parts | result side by side (encoded as its extension says).")
@click.option("--variant", type=int, default=0, show_default=True, help="Which variant (style lists are sampled per variant).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the style sampling.")
@click.option("--device", default="cpu", show_default=True, callback=check_device,
              help=f"{DEVICE_HELP} (cuda falls back to cpu with a warning).")
@click.option("--max-side", type=click.IntRange(min=MIN_SIDE), default=None,
              help=f"Shrink the image so its longer side is at most this (faster; at least {MIN_SIDE}) [default: full size].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help=_MAX_PIXELS_HELP + "  [default: 50,000,000]")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help=PRECISION_HELP)
def stylize(image: str, out: str, plan_path: str, coco_uri: str | None, image_id: int | None, masks_uri: str | None,
            categories: str | None, preview_uri: str | None, variant: int, seed: int, device: str,
            max_side: int | None, max_pixels: int | None, precision: str) -> None:
    """Style one IMAGE, each annotated part with its own style (see the style plan).

    Parts come from --coco with --image-id, or from a --masks label PNG; with neither, the whole
    image is styled by the plan's background entry.
    """
    if masks_uri is None and coco_uri is not None and image_id is None:
        raise click.UsageError("--coco needs --image-id (which image of the annotations IMAGE is)")
    if image_id is not None and coco_uri is None:
        raise click.UsageError("--image-id goes with --coco (the annotations that hold IMAGE)")
    if masks_uri is not None and image_id is not None:
        raise click.UsageError("--image-id goes with --coco alone; with --masks the parts come from the PNG")

    from rich.console import Console

    from nstray.data.masksource import CocoParts, LabelImage, MaskSourceError, WholeFrame, coco_record
    from nstray.plan import BACKGROUND

    refuse_overwrite({"--out": out, "--preview": preview_uri},
                     {"IMAGE": image, "--plan": plan_path, "--coco": coco_uri, "--masks": masks_uri})
    console = Console(stderr=True)
    original = _read_image(image, "IMAGE", max_pixels)
    coco = None
    if coco_uri is not None:
        from nstray.data.coco import DatasetError, load_coco

        try:
            coco = load_coco(coco_uri)
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None
    listed = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    if coco is not None:
        plan = _load_plan(plan_path, sorted({str(c["name"]) for c in coco.get("categories", [])}))
    else:
        plan = _load_plan(plan_path, listed)
    try:
        if masks_uri is not None:
            source = (LabelImage.from_coco(coco) if coco is not None
                      else LabelImage.from_list(listed) if listed else LabelImage.from_plan(plan))
            parts = source.labels(masks_uri, original)
        elif coco is not None:
            assert coco_uri is not None and image_id is not None
            parts = CocoParts(plan.overlaps).labels(coco_record(coco, coco_uri, image_id), original)
        else:
            if not plan.may_style(BACKGROUND):
                raise click.ClickException(
                    f"{plan_path}: without --coco or --masks the whole image is background, but the plan does not "
                    f"style 'background'; add e.g. 'background: {{style: NAME}}' under parts, or give the parts "
                    f"(--coco ANNOTATIONS --image-id ID, or --masks MASKS.png)")
            parts = WholeFrame().labels(None, original)
    except MaskSourceError as exc:
        raise click.ClickException(f"--masks {exc}" if masks_uri is not None else str(exc)) from None
    labels, part_categories = parts.label_map, parts.categories
    original, labels = _downscale(original, labels, max_side)

    from nstray.assets import AssetError, load_plan_assets
    from nstray.data.images import DEFAULT_MAX_PIXELS
    from nstray.preflight import check_plan_assets
    from nstray.stylize.parts import PartStylizer, StylizeError

    check_plan_assets(plan, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, limit_hint="--max-pixels")
    try:
        stylizer = PartStylizer(plan, device=device, precision=precision,
                                assets=load_plan_assets(plan, max_pixels=max_pixels or DEFAULT_MAX_PIXELS))
        result = stylizer(original, labels, part_categories, variant=variant, seed=seed,
                          key=image_id if image_id is not None else "")
    except (StylizeError, AssetError) as exc:
        raise click.ClickException(str(exc)) from None
    _write_image(out, result.image)
    if preview_uri:
        _write_image(preview_uri, _preview(original, labels, part_categories, result.styles, result.image, plan))
    from rich.table import Table

    table = Table("category", "style", title=f"{len(part_categories)} parts")
    for cat, style in sorted(result.styles.items()):
        table.add_row(cat, style)
    console.print(table)
    console.print(f"wrote {out}" + (f" and {preview_uri}" if preview_uri else ""))


@click.group()
def styles() -> None:
    """Browse the builtin style bank."""


@styles.command("list")
def list_styles() -> None:
    """The builtin multi-style network's styles (index and name) and the registered weights."""
    from rich.console import Console
    from rich.table import Table

    from nstray.models.multistyle import STYLE_NAMES
    from nstray.weights import REGISTRY

    console = Console()
    table = Table("index", "name", title="builtin styles (kind: multistyle; use index or name in a plan)")
    for i, name in enumerate(STYLE_NAMES):
        table.add_row(str(i), name)
    console.print(table)
    reg = Table("name", "uri", "description", title="weights registry")
    for entry in REGISTRY.values():
        reg.add_row(entry.name, entry.uri, entry.description)
    console.print(reg)
    console.print("see all styles on your own picture: nstray styles sheet IMAGE --out SHEET.png")


def contact_sheet(image, size: int = 256, columns: int = 7, device: str = "cpu", batch: int = 6):
    """All builtin styles on one image: ``uint8`` tiles (original first) labelled ``index name``."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from nstray.models.multistyle import STYLE_NAMES, multistyle26
    from nstray.stylize.parts import resolve_device

    dev = resolve_device(device)
    im = Image.fromarray(image)
    im.thumbnail((size, size), Image.LANCZOS)
    small = np.asarray(im)
    th, tw = small.shape[:2]
    net = multistyle26().to(dev)
    x = torch.from_numpy(np.array(small)).to(dev).permute(2, 0, 1)[None].float() / 255
    eye = torch.eye(len(STYLE_NAMES), device=dev)
    tiles = [("original", small)]
    with torch.inference_mode():
        for start in range(0, len(STYLE_NAMES), batch):
            w = eye[start : start + batch]
            out = net(x.expand(w.shape[0], -1, -1, -1), w)
            for j, o in enumerate(out):
                i = start + j
                tiles.append((f"{i} {STYLE_NAMES[i]}", (o.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()))
    pad, label = 6, max(14, th // 12)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (tw + pad) + pad, rows * (th + label + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(label - 3)
    for n, (name, arr) in enumerate(tiles):
        r, c = divmod(n, columns)
        x0, y0 = pad + c * (tw + pad), pad + r * (th + label + pad)
        sheet.paste(Image.fromarray(arr), (x0, y0 + label))
        draw.text((x0 + 2, y0 + 1), name, fill="black", font=font)
    return np.asarray(sheet)


@styles.command("sheet")
@click.argument("image")
@click.option("--out", "out", required=True, callback=image_output,
              help="Where to write the contact sheet (.png, .jpg, .webp or .tif: encoded as named).")
@click.option("--size", type=click.IntRange(32, 2048), default=256, show_default=True, help="Tile size (longer side, px).")
@click.option("--columns", type=click.IntRange(1, 27), default=7, show_default=True, help="Tiles per row.")
@click.option("--device", default="cpu", show_default=True, callback=check_device, help=DEVICE_HELP + ".")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Pixel limit for IMAGE (width x height), checked before decoding  [default: 50,000,000].")
def sheet(image: str, out: str, size: int, columns: int, device: str, max_pixels: int | None) -> None:
    """A contact sheet: IMAGE in all builtin styles, each tile labelled with its index and name."""
    refuse_overwrite({"--out": out}, {"IMAGE": image})
    arr = _read_image(image, "IMAGE", max_pixels)
    h, w = arr.shape[:2]
    if min(h, w) * size < MIN_SIDE * max(h, w):
        raise click.ClickException(f"IMAGE {image} is {w}x{h}: its tiles ({size} px on the longer side, --size) would be "
                                   f"under {MIN_SIDE} px on the shorter side; crop it or raise --size")
    _write_image(out, contact_sheet(arr, size=size, columns=columns, device=device))
    click.echo(f"wrote {out}")


__all__ = ["stylize", "styles", "contact_sheet"]
