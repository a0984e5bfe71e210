"""Benchmark: does the styled set help? One segmenter, three training arms, evaluated on the same held-out split.

    .venv/bin/python benchmarks/augmentation.py                       # generated domain shift, 3 seeds, CPU
    .venv/bin/python benchmarks/augmentation.py --seeds 0 1 2 --epochs 8 --json aug.json
    .venv/bin/python benchmarks/augmentation.py --train ANN --train-images DIR --test ANN --test-images DIR

Arms, each with the same architecture, seed, steps, schedule and validation split (``train-seg``'s recipe):

* **base**: the original training images;
* **offline**: plus the styled variants a ``nstray run`` over the training annotations made (``--augment``,
  ``--augment-ratio``): the labels still hold;
* **online**: style randomization on the fly (``--style-augment random``, ``--style-p``): no style image needed.

Default data: a domain shift made by ``nstray datasets synth --domain``: train on domain ``a`` (street and city
backgrounds, a daylight camera), test on domain ``b`` (nature/studio/abstract backgrounds under a colour cast,
lower contrast, more grain) — the situation style augmentation is meant for (Geirhos et al. 2019; Jackson et
al. 2019). Each arm's last checkpoint is evaluated on the test split; prints mIoU and per-class IoU per arm and
seed, mean ± spread over seeds, and each arm's difference to base. Small by default so it runs on a laptop;
what it shows at that size is a measurement, not a promise.
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
sys.path.insert(0, str(ROOT))

ARMS = ("base", "offline", "online")
# every synthetic part category gets a style; list styles are drawn per variant
PLAN = {
    "styles": {"mosaic": {"kind": "multistyle", "index": 16}, "starry": {"kind": "multistyle", "index": 19},
               "vivid": {"kind": "multistyle", "index": 3}, "ink": {"kind": "multistyle", "index": 15},
               "fire": {"kind": "multistyle", "index": 20}, "wave": {"kind": "multistyle", "index": 7}},
}


def _plan(categories: list[str]) -> dict:
    names = sorted(PLAN["styles"])
    parts = {c: {"style": names} for c in categories}
    parts["background"] = {"style": names + ["none"]}
    return {"styles": PLAN["styles"], "parts": parts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train"), ap.add_argument("--train-images"), ap.add_argument("--test"), ap.add_argument("--test-images")
    ap.add_argument("--train-count", type=int, default=24, help="generated training images (domain a)")
    ap.add_argument("--test-count", type=int, default=12, help="generated test images (domain b)")
    ap.add_argument("--width", type=int, default=128), ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--size", type=int, default=96, help="training crop side")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--backbone-weights", default="none", help="'none' (random init) or what train-seg takes")
    ap.add_argument("--variants", type=int, default=2, help="styled variants per training image (offline arm)")
    ap.add_argument("--augment-ratio", type=float, default=0.5)
    ap.add_argument("--style-p", type=float, default=0.5)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from nstray.data.coco import load_coco, read_records
    from nstray.data.synth import generate
    from nstray.models.segmentation import iou_scores
    from nstray.pipeline import run_job
    from nstray.segmentation import evaluate, load_segmenter, model_class_index
    from nstray.train.seg_trainer import SegTrainConfig, train_segmenter

    work = Path(args.work or tempfile.mkdtemp(prefix="nstray-aug-"))
    t0 = time.perf_counter()
    if args.train:
        train_ann, train_images, test_ann, test_images = args.train, args.train_images, args.test, args.test_images
    else:
        a = generate(work / "domain_a", args.train_count, seed=1, width=args.width, height=args.height, domain="a")
        b = generate(work / "domain_b", args.test_count, seed=2, width=args.width, height=args.height, domain="b")
        train_ann, train_images, test_ann, test_images = str(a.annotations), str(a.images_dir), str(b.annotations), str(b.images_dir)
    categories = sorted({c["name"] for c in load_coco(train_ann)["categories"]})
    styled = work / "styled"
    if "offline" in args.arms:
        s = run_job({"input": {"annotations": train_ann, "images": train_images}, "output": str(styled),
                     "variants": args.variants, "seed": 0, "plan": _plan(categories), "contact_sheet": 4,
                     "resources": {"actors": 1, "batch_size": 4}})
        print(f"styled set: {s.done + s.skipped} variants of {s.records} training images -> {styled} "
              f"(contact sheet: {styled / 'contact_sheet.png'})", flush=True)
    test_records, _ = read_records(load_coco(test_ann), test_images, check_files=False)

    results: dict[str, dict[int, dict]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            extra = {"augment": str(styled), "augment_ratio": args.augment_ratio} if arm == "offline" else \
                {"style_augment": "random", "style_p": args.style_p} if arm == "online" else {}
            cfg = SegTrainConfig(data=train_ann, images=train_images, out=str(work / "runs"), name=f"{arm}-s{seed}",
                                 arch=args.arch, size=args.size, epochs=args.epochs, batch_size=args.batch_size,
                                 workers=args.workers, backbone_weights=None if args.backbone_weights == "none"
                                 else args.backbone_weights, seed=seed, loader_workers=0, val_fraction=0.2, **extra)
            t = time.perf_counter()
            summary = train_segmenter(cfg, notify=lambda m: None)
            seg = load_segmenter(summary.model_uri)  # the last checkpoint: every arm trained the same steps
            cm = evaluate(seg, test_records, model_class_index(seg, categories), size=args.size)
            scores = iou_scores(cm)
            results[arm][seed] = {"miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"],
                                  "per_class": dict(zip(seg.classes, scores["iou"])),
                                  "seconds": round(time.perf_counter() - t, 1)}
            print(f"seed {seed} {arm:8s} test mIoU {scores['miou']:.4f}  pixel acc {scores['pixel_accuracy']:.4f}  "
                  f"({results[arm][seed]['seconds']:.0f} s)", flush=True)

    def spread(vals: list[float]) -> str:
        return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.4f}"

    print(f"\ntest split: {test_ann} ({len(test_records)} images); {len(args.seeds)} seed(s); {args.arch} {args.size} px, "
          f"{args.epochs} epochs, backbone {args.backbone_weights}")
    print(f"{'arm':10s} {'mIoU mean ± sd':>18s} {'Δ vs base (per seed)':>28s}")
    table = {}
    for arm in args.arms:
        m = [results[arm][s]["miou"] for s in args.seeds]
        delta = [results[arm][s]["miou"] - results["base"][s]["miou"] for s in args.seeds] if "base" in results else []
        table[arm] = {"miou": m, "delta": delta}
        print(f"{arm:10s} {spread(m):>18s} {(spread(delta) if delta and arm != 'base' else '-'):>28s}")
    classes = list(next(iter(next(iter(results.values())).values()))["per_class"])
    print("per-class IoU (mean over seeds): " + "; ".join(
        f"{arm}: " + ", ".join(f"{c} {statistics.mean(results[arm][s]['per_class'][c] for s in args.seeds):.2f}"
                               for c in classes) for arm in args.arms))
    print(f"total {time.perf_counter() - t0:.0f} s; work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "table": table}, indent=1,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
