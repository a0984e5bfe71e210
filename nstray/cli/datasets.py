"""``nstray datasets ...``: make, validate and inspect COCO vehicle-part datasets."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from nstray.data.coco import ImageRecord, ValidationReport

_MAX_PIXELS_HELP = "Pixel limit per image (width x height); larger images are rejected from their header, undecoded."


def _default_max_pixels() -> int:
    from nstray.data.images import DEFAULT_MAX_PIXELS

    return DEFAULT_MAX_PIXELS


@click.group()
def datasets() -> None:
    """Make, validate and inspect COCO vehicle-part datasets."""


@datasets.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--images", "n_images", type=click.IntRange(min=1), default=20, show_default=True, help="How many images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same dataset).")
@click.option("--width", type=click.IntRange(min=16), default=None, help="Image width in pixels (generator default if unset).")
@click.option("--height", type=click.IntRange(min=16), default=None, help="Image height in pixels (generator default if unset).")
@click.option("--video", "as_video", is_flag=True,
              help="Make a labeled video instead: OUT_DIR/video.mp4 + YouTube-VIS annotations.json.")
@click.option("--frames", type=click.IntRange(min=1), default=30, show_default=True, help="Frames of the --video.")
@click.option("--domain", type=click.Choice(["a", "b"]), default=None,
              help="One family of backgrounds and camera looks (a: street/city; b: nature/studio/abstract under a "
                   "colour cast, lower contrast, more grain): train on one, test on the other.")
def synth(out_dir: str, n_images: int, seed: int, width: int | None, height: int | None, as_video: bool,
          frames: int, domain: str | None) -> None:
    """Generate a synthetic labeled-vehicle COCO dataset in OUT_DIR (deterministic for a seed).

    With --video: a synthetic driving video (cars moving, the camera panning, occlusions) with exact
    per-frame part masks in YouTube-VIS style JSON.
    """
    if as_video:
        from nstray.data.synth_video import generate_video

        try:
            v = generate_video(out_dir, frames, seed=seed, width=width or 320, height=height or 192)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {frames} frames to {v.video}")
        click.echo(f"annotations (YouTube-VIS style): {v.annotations}")
        click.echo(f"next: nstray video {v.video} --annotations {v.annotations} --plan PLAN.yaml --out styled.mp4")
        return
    from nstray.data.synth import generate

    size = {k: v for k, v in (("width", width), ("height", height)) if v is not None}
    result = generate(out_dir, n_images=n_images, seed=seed, domain=domain, **size)
    click.echo(f"wrote {n_images} images to {result.images_dir}")
    click.echo(f"annotations (polygons + RLE): {result.annotations}")
    click.echo(f"annotations (boxes only):     {result.annotations_boxes}")
    click.echo(f"next: nstray datasets validate {result.annotations} --images {result.images_dir}")


def _problems_line(entry: dict) -> str:
    """One line for one bad record: id, file, every problem with its fix."""
    what = "; ".join(f"{p['problem']} (fix: {p['fix']})" for p in entry["problems"])
    name = entry["file_name"] or "-"
    return f"BAD image {entry['image_id']} [{name}]: {what}"


def _summary_line(report: ValidationReport) -> str:
    c = report.counts
    parts = f"{c['parts']} parts ({c['box_only_parts']} box-only) in {c['categories']} categories"
    if report.ok:
        return f"OK: all {c['images']} images usable; {parts}"
    return (f"{c['bad_records']} bad records ({c['problems']} problems); "
            f"{c['usable_images']} of {c['images']} images usable; {parts}")


def _run_validate(annotations: str, images: str, max_pixels: int, check_files: bool, as_json: bool) -> ValidationReport:
    """Validate, or print the whole-file error (text or JSON) and exit 1."""
    from nstray.data.coco import DatasetError, validate

    try:
        return validate(annotations, images, max_pixels=max_pixels, check_files=check_files)
    except DatasetError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc)}, indent=2))
            sys.exit(1)
        raise click.ClickException(str(exc)) from None


@datasets.command(name="validate")
@click.argument("annotations")
@click.option("--images", required=True, help="Folder or s3:// prefix that the images' file_name values are relative to.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help=_MAX_PIXELS_HELP)
@click.option("--no-check-files", is_flag=True, help="Check the annotations only; do not read the images.")
def validate_cmd(annotations: str, images: str, as_json: bool, max_pixels: int | None, no_check_files: bool) -> None:
    """Check a COCO dataset (ANNOTATIONS: path or s3:// URI); exit 0 when every record is usable, else 1.

    Prints one line per bad record (image id, file, what is wrong, how to fix) and a summary.
    """
    report = _run_validate(annotations, images, max_pixels or _default_max_pixels(), not no_check_files, as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for entry in report.bad_records():
            click.echo(_problems_line(entry))
        click.echo(_summary_line(report))
    sys.exit(0 if report.ok else 1)


def dataset_stats(records: Sequence[ImageRecord], order: str | Sequence[str] = "smaller-on-top") -> dict:
    """Counts and mask coverage of good records.

    Coverage is measured on the label map (overlaps resolved by ``order``, so nothing
    is counted twice): ``mean_coverage`` is the mean over images of the fraction of pixels
    in any part; ``coverage`` per category is the mean over *all* images of the fraction
    of pixels that category holds (these add up to ``mean_coverage``).
    """
    import numpy as np

    from nstray.data.masksource import CocoParts

    parts: dict[str, int] = {}
    box_only: dict[str, int] = {}
    cover_sum: dict[str, float] = {}
    total_cover = 0.0
    source = CocoParts(order)
    for rec in records:
        labels = source.labels_at(rec, rec.height, rec.width).label_map
        npix = float(rec.width * rec.height)
        total_cover += float((labels >= 0).sum()) / npix
        counts = np.bincount(labels.ravel() + 1, minlength=len(rec.parts) + 1)[1:]
        for k, part in enumerate(rec.parts):
            parts[part.category] = parts.get(part.category, 0) + 1
            box_only[part.category] = box_only.get(part.category, 0) + int(part.box_only)
            cover_sum[part.category] = cover_sum.get(part.category, 0.0) + float(counts[k]) / npix
    n = max(len(records), 1)
    return {
        "images": len(records),
        "parts": sum(parts.values()),
        "box_only_parts": sum(box_only.values()),
        "mean_coverage": total_cover / n,
        "categories": {
            cat: {"parts": parts[cat], "box_only": box_only[cat], "coverage": cover_sum[cat] / n}
            for cat in sorted(parts, key=lambda c: (-parts[c], c))
        },
    }


@datasets.command()
@click.argument("annotations")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(annotations: str, as_json: bool) -> None:
    """Images, parts per category, mask coverage and box-only parts of a COCO dataset (images are not read)."""
    from nstray.data.coco import load_coco, read_records

    coco = load_coco(annotations)  # a DatasetError is one `Error:` line (nstray.cli's handler)
    records, errors = read_records(coco, "", check_files=False, source=annotations)
    result = dataset_stats(records)
    result["images_in_file"] = len(coco["images"])
    result["bad_records"] = len({(e.image_id, e.file_name) for e in errors})
    result["categories_defined"] = len(coco["categories"])
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    click.echo(f"images: {result['images_in_file']} ({result['images']} usable, {result['bad_records']} bad records skipped"
               f"{': run nstray datasets validate' if result['bad_records'] else ''})")
    click.echo(f"parts: {result['parts']} ({result['box_only_parts']} box-only) in "
               f"{len(result['categories'])} of {result['categories_defined']} categories")
    click.echo(f"mask coverage: {result['mean_coverage']:.1%} of pixels per image on average")
    width = max([len(c) for c in result["categories"]] + [8])
    click.echo(f"{'category':<{width}}  {'parts':>6}  {'box-only':>8}  {'coverage':>8}")
    for cat, row in result["categories"].items():
        click.echo(f"{cat:<{width}}  {row['parts']:>6}  {row['box_only']:>8}  {row['coverage']:>8.2%}")


@datasets.command()
@click.argument("annotations")
@click.option("--images", required=True, help="Folder or s3:// prefix that the images' file_name values are relative to.")
@click.option("--out", "out", required=True, help="Folder or s3:// prefix for the Parquet shards.")
@click.option("--rows-per-shard", type=click.IntRange(min=1), default=1000, show_default=True, help="Images per shard.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help=_MAX_PIXELS_HELP)
@click.option("--no-check-files", is_flag=True, help="Do not read the images while validating.")
def index(annotations: str, images: str, out: str, rows_per_shard: int, max_pixels: int | None, no_check_files: bool) -> None:
    """Validate a COCO dataset and write its good records as a Parquet shard index (one row per image).

    Bad records are listed on stderr and left out; the index holds every usable image.
    """
    from nstray import storage
    from nstray.data.shards import write_index

    if not storage.is_s3(out) and Path(storage.parse(out).path).is_file():
        raise click.BadParameter(f"{out} is a file; the index is a folder of Parquet shards: give a folder or s3:// prefix",
                                 param_hint="--out")
    report = _run_validate(annotations, images, max_pixels or _default_max_pixels(), not no_check_files, False)
    for entry in report.bad_records():
        click.echo(_problems_line(entry), err=True)
    if not report.records:
        raise click.ClickException(f"no usable images in {annotations}; nothing indexed (fix the records listed above)")
    try:
        shards = write_index(report.records, out, rows_per_shard=rows_per_shard)
    except storage.StorageError as exc:
        raise click.ClickException(f"cannot write the index to --out {out}: {exc}") from None
    c = report.counts
    click.echo(f"indexed {c['usable_images']} images ({c['parts']} parts, {c['box_only_parts']} box-only) "
               f"into {len(shards)} shards under {out}; {c['bad_records']} bad records left out")
