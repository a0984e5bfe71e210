"""images: every pixel mode decodes to uint8[H, W, 3]; header-only size; clear errors for broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cocofixtures import forged_png, image_bytes
from nstray.data.images import ImageDecodeError, decode_image, image_size, probe_image


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode, fmt", [
    ("RGB", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"),
    ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("I;16", "PNG"), ("I;16", "TIFF"), ("RGB", "JPEG"), ("L", "GIF"),
    ("YCbCr", "JPEG"), ("F", "TIFF"), ("I", "TIFF"),
])
def test_every_mode_decodes_to_rgb_uint8(mode, fmt):
    data = image_bytes(mode, (13, 7), fmt=fmt)
    arr = decode_image(data, name=f"x.{fmt.lower()}")
    assert arr.shape == (7, 13, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert image_size(data, "x") == (13, 7)


def test_exact_values_for_gray_rgba_palette():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    arr = decode_image(encode(Image.fromarray(gray)), name="g.png")
    assert (arr == gray[:, :, None]).all()

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    arr = decode_image(encode(Image.fromarray(rgba)), name="a.png")
    assert arr[0, 0].tolist() == [200, 100, 50]  # alpha dropped, colour kept (documented)

    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    pal.info["transparency"] = 0
    arr = decode_image(encode(pal), name="p.png")
    assert arr[0].tolist() == [[0, 0, 0], [255, 0, 0], [0, 0, 255]]


def test_16bit_scaled_to_8bit():
    raw = np.array([[0, 257, 32896, 65535, 128]], dtype=np.uint16)
    for fmt in ("PNG", "TIFF"):
        arr = decode_image(encode(Image.fromarray(raw), fmt), name=f"d.{fmt}")
        assert arr[0, :, 0].tolist() == [0, 1, 128, 255, 0]
        assert (arr[..., 0] == arr[..., 2]).all()


def test_cmyk_converted():
    data = encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "TIFF")  # no cyan/black, full magenta+yellow = red
    assert decode_image(data, name="c.tif")[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_not_applied():
    im = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(im, "JPEG", exif=exif.tobytes())
    info = probe_image(data, "r.jpg")
    assert (info.width, info.height, info.orientation, info.orientation_swaps_axes) == (30, 10, 6, True)
    assert decode_image(data, name="r.jpg").shape == (10, 30, 3)  # stored pixel order, as COCO tools use


def test_header_only_size_of_a_bomb():
    bomb = forged_png(60_000, 50_000)  # 3 gigapixels claimed in 100 bytes
    with pytest.raises(ImageDecodeError, match="too large"):
        image_size(bomb, "bomb.png")  # Pillow's own guard, from the header
    big = forged_png(4000, 3000)
    assert image_size(big, "big.png") == (4000, 3000)
    with pytest.raises(ImageDecodeError, match=r"4000x3000 = 12,000,000 pixels, above the limit of 1,000,000") as err:
        decode_image(big, name="big.png", max_pixels=1_000_000)
    assert "--max-pixels" in err.value.fix


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"GIF89a not really", "not an image|corrupt"),
    (b"plain text, no image\n", "not an image"),
])
def test_broken_bytes_give_reason_and_fix(data, reason):
    with pytest.raises(ImageDecodeError, match=reason) as err:
        decode_image(data, name="bad/file.png")
    assert str(err.value).startswith("bad/file.png: ")
    assert err.value.fix


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    data = image_bytes("RGB", (64, 64), fmt=fmt)
    cut = data[: len(data) // 2]
    assert image_size(cut, "t") == (64, 64)  # the header is intact ...
    with pytest.raises(ImageDecodeError, match="truncated"):  # ... the pixels are not
        decode_image(cut, name="t")
