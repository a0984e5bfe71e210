"""Benchmark: the cost of online style augmentation (nstray.augment.PartStyle) per image, on one device.

Side by side in one process, on synthetic cars at SIZE² with their exact part masks: the plain pipeline
(decode-free: the image tensor as is) vs PartStyle in random mode (style randomization) and in plan mode
(the demo plan), p = 1 (every image styled). Prints ms per image and images/s; the ratio to the plain
copy is the augmentation's overhead. Median of --repeats passes over the same images after a warm-up.

    .venv/bin/python benchmarks/augment_cost.py --size 512 --images 8
    python3 benchmarks/augment_cost.py --device cuda --size 512 --images 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstray.assets import load_plan_assets  # noqa: E402
from nstray.augment import PartStyle  # noqa: E402
from nstray.data import synth  # noqa: E402
from nstray.data.coco import load_coco, read_records  # noqa: E402
from nstray.data.masksource import CocoParts  # noqa: E402
from nstray.plan import load_plan  # noqa: E402


def samples(n: int, size: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        ds = synth.generate(Path(tmp), n, seed=0, width=size, height=size)
        coco = load_coco(str(ds.annotations))
        names = ["background"] + sorted({c["name"] for c in coco["categories"]})
        out = []
        for rec in read_records(coco, str(ds.images_dir))[0]:
            img = torch.from_numpy(np.array(Image.open(rec.uri).convert("RGB"))).permute(2, 0, 1).contiguous()
            parts = CocoParts().labels_at(rec, rec.height, rec.width)
            mask = torch.zeros(rec.height, rec.width, dtype=torch.int64)
            for k, category in enumerate(parts.categories):
                mask[torch.from_numpy(parts.label_map == k)] = names.index(category)
            out.append((img, mask))
    return out, names


def timed(fn, data, device: str, repeats: int) -> float:
    """Median seconds per image over ``repeats`` passes (after one warm-up pass)."""
    def one_pass() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for img, mask in data:
            fn(img.to(device), mask.to(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / len(data)

    one_pass()
    return statistics.median(one_pass() for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data, names = samples(args.images, args.size)
    plan = load_plan(ROOT / "examples" / "plans" / "demo.yaml")
    arms = {
        "copy (no augmentation)": lambda img, mask: (img.clone(), mask),
        "PartStyle random (style randomization)": PartStyle(p=1.0, seed=0, device=args.device),
        "PartStyle plan (examples/plans/demo.yaml)": PartStyle(plan, p=1.0, class_names=names, seed=0,
                                                               device=args.device, assets=load_plan_assets(plan)),
    }
    rows = {}
    for name, fn in arms.items():
        s = timed(fn, data, args.device, args.repeats)
        rows[name] = {"ms_per_image": round(1000 * s, 2), "images_per_s": round(1 / s, 2)}
    base = rows["copy (no augmentation)"]["ms_per_image"]
    print(f"online augmentation at {args.size}², {args.images} images, device {args.device}, "
          f"{torch.get_num_threads()} CPU thread(s):")
    for name, r in rows.items():
        print(f"  {name:45s} {r['ms_per_image']:9.1f} ms/image  {r['images_per_s']:8.2f} images/s"
              + ("" if name.startswith("copy") else f"  (+{r['ms_per_image'] - base:.1f} ms over the copy)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "device": args.device, "arms": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
