"""The stylizer's whole per-image path, old (per image, on the host) vs new (batched, on the device).

Side by side in one process on the same synthetic cars and plan (default: the six-part plan): the
old path is tests/parts_reference.py (the code before issue 14, verbatim), the new one
``PartStylizer.stylize_batch``; runs are interleaved. Prints ms per image for each batch size, the
ratio, and for each ``--precisions`` the new path's output against fp32: PSNR over the styled
pixels and the largest difference (uint8 levels) — the quality gate for fp16/bf16 is PSNR >= 40 dB.

    python benchmarks/stylize_path.py --device cuda --batches 16 64
    python benchmarks/stylize_path.py --device cpu --batches 2 --images 4 --size 128   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import nstray  # noqa: E402,F401  (first: its process settings apply before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nstray import storage  # noqa: E402
from nstray.assets import load_plan_assets  # noqa: E402
from nstray.data.coco import load_coco, read_records  # noqa: E402
from nstray.data.masksource import CocoParts  # noqa: E402
from nstray.data.images import decode_image  # noqa: E402
from nstray.data.synth import generate  # noqa: E402
from nstray.plan import load_plan  # noqa: E402
from nstray.stylize.parts import PRECISION_GATE_PSNR_DB as GATE_PSNR_DB, PartStylizer  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--images", type=int, default=64, help="distinct synthetic images (batches cycle through them)")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--plan", default=str(ROOT / "examples" / "plans" / "six-parts.yaml"))
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"])
    p.add_argument("--no-old", action="store_true", help="skip the old host path")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    from parts_reference import reference_stylize

    data = generate(tempfile.mkdtemp(prefix="nstray-path-"), args.images, seed=0, width=args.size, height=args.size)
    records, _ = read_records(load_coco(str(data.annotations)), str(data.images_dir))
    plan = load_plan(args.plan)
    images, labels, cats = [], [], []
    for r in records:
        images.append(decode_image(storage.read_bytes(r.uri), name=r.file_name))
        parts = CocoParts(plan.overlaps).labels(r, images[-1])
        labels.append(parts.label_map)
        cats.append(parts.categories)

    def batch(b: int):
        idx = [i % len(images) for i in range(b)]
        return ([images[i] for i in idx], [labels[i] for i in idx], [cats[i] for i in idx],
                {"variants": [0] * b, "seeds": [0] * b, "keys": list(range(b))})

    report: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "size": args.size,
                    "plan": args.plan, "paths": [], "precision": []}
    assets = load_plan_assets(plan)
    stylizers = {pr: PartStylizer(plan, device=args.device, precision=pr, assets=assets) for pr in args.precisions}
    fp32 = stylizers.get("fp32") or PartStylizer(plan, device=args.device, assets=assets)
    print(f"device {report['device']}; {args.size}²; plan {Path(args.plan).name}; {len(images)} distinct images")
    for b in args.batches:
        ims, lms, cs, kw = batch(b)
        fns = {f"new {pr}": (lambda s=s: s.stylize_batch(ims, lms, cs, **kw)) for pr, s in stylizers.items()}
        if not args.no_old:
            fns["old fp32"] = lambda: reference_stylize(fp32, ims, lms, cs, **kw)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for f in fns.values():
            f()
        _sync(args.device)
        for _ in range(args.repeats):
            for name, f in fns.items():
                _sync(args.device)
                t = time.perf_counter()
                f()
                _sync(args.device)
                times[name].append(time.perf_counter() - t)
        row = {"batch": b, **{k: 1000 * statistics.median(v) / b for k, v in times.items()}}
        if "old fp32" in row and "new fp32" in row:
            row["old_over_new_fp32"] = row["old fp32"] / row["new fp32"]
        report["paths"].append(row)
        print(f"batch {b}: " + ", ".join(f"{k} {v:.2f} ms/image ({1000 / v:.0f} images/s)"
                                         for k, v in row.items() if k.startswith(("new ", "old "))
                                         ) + (f"; old/new fp32 {row['old_over_new_fp32']:.1f}x"
                                              if "old_over_new_fp32" in row else ""))
    ims, lms, cs, kw = batch(min(len(images), max(args.batches)))
    ref = [r.image for r in fp32.stylize_batch(ims, lms, cs, **kw)]
    styled = [lab >= 0 for lab in lms]
    for pr, s in stylizers.items():
        if pr == "fp32":
            continue
        out = [r.image for r in s.stylize_batch(ims, lms, cs, **kw)]
        d = np.concatenate([(o.astype(np.float64) - r)[m].ravel() for o, r, m in zip(out, ref, styled)])
        mse = float((d ** 2).mean()) if d.size else 0.0
        psnr = float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf")  # plain floats and bools: JSON
        q = {"precision": pr, "psnr_db": psnr, "max_abs_levels": float(np.abs(d).max()) if d.size else 0.0,
             "mean_abs_levels": float(np.abs(d).mean()) if d.size else 0.0, "gate_psnr_db": GATE_PSNR_DB,
             "passes": bool(psnr >= GATE_PSNR_DB)}
        report["precision"].append(q)
        print(f"{pr} vs fp32 over styled pixels: PSNR {psnr:.1f} dB, max |diff| {q['max_abs_levels']:.0f}, "
              f"mean {q['mean_abs_levels']:.3f} levels: {'passes' if q['passes'] else 'FAILS'} the "
              f"{GATE_PSNR_DB:.0f} dB gate")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
