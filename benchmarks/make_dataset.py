"""A big synthetic COCO dataset, fast: ``--base`` images drawn in parallel, then replicated to ``--images``.

Drawing a 512² synthetic car takes about 50 ms of one core; for a throughput benchmark of thousands of
images, ``--base`` distinct images are drawn on ``--workers`` processes (``nstray.data.synth.generate``,
one seed per worker) and then listed again under new image ids (hard links, or copies across file
systems) until there are ``--images``. Every file is a JPEG (the generator's occasional PNG is
re-encoded), so the job reads JPEG in. Style draws are keyed by image id, so replicas are styled anew.

    python benchmarks/make_dataset.py --out /tmp/ds --images 5000 --base 500 --width 512 --height 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _draw(args: tuple[str, int, int, int, int]) -> str:
    from nstray.data.synth import generate

    out, n, seed, width, height = args
    return str(generate(out, n, seed=seed, width=width, height=height).annotations)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())


def make(out: Path, images: int, base: int, width: int, height: int, workers: int) -> Path:
    """Write ``out/images/*.jpg`` and ``out/annotations.json`` (``images`` entries); return the annotations path."""
    from PIL import Image

    parts_dir = out / "parts"
    workers = max(1, min(workers, base))
    counts = [base // workers + (1 if i < base % workers else 0) for i in range(workers)]
    jobs = [(str(parts_dir / f"w{i}"), n, i, width, height) for i, n in enumerate(counts) if n]
    with ProcessPoolExecutor(len(jobs)) as pool:
        files = list(pool.map(_draw, jobs))
    sources = []  # (jpeg path, image entry, its annotations)
    categories = None
    for ann_file, (folder, *_rest) in zip(files, jobs):
        coco = json.loads(Path(ann_file).read_text())
        categories = coco["categories"]
        by_image: dict[int, list] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for im in coco["images"]:
            path = Path(folder) / "images" / im["file_name"]
            if path.suffix.lower() != ".jpg":
                jpg = path.with_suffix(".jpg")
                Image.open(path).convert("RGB").save(jpg, quality=92)
                path = jpg
            sources.append((path, im, by_image.get(im["id"], [])))
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    entries, anns = [], []
    next_ann = 1
    for new_id in range(1, images + 1):
        path, im, its = sources[(new_id - 1) % len(sources)]
        name = f"{new_id:07d}.jpg"
        _link(path, img_dir / name)
        entries.append({"id": new_id, "file_name": name, "width": im["width"], "height": im["height"]})
        for a in its:
            anns.append({**a, "id": next_ann, "image_id": new_id})
            next_ann += 1
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return ann_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--base", type=int, default=500, help="distinct images drawn (the rest are replicas)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    ann = make(args.out, args.images, min(args.base, args.images), args.width, args.height, args.workers)
    print(f"{args.images} images ({min(args.base, args.images)} distinct) at {args.width}x{args.height} in "
          f"{time.perf_counter() - t0:.1f} s: {ann}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
