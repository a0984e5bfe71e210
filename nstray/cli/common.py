"""Shared by the commands: which exceptions are user errors (one `Error:` line, no traceback), and option
checks (devices, image outputs named by their format, outputs that would overwrite an input, input images).
Torch-free: they run before any model loads, each failing with the option's or file's name."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import click

__all__ = ["USER_ERRORS", "is_user_error", "DEVICE_HELP", "PRECISION_HELP", "check_device", "short_warnings",
           "image_output", "png_output", "refuse_overwrite", "read_image"]

USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("nstray.config", "ConfigError"),
    ("nstray.plan", "PlanError"),
    ("nstray.data.coco", "DatasetError"),
    ("nstray.data.images", "ImageDecodeError"),
    ("nstray.storage", "StorageError"),
    ("nstray.masks", "MaskError"),
    ("nstray.data.masksource", "MaskSourceError"),
    ("nstray.weights", "WeightsNotFound"),
    ("nstray.weights", "WeightsChecksumError"),
    ("nstray.weights", "WeightsLoadError"),
    ("nstray.stylize.parts", "StylizeError"),
    ("nstray.stylize.feedforward", "FeedforwardError"),
    ("nstray.assets", "AssetError"),
    ("nstray.train.ray_run", "TrainConfigError"),
    ("nstray.train.ray_run", "TrainingError"),
    ("nstray.train.data", "TrainDataError"),
    ("nstray.train.seg_data", "SegDataError"),
    ("nstray.models.segmentation", "SegmentationError"),
)
"""``(module, class)`` of the exceptions that mean "the input is wrong", each raised with a message naming
the file or field and the fix. Named, not imported: a class whose module was never imported cannot have
been raised, so the check costs no import (``nstray --help`` stays free of torch)."""


def is_user_error(exc: BaseException) -> bool:
    """True when ``exc`` is one of :data:`USER_ERRORS` (a bad input, not a bug)."""
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
DEVICE_HELP = "cpu, cuda or cuda:N"


PRECISION_HELP = ("The multi-style network's arithmetic: fp32, or fp16/bf16 (faster; PSNR >= 40 dB against fp32 over "
                  "the styled pixels): either on a GPU, bf16 on a CPU with native bf16 (AVX512-BF16, AMX); "
                  "elsewhere fp32, with a warning.")


def short_warnings() -> None:
    """Show nstray's own warnings (a fallback to the CPU or to fp32) as one ``Warning: ...`` line on stderr,
    not Python's ``file:line: RuntimeWarning`` form with a source line; other libraries' warnings keep theirs."""
    import warnings

    if getattr(warnings.showwarning, "nstray_short", False):  # once per process (the CLI may run again in it)
        return
    root = Path(__file__).resolve().parents[1]
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (warnings' signature)
        if Path(filename).resolve().is_relative_to(root):
            click.echo(f"Warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    show.nstray_short = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``cpu``, ``cuda`` or ``cuda:N`` (None passes: the command's default applies)."""
    if value is not None and not _DEVICE.match(value.strip()):
        raise click.BadParameter(f"{value!r} is not a device; valid: {DEVICE_HELP}")
    return value.strip() if value is not None else None


def image_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: an image output whose extension names a format nstray writes (.png, .jpg, .webp ...)."""
    if value is not None:
        from nstray.data.images import output_format

        try:
            output_format(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def png_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: an output that is always a PNG (plots) must be named ``.png``."""
    if value is not None and Path(value).suffix.lower() != ".png":
        raise click.BadParameter(f"{value}: this output is a PNG image; name it ….png")
    return value


def _same(a: str, b: str) -> bool:
    """True when two URIs name one file: local paths after resolving symlinks, S3 URIs as written."""
    from nstray import storage

    if storage.is_s3(a) or storage.is_s3(b):
        return storage.is_s3(a) and storage.is_s3(b) and storage.parse(a) == storage.parse(b)
    pa, pb = Path(storage.parse(a).path).expanduser(), Path(storage.parse(b).path).expanduser()
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def read_image(uri: str, what: str, max_pixels: int | None = None, min_side: int = 1):
    """``uint8[H, W, 3]`` of an input image (path or ``s3://``), within ``max_pixels`` (default: 50 MP) and at
    least ``min_side`` px on each side; every failure is one CLI error naming ``what`` and the file."""
    from nstray import storage
    from nstray.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

    try:
        image = decode_image(storage.read_bytes(uri), name=uri, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    except (storage.StorageError, ImageDecodeError) as exc:
        raise click.ClickException(f"{what}: {exc}") from None
    h, w = image.shape[:2]
    if min(h, w) < min_side:
        raise click.ClickException(f"{what} {uri} is {w}x{h}; it needs at least {min_side} px on each side: "
                                   "use a larger image")
    return image


def refuse_overwrite(outputs: Mapping[str, str | None], inputs: Mapping[str, str | None]) -> None:
    """Refuse (a usage error naming both options) an output that is one of the inputs, or two outputs on one file."""
    outs = [(k, v) for k, v in outputs.items() if v]
    for name, out in outs:
        for in_name, uri in inputs.items():
            if uri and _same(out, uri):
                raise click.UsageError(f"{name} {out} is the input {in_name} {uri}: nstray never overwrites its "
                                       f"inputs; write the result elsewhere")
    for i, (name, out) in enumerate(outs):
        for other, uri in outs[i + 1:]:
            if _same(out, uri):
                raise click.UsageError(f"{name} and {other} are the same file ({out}); give each its own name")
