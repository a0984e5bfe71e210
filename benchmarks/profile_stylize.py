"""Profile: where one stylizer actor's time goes per batch (Python-side cProfile + wall time per phase).

Runs ``PartStylizer.stylize_batch`` on synthetic car images with a plan, the way the job's actor does
(one batch of ``--batch`` same-size images), and prints the wall time per image, the share spent in the
network forward passes vs everything else, and the top functions by own time. On a GPU the gap between
the network's time and the wall time is the CPU-side work that keeps the GPU idle.

    python benchmarks/profile_stylize.py --device cuda --size 512 --batch 16
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nstray import storage  # noqa: E402
from nstray.data.coco import load_coco, read_records  # noqa: E402
from nstray.data.masksource import CocoParts  # noqa: E402
from nstray.data.images import decode_image  # noqa: E402
from nstray.data.synth import generate  # noqa: E402
from nstray.plan import load_plan  # noqa: E402
from nstray.assets import load_plan_assets  # noqa: E402
from nstray.stylize.parts import PartStylizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--plan", default=str(ROOT / "examples" / "plans" / "demo.yaml"))
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)

    data = generate(tempfile.mkdtemp(prefix="nstray-prof-"), args.batch, seed=0, width=args.size, height=args.size)
    records, _ = read_records(load_coco(str(data.annotations)), str(data.images_dir))
    plan = load_plan(args.plan)
    images, labels, cats = [], [], []
    for r in records:
        images.append(decode_image(storage.read_bytes(r.uri), name=r.file_name))
        parts = CocoParts(plan.overlaps).labels(r, images[-1])
        labels.append(parts.label_map)
        cats.append(parts.categories)
    stylizer = PartStylizer(plan, device=args.device, assets=load_plan_assets(plan))
    keys = [r.image_id for r in records]

    def run() -> None:
        stylizer.stylize_batch(images, labels, cats, variants=[0] * len(images), seeds=[0] * len(images), keys=keys)
        if args.device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up: kernels, allocator, cudnn autotune
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0

    # network share: the same forward passes alone, timed by wrapping each network's forward
    spent = {"net": 0.0}
    nets = [m for m in (stylizer.multistyle, stylizer.transformer, *stylizer.feedforward.values()) if m is not None]
    originals = [(m, m.forward) for m in nets]
    for m, fwd in originals:
        def timed(*a, _fwd=fwd, **kw):
            if args.device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = _fwd(*a, **kw)
            if args.device == "cuda":
                torch.cuda.synchronize()
            spent["net"] += time.perf_counter() - t
            return out
        m.forward = timed
    run()
    for m, fwd in originals:
        m.forward = fwd

    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    n = len(images)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{n} images {args.size}², {dev}: {1000 * wall / n:.1f} ms per image ({n / wall:.1f} images/s); "
          f"network forward passes {1000 * spent['net'] / n:.1f} ms per image "
          f"({100 * spent['net'] / wall:.0f}% of the wall time, synchronized)")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
    print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
