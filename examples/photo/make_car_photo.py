"""A real photo with part masks for ``nstray stylize``: two cars from a dashcam video, parts drawn by hand.

Takes frame 30 of ``udacity_vehicle-detection_test_video.mp4`` (CarND-Vehicle-Detection, MIT;
in ``../shared/data/videos``), crops the two cars ((780, 380)-(1280, 520)), upscales 2x to 1000x280
and writes next to OUT_DIR:

- ``car.png``: the picture;
- ``car_masks.png``: the label PNG for ``--masks`` (value = category id, 0 = background; ids below,
  pass ``--categories body,window,windshield,wheel,taillight,back_bumper``). Body first, small parts on top.

    python examples/photo/make_car_photo.py /tmp/car
    nstray stylize /tmp/car/car.png --plan examples/plans/car-photo.yaml --masks /tmp/car/car_masks.png \\
        --categories body,window,windshield,wheel,taillight,back_bumper --out /tmp/car/out.png --preview /tmp/car/preview.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

VIDEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos" / "udacity_vehicle-detection_test_video.mp4"
FRAME = 30
CATEGORIES = ["body", "window", "windshield", "wheel", "taillight", "back_bumper"]  # id = position + 1


def frame(path: Path, index: int) -> Image.Image:
    """Frame ``index`` of a video as an RGB image (PyAV)."""
    import av

    with av.open(str(path)) as container:
        for i, f in enumerate(container.decode(video=0)):
            if i == index:
                return f.to_image().convert("RGB")
    raise SystemExit(f"{path} has fewer than {index + 1} frames")


def masks(size: tuple[int, int]) -> Image.Image:
    """The hand-drawn part polygons (in the 1000x280 picture's pixels) as a label image."""
    lab = Image.new("L", size, 0)
    d = ImageDraw.Draw(lab)
    cid = {name: i + 1 for i, name in enumerate(CATEGORIES)}

    def poly(points, name):
        d.polygon(points, fill=cid[name])

    def ellipse(cx, cy, rx, ry, name):
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=cid[name])

    # the white sedan (right)
    poly([(522, 150), (535, 115), (575, 97), (605, 62), (645, 50), (730, 45), (855, 50), (885, 75), (910, 95),
          (935, 112), (938, 195), (905, 205), (880, 215), (700, 215), (690, 235), (655, 235), (640, 205), (565, 205),
          (555, 215), (530, 210), (520, 185)], "body")
    poly([(588, 100), (606, 70), (640, 59), (645, 101)], "window")
    poly([(651, 59), (690, 57), (702, 97), (650, 100)], "window")
    poly([(712, 57), (845, 55), (880, 88), (715, 90)], "windshield")
    poly([(713, 140), (935, 140), (935, 198), (905, 205), (880, 212), (715, 212)], "back_bumper")
    poly([(715, 115), (790, 115), (792, 138), (716, 140)], "taillight")
    poly([(898, 113), (933, 112), (934, 138), (898, 138)], "taillight")
    ellipse(540, 180, 19, 36, "wheel")
    ellipse(673, 195, 26, 43, "wheel")
    # the black sedan (left)
    poly([(70, 100), (100, 72), (140, 62), (290, 62), (310, 85), (322, 110), (322, 200), (300, 220), (130, 222),
          (115, 225), (75, 205), (68, 150)], "body")
    poly([(142, 68), (285, 68), (296, 100), (132, 102)], "windshield")
    poly([(100, 80), (128, 70), (125, 100), (88, 102)], "window")
    poly([(135, 150), (320, 150), (320, 205), (300, 218), (135, 220)], "back_bumper")
    poly([(135, 117), (192, 117), (192, 139), (135, 139)], "taillight")
    poly([(278, 110), (319, 110), (319, 134), (278, 134)], "taillight")
    ellipse(110, 190, 13, 32, "wheel")
    return lab


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    picture = frame(VIDEO, FRAME).crop((780, 380, 1280, 520)).resize((1000, 280), Image.LANCZOS)
    picture.save(out / "car.png")
    masks(picture.size).save(out / "car_masks.png")
    print(f"wrote {out / 'car.png'} and {out / 'car_masks.png'} (--categories {','.join(CATEGORIES)})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
