"""Write ``mosaic.png``: a stained-glass style image (Voronoi cells, dark leading), made here so the
example plans have an arbitrary-style image without downloading anything. Deterministic."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

SIZE, CELLS = 256, 48
PALETTE = np.array([(200, 40, 40), (240, 190, 40), (30, 90, 170), (40, 150, 80), (230, 120, 30), (120, 40, 140),
                    (250, 235, 200), (20, 140, 170)], dtype=float)


def mosaic(seed: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    pts = rng.random((CELLS, 2)) * SIZE
    colours = PALETTE[rng.integers(0, len(PALETTE), CELLS)]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dist = np.sqrt((yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2)
    order = np.argsort(dist, axis=-1)
    d1 = np.take_along_axis(dist, order[..., :1], -1)[..., 0]
    d2 = np.take_along_axis(dist, order[..., 1:2], -1)[..., 0]
    img = colours[order[..., 0]] * (0.9 + 0.1 * np.sin(xx / 9.0 + yy / 13.0))[..., None]  # a little glass shading
    img[(d2 - d1) < 2.5] = (25, 20, 15)  # the lead between the panes
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    mosaic().save(Path(__file__).with_name("mosaic.png"))
