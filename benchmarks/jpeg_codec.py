"""Benchmark: JPEG decode + encode by PIL on one CPU core vs by ``nstray.data.jpeg`` on a device (nvjpeg on CUDA).

Side by side in one process, on the same synthetic car images (nstray's generator, JPEG quality 92):
images/s of each codec for decode and for encode (whole lists per call, as the stylizer actor does),
their ratio, and how far the device's pixels are from PIL's (decode: max/mean abs difference; encode:
PSNR of the re-decoded image against its source).

    python benchmarks/jpeg_codec.py --device cuda          # nvjpeg vs PIL
    python benchmarks/jpeg_codec.py                        # libjpeg-turbo through torchvision vs PIL

Also the cost of each output ``format`` of the job (``encode_image``, one CPU thread): PNG vs JPEG ms per image
and KiB per image, so the README can say what each format costs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstray.data import jpeg  # noqa: E402
from nstray.data.images import decode_image  # noqa: E402
from nstray.pipeline.stages import encode_image  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best(fn, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)

    from nstray.data.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(tmp, args.images, seed=0, width=args.size, height=args.size)
        files = [f.read_bytes() for f in sorted(data.images_dir.iterdir()) if f.suffix == ".jpg"]
    n = len(files)
    pil_images = [decode_image(f, name="bench.jpg") for f in files]
    dev_images = jpeg.decode_jpegs(files, device)  # warm-up (nvjpeg handles, CUDA context)
    jpeg.encode_jpegs(dev_images[:2], args.quality, device)

    diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(pil_images, dev_images)]
    t_dec_pil = _best(lambda: [decode_image(f, name="bench.jpg") for f in files], args.repeats, device)
    t_dec_dev = _best(lambda: jpeg.decode_jpegs(files, device), args.repeats, device)
    t_enc_pil = _best(lambda: [encode_image(im, "jpg", args.quality) for im in pil_images], args.repeats, device)
    t_enc_png = _best(lambda: [encode_image(im, "png") for im in pil_images], args.repeats, device)
    kib = {ext: statistics.mean(len(encode_image(im, ext, args.quality)) for im in pil_images) / 1024 for ext in ("png", "jpg")}
    t_enc_dev = _best(lambda: jpeg.encode_jpegs(pil_images, args.quality, device), args.repeats, device)
    # encoding from pixels already on the device (what the stylizer hands over on a GPU)
    on_dev = [torch.from_numpy(np.require(im, np.uint8, ["C", "W"])).to(device).permute(2, 0, 1).contiguous() for im in pil_images]
    t_enc_resident = _best(lambda: jpeg.encode_jpeg_tensors(on_dev, args.quality), args.repeats, device)

    encoded = jpeg.encode_jpegs(pil_images, args.quality, device)
    psnr = []
    for src, data in zip(pil_images, encoded):
        back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(float)
        mse = float(np.mean((back - src) ** 2))
        psnr.append(10 * np.log10(255**2 / max(mse, 1e-12)))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (torchvision libjpeg-turbo)"
    print(f"{n} JPEGs of {args.size}x{args.size}, device: {name}; PIL on one CPU thread")
    print(f"decode: PIL {n / t_dec_pil:8.1f} images/s | device {n / t_dec_dev:8.1f} images/s | "
          f"{t_dec_pil / t_dec_dev:.1f}x")
    print(f"encode: PIL {n / t_enc_pil:8.1f} images/s | device {n / t_enc_dev:8.1f} images/s (from host arrays) | "
          f"{t_enc_pil / t_enc_dev:.1f}x; {n / t_enc_resident:.1f} images/s from device tensors "
          f"({t_enc_pil / t_enc_resident:.1f}x)")
    print(f"device decode vs PIL: max abs {max(int(d.max()) for d in diffs)}, "
          f"mean abs {statistics.mean(float(d.mean()) for d in diffs):.3f} levels")
    print(f"device encode q{args.quality}: PSNR vs source {min(psnr):.1f}–{max(psnr):.1f} dB, "
          f"{statistics.mean(len(e) for e in encoded) / 1024:.0f} KiB each")
    print(f"output format (the job's encode_image, one CPU thread): png {1000 * t_enc_png / n:.1f} ms/image, "
          f"{kib['png']:.0f} KiB | jpg q{args.quality} {1000 * t_enc_pil / n:.1f} ms/image, {kib['jpg']:.0f} KiB | "
          f"png costs {t_enc_png / t_enc_pil:.1f}x jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
