"""Boxes → masks: how close GrabCut-from-a-box and the plain box come to the true part masks.

    python benchmarks/boxes_to_masks.py --images 40 --width 384 --height 288 [--iterations 3] [--min-fill 0.4]
        [--sheet boxes.png] [--json out.json]

Generates a synthetic labeled set in a temporary folder (:func:`nstray.data.synth.generate`, which also
writes ``annotations_boxes.json``: the same annotations with boxes only), then for every box-only part
makes a mask the way the image job does (:func:`nstray.masks.grabcut_box`, falling back to the box where
GrabCut cannot say, exactly as :func:`nstray.masks.box_masks` with ``boxes: grabcut``) and compares it with
the exact mask of ``annotations.json``: IoU per category and overall (mean over parts), and milliseconds
per box. Crowd (RLE) annotations are left out. Prints a table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def _overlay(image: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """``image`` with each mask tinted in its own colour (half opacity)."""
    out = image.astype(np.float32)
    for k, m in enumerate(masks):
        colour = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 151 + 160) % 256], np.float32)
        out[m] = 0.5 * out[m] + 0.5 * colour
    return out.astype(np.uint8)


def measure(root: Path, n_images: int, width: int, height: int, seed: int, iterations: int,
            min_fill: float = 0.4, sheet: list | None = None) -> dict:
    """IoU vs the true masks of GrabCut-from-box and of the box, per category and overall; ms per box.
    ``sheet``: a list to append rows ``image | true masks | GrabCut (box where it fell back) | boxes`` to."""
    from nstray.data import synth
    from nstray.data.coco import load_coco, read_records
    from nstray.data.images import decode_image
    from nstray.masks import box_masks, decode_part

    ds = synth.generate(root, n_images, seed=seed, width=width, height=height)
    truth, _ = read_records(load_coco(str(ds.annotations)), str(ds.images_dir))
    boxes, _ = read_records(load_coco(str(ds.annotations_boxes)), str(ds.images_dir))
    exact = {p.ann_id: (p, decode_part(p, r.height, r.width)) for r in truth for p in r.parts}
    per_cat: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"grabcut": [], "box": []})
    seconds, n_boxes, fallbacks = 0.0, 0, 0
    for rec in boxes:
        image = decode_image(Path(rec.uri).read_bytes(), name=rec.file_name)
        parts = [p for p in rec.parts if not exact[p.ann_id][0].iscrowd]
        t0 = time.perf_counter()
        masks, sources = box_masks(image, parts, "grabcut", iterations=iterations, min_fill=min_fill)
        seconds += time.perf_counter() - t0
        n_boxes += len(parts)
        for k, part in enumerate(parts):
            true = exact[part.ann_id][1]
            box = decode_part(part, rec.height, rec.width)
            got = masks.get(k, box)
            fallbacks += sources[k] == "box"
            per_cat[part.category]["grabcut"].append(_iou(got, true))
            per_cat[part.category]["box"].append(_iou(box, true))
        if sheet is not None and len(sheet) < 4:
            boxes_ = [decode_part(p, rec.height, rec.width) for p in parts]
            sheet.append(np.concatenate([image, _overlay(image, [exact[p.ann_id][1] for p in parts]),
                                         _overlay(image, [masks.get(k, b) for k, b in enumerate(boxes_)]),
                                         _overlay(image, boxes_)], axis=1))
    rows = {cat: {"parts": len(v["box"]), "grabcut_iou": float(np.mean(v["grabcut"])), "box_iou": float(np.mean(v["box"]))}
            for cat, v in sorted(per_cat.items())}
    every_g = [x for v in per_cat.values() for x in v["grabcut"]]
    every_b = [x for v in per_cat.values() for x in v["box"]]
    return {"images": n_images, "size": [width, height], "iterations": iterations, "min_fill": min_fill,
            "boxes": n_boxes,
            "grabcut_fell_back_to_box": fallbacks, "ms_per_box": 1000 * seconds / max(1, n_boxes),
            "overall": {"grabcut_iou": float(np.mean(every_g)), "box_iou": float(np.mean(every_b))},
            "per_category": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--height", type=int, default=288)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=3, help="GrabCut iterations (the job's default: 3)")
    ap.add_argument("--min-fill", type=float, default=0.4,
                    help="GrabCut masks under this fraction of their box fall back to the box (the job's default: 0.4)")
    ap.add_argument("--sheet", default=None, help="write a PNG: image | true masks | GrabCut | boxes, 4 images")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    rows: list | None = [] if args.sheet else None
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(Path(tmp), args.images, args.width, args.height, args.seed, args.iterations, args.min_fill, rows)
    if rows:
        from PIL import Image

        Image.fromarray(np.concatenate(rows, axis=0)).save(args.sheet)
        print(f"sheet: {args.sheet} (image | true masks | GrabCut, the box where it fell back | boxes)")
    print(f"{res['boxes']} boxes on {res['images']} synthetic images of {args.width}x{args.height}; "
          f"GrabCut ({args.iterations} iterations, min fill {args.min_fill}) {res['ms_per_box']:.1f} ms per box, "
          f"fell back to the box for {res['grabcut_fell_back_to_box']}")
    print(f"{'category':<16} {'parts':>5} {'GrabCut IoU':>11} {'box IoU':>8}")
    for cat, r in res["per_category"].items():
        print(f"{cat:<16} {r['parts']:>5} {r['grabcut_iou']:>11.3f} {r['box_iou']:>8.3f}")
    o = res["overall"]
    print(f"{'overall':<16} {res['boxes']:>5} {o['grabcut_iou']:>11.3f} {o['box_iou']:>8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
