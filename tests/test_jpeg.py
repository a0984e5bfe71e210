"""The device JPEG codec (torchvision: nvjpeg on CUDA, libjpeg-turbo here) and the job stages that use it
(``resources.jpeg_codec: device``): the stylizer decodes JPEGs it received compressed, encodes its JPEG
outputs, and a corrupt JPEG fails only its own record with the CPU decoder's clear reason."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nstray.data import jpeg, synth
from nstray.data.coco import load_coco, read_records
from nstray.data.images import decode_image
from nstray.pipeline.stages import StageOptions, Stylizer, encode_write_batch, prepare_batch, stylize_rows

PLAN = {"styles": {"a": {"kind": "multistyle", "index": 3}},
        "parts": {"wheel": {"style": "a"}, "body": {"style": "a"}, "background": {"style": "none"}}}


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def test_decode_matches_pil_and_expands_grayscale():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    files = [_jpeg(rgb, quality=90), _jpeg(gray, quality=90)]
    out = jpeg.decode_jpegs(files)
    assert [a.shape for a in out] == [(37, 53, 3), (20, 30, 3)] and all(a.dtype == np.uint8 for a in out)
    for a, f in zip(out, files):  # same libjpeg family as PIL here: a level or two at most
        assert np.abs(a.astype(int) - decode_image(f, name="x.jpg").astype(int)).max() <= 2
    assert jpeg.is_jpeg(files[0]) and not jpeg.is_jpeg(b"\x89PNG\r\n\x1a\n")


def test_a_corrupt_file_fails_the_list():
    good = _jpeg(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(RuntimeError):
        jpeg.decode_jpegs([good, good[:40] + b"\x00" * 10])


def test_encode_roundtrips_at_the_requested_quality():
    y, x = np.mgrid[0:64, 0:96]
    smooth = np.stack([x * 2.5, y * 3.5, 128 + 40 * np.sin(x / 9) * np.cos(y / 7)], -1).astype(np.uint8)
    hi, lo = jpeg.encode_jpegs([smooth, smooth], quality=95), jpeg.encode_jpegs([smooth], quality=20)
    assert hi[0] == hi[1] and len(lo[0]) < len(hi[0])
    back = np.asarray(Image.open(io.BytesIO(hi[0])).convert("RGB")).astype(float)
    assert back.shape == smooth.shape and 10 * np.log10(255**2 / np.mean((back - smooth) ** 2)) > 35


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    ds = synth.generate(tmp_path_factory.mktemp("jpeg"), 4, seed=3, width=96, height=64)
    records, _ = read_records(load_coco(str(ds.annotations)), str(ds.images_dir))
    assert sum(r.file_name.endswith(".jpg") for r in records) >= 3
    return [r.to_row() for r in records]


def _batch(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        col = np.empty(len(rows), dtype=object)
        col[:] = [r[k] for r in rows]
        out[k] = col
    return out


def test_jpegs_reach_the_stylizer_compressed_and_come_back_encoded(rows, tmp_path):
    opts = StageOptions(output=str(tmp_path), ext="jpg", quality=90, variants=(0,), device_codec=True)
    prepared = prepare_batch(_batch(rows), opts)
    kinds = {str(f).rsplit(".", 1)[-1]: str(e) for f, e in zip(prepared["file_name"], prepared["encoding"])}
    assert kinds.get("jpg") == "jpeg" and kinds.get("png", "raw") == "raw" and not any(prepared["error"])

    actor = Stylizer(PLAN, opts, threads=1, fused=False)
    styled = actor(prepared)
    assert list(styled["encoded"]) == [True] * len(rows) and json.loads(styled["worker"][0])["device"] == "cpu"
    written = encode_write_batch(styled, opts)
    assert list(written["status"]) == ["done"] * len(rows)

    # the same records through the CPU codec: the same styled pictures, up to JPEG noise
    cpu_opts = StageOptions(output=str(tmp_path / "cpu"), ext="jpg", quality=90, variants=(0,))
    cpu = encode_write_batch(stylize_rows(actor.stylizer, prepare_batch(_batch(rows), cpu_opts), cpu_opts), cpu_opts)
    for key in written["output_key"]:
        a = np.asarray(Image.open(tmp_path / key).convert("RGB")).astype(int)
        b = np.asarray(Image.open(tmp_path / "cpu" / key).convert("RGB")).astype(int)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.0


def test_a_jpeg_corrupt_past_its_header_fails_alone_with_the_cpu_reason(rows, tmp_path):
    images = Path(rows[0]["uri"]).parent
    jpgs = [r for r in rows if r["file_name"].endswith(".jpg")]
    bad = dict(jpgs[0], uri=str(tmp_path / "bad.jpg"), file_name="bad.jpg")
    data = (images / jpgs[0]["file_name"]).read_bytes()
    Path(bad["uri"]).write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    opts = StageOptions(output=str(tmp_path / "out"), ext="png", variants=(0,), device_codec=True)
    prepared = prepare_batch(_batch([bad, jpgs[1]]), opts)
    assert list(prepared["encoding"]) == ["jpeg", "jpeg"]
    out = encode_write_batch(Stylizer(PLAN, opts, threads=1)(prepared), opts)
    assert list(out["status"]) == ["failed", "done"]
    assert out["stage"][0] == "decode" and "truncated" in out["error"][0]
