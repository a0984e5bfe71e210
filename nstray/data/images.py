"""Image bytes → ``uint8[H, W, 3]`` RGB arrays, for every pixel mode a dataset may hold.

Choices (and why):

* **No EXIF transpose.** COCO annotations are drawn in the stored pixel order: the
  COCO tools (pycocotools), torchvision's ``CocoDetection`` and the declared
  ``width``/``height`` of COCO images all use the raw pixels. Rotating by the EXIF
  orientation would misalign every mask, so the orientation tag is ignored (and
  reported by :func:`probe_image`, so validation can explain a swapped width/height).
* **Alpha is dropped, not composited.** ``RGBA``/``LA``/``PA`` keep their stored colour
  channels (as ``PIL.Image.convert("RGB")`` and ``cv2.imread`` do): the annotations
  were made on those pixels, and compositing on black would change the dataset.
* **16-bit** (``I;16*`` and ``I``) is scaled linearly from 0..65535 to 0..255 (rounded);
  ``I`` values outside that range are clipped. ``F`` is taken as 0..1 when every value
  lies in that range, else as 0..255 (clipped).
* **Multi-frame files** (GIF, TIFF) give their first frame.
* The pixel limit is checked on the header size **before** any pixel is decoded
  (``Image.open`` is lazy), so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageDecodeError",
    "ImageInfo",
    "probe_image",
    "image_size",
    "decode_image",
    "IMAGE_FORMATS",
    "output_format",
    "encode_as",
]

DEFAULT_MAX_PIXELS = 50_000_000
"""Default pixel limit (50 MP: above any camera photo in a car-parts dataset, far below a bomb)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
"""File name endings that count as images when a folder or prefix is listed."""

_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90°/270° (width and height swap)


class ImageDecodeError(ValueError):
    """An image could not be read; ``reason`` says what is wrong and ``fix`` how to repair it."""

    def __init__(self, name: str, reason: str, fix: str) -> None:
        super().__init__(f"{name}: {reason}; fix: {fix}")
        self.name = name
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: stored size (raw pixel order), mode, format and EXIF orientation (1 = none)."""

    width: int
    height: int
    mode: str
    format: str
    orientation: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def orientation_swaps_axes(self) -> bool:
        """True when a viewer honouring EXIF would show this image rotated by 90° (width/height swapped)."""
        return self.orientation in _SWAPPING_ORIENTATIONS


def _open(data: bytes, name: str):
    """Open lazily (header only), turning every PIL failure into an :class:`ImageDecodeError`."""
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ImageDecodeError(name, "the file is empty (0 bytes)", "re-copy or re-export the image; the upload or download failed")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            name,
            f"the header declares an image too large to decode safely ({exc})",
            "this looks like a decompression bomb; remove the file or downscale it",
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            name,
            f"not an image file Pillow can read ({_describe_head(data)}, {len(data)} bytes)",
            "replace it with a real PNG/JPEG/TIFF image, or drop the record",
        ) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on corrupt headers
        raise ImageDecodeError(
            name,
            f"the image header is corrupt ({type(exc).__name__}: {exc})",
            "re-export or re-download the image",
        ) from None


def probe_image(data: bytes, name: str) -> ImageInfo:
    """Read only the header: stored size, mode, format and EXIF orientation. No pixel is decoded."""
    with _open(data, name) as im:
        orientation = 1
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
            orientation = 1
        return ImageInfo(width=im.width, height=im.height, mode=im.mode, format=im.format or "?", orientation=orientation)


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """``(width, height)`` of the stored pixels, from the header only."""
    info = probe_image(data, name)
    return info.width, info.height


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"the image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}",
            "downscale the image, or raise the pixel limit if it is genuine (--max-pixels; limits.max_pixels in a job config)",
        )


def _to_rgb(im, name: str) -> np.ndarray:
    """Convert a loaded PIL image of any mode to ``uint8[H, W, 3]`` (see the module notes)."""
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode.startswith("I;16") or mode == "I":
        raw = np.asarray(im).astype(np.int64)
        raw = np.clip(raw, 0, 65535)
        gray = ((raw * 255 + 32767) // 65535).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "F":
        raw = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if raw.size and raw.min() >= 0.0 and raw.max() <= 1.0:
            raw = raw * 255.0
        gray = np.clip(np.rint(raw), 0, 255).astype(np.uint8)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        # L, LA, La, 1, P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, HSV ... : PIL knows the conversion.
        # (P/PA with a transparency key: the colours are kept, transparency dropped, as for RGBA.)
        try:
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
            arr = np.asarray(im.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise ImageDecodeError(
                name,
                f"pixel mode {mode!r} cannot be converted to RGB ({exc})",
                "re-save the image as 8-bit RGB or grayscale PNG/JPEG",
            ) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:  # pragma: no cover - defensive
        raise ImageDecodeError(name, f"decoding gave an unexpected array {arr.dtype}{arr.shape}", "re-save the image as RGB PNG")
    return np.ascontiguousarray(arr)


def _describe_head(data: bytes) -> str:
    """What a non-image file starts with, without echoing its content (it may be anything: a key, a password
    file): a kind, or the hex of a 4-byte magic number for binary data."""
    if not data:
        return "an empty file"
    head = data[:64]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it starts with text"
    return f"it starts with bytes {head[:4].hex()}"


def decode_image(data: bytes, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to ``uint8[H, W, 3]`` RGB in stored pixel order (no EXIF transpose).

    Raises :class:`ImageDecodeError` (naming ``name``) for empty, truncated, non-image
    or over-limit files; the size limit is checked from the header before decoding.
    """
    with _open(data, name) as im:
        _check_pixels(name, im.width, im.height, max_pixels)
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001 - truncated/corrupt data raise OSError, SyntaxError, zlib.error ...
            raise ImageDecodeError(
                name,
                f"the pixel data is truncated or corrupt ({type(exc).__name__}: {exc})",
                "re-export or re-download the image (the file is incomplete)",
            ) from None
        return _to_rgb(im, name)


IMAGE_FORMATS: dict[str, str] = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
}
"""File extension → the format written under it (an output's bytes always match its name)."""


def output_format(name: str) -> str:
    """The Pillow format an output named ``name`` is written in, from its extension.

    Raises ``ValueError`` naming the file and the valid extensions when the extension is unknown
    (never writes PNG bytes under a ``.jpg`` or ``.xyz`` name).
    """
    dot = name.rsplit("/", 1)[-1].rfind(".")
    ext = name.rsplit("/", 1)[-1][dot:].lower() if dot > 0 else ""
    fmt = IMAGE_FORMATS.get(ext)
    if fmt is None:
        valid = ", ".join(IMAGE_FORMATS)
        got = f"extension {ext!r}" if ext else "no extension"
        raise ValueError(f"{name}: {got}; an image output must end in one of {valid} (it is encoded by its extension)")
    return fmt


def encode_as(image: np.ndarray, name: str, quality: int = 95) -> bytes:
    """``uint8[H, W, 3]`` → the bytes of the format ``name``'s extension says (see :func:`output_format`)."""
    from PIL import Image

    fmt = output_format(name)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format=fmt, **({"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()
