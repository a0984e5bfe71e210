"""Synthetic labeled vehicles: the project's own COCO test and demo data.

``generate(out_dir, n_images, seed)`` draws procedural cartoon cars (sedans,
hatchbacks, SUVs, coupes, pickups, vans; side views facing either way, and about
a third in an oblique 3/4 view showing hood, windshield, roof and front face) on
varied backgrounds (street, city, nature, studio, abstract) and writes:

- ``images/*.jpg`` (about one in eight is a ``.png``),
- ``annotations.json``: COCO instance segmentation of the car *parts*,
- ``annotations_boxes.json``: the same images and annotation ids, boxes only.

Every part is painted through an owner map (one int per pixel naming the part
instance that painted it last), so an annotation is exactly the visible pixels of
that part: occluded cars are clipped by whatever is drawn in front of them. Masks
become polygons that follow pixel edges ("crack" contours), which pycocotools
decodes back to the very same pixels; a few wheel / window annotations are stored
as compressed RLE with ``iscrowd=1``. Output is deterministic for a seed: image
``k`` depends only on ``(seed, k)`` and the JSON has no timestamps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["CATEGORIES", "SynthDataset", "generate", "mask_to_polygons"]

CATEGORIES: list[dict] = [
    {"id": i, "name": name, "supercategory": "vehicle_part"}
    for i, name in enumerate(
        [
            "body",
            "hood",
            "trunk",
            "front_door",
            "back_door",
            "window",
            "windshield",
            "rear_windshield",
            "wheel",
            "headlight",
            "taillight",
            "front_bumper",
            "back_bumper",
            "mirror",
        ],
        start=1,
    )
]
_CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}

JPEG_QUALITY = 92
PNG_EVERY = 8  # about one image in this many is written as PNG
THREE_QUARTER = 0.3  # share of cars drawn in an oblique 3/4 view (hood, roof and front face visible)
CAR_KINDS = ("sedan", "hatchback", "suv", "coupe", "pickup", "van")


@dataclass(frozen=True)
class SynthDataset:
    """Where a generated dataset lives."""

    root: Path
    images_dir: Path
    annotations: Path
    annotations_boxes: Path


# ----------------------------------------------------------------------------- masks -> COCO


def mask_to_polygons(mask: np.ndarray, x0: int = 0, y0: int = 0) -> list[list[float]]:
    """Exact COCO polygons of a boolean mask: pycocotools decodes them to the same pixels.

    Contours follow pixel edges (vertices at half-integers), so nothing is gained or
    lost at the border. COCO polygons are unioned and cannot carry holes, so a mask
    with holes is first cut into hole-free column slabs. ``x0, y0`` offset the result.
    """
    polys: list[list[float]] = []
    for ring in _crack_rings(mask.astype(bool)):
        ring = ring + np.array([x0, y0], dtype=np.float64)
        polys.append([float(c) for c in ring.ravel()])
    return polys


def _crack_rings(mask: np.ndarray, x_off: int = 0) -> list[np.ndarray]:
    """Outer pixel-edge rings ((N, 2) corner arrays) of hole-free pieces of ``mask``."""
    h, w = mask.shape
    if h == 0 or w == 0:
        return []
    big = np.zeros((2 * h + 2, 2 * w + 2), np.uint8)
    big[1:-1, 1:-1] = cv2.resize(mask.astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(big, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is not None and (hierarchy[0, :, 3] >= 0).any():
        cut = _hole_column(mask)  # a hole: cut through it and trace both sides
        return _crack_rings(mask[:, :cut], x_off) + _crack_rings(mask[:, cut:], x_off + cut)
    rings: list[np.ndarray] = []
    for c in contours:
        p = c[:, 0, :].astype(np.int64) - 1
        # in the 2x grid an even index is the low edge of a pixel, an odd one its high edge
        q = np.where(p % 2 == 0, p // 2 - 0.5, p // 2 + 0.5)
        if len(q) > 1:
            q = q[np.any(q != np.concatenate([q[-1:], q[:-1]]), axis=1)]
        if len(q) > 2:
            prev = np.concatenate([q[-1:], q[:-1]])
            nxt = np.concatenate([q[1:], q[:1]])
            d1, d2 = q - prev, nxt - q
            q = q[(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) != 0]  # drop collinear vertices
        if len(q) >= 3:
            q[:, 0] += x_off
            rings.append(q)
    return rings


def _hole_column(mask: np.ndarray) -> int:
    """A column index that passes through a hole of ``mask`` (cutting there opens that hole)."""
    inv = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    n, labels = cv2.connectedComponents(inv, connectivity=4)
    outside = labels[0, 0]
    hole = next(lab for lab in range(1, n) if lab != outside)
    cols = np.nonzero(labels == hole)[1] - 1
    return int(cols[len(cols) // 2])


def _encode_rle(full_mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a full-image mask, counts as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(full_mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------- noise and helpers


def _fractal_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...] = (3, 7, 17, 41)) -> np.ndarray:
    """Smooth value noise in about [-1, 1] (sum of bicubic-upsampled random grids)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for c in cells:
        gh, gw = max(2, round(c * h / max(h, w))) + 1, max(2, round(c * w / max(h, w))) + 1
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
    return out / (total * 0.8)


def _smooth(points: list[tuple[float, float]], iterations: int = 3, closed: bool = True) -> np.ndarray:
    """Chaikin corner cutting: rounds a control polygon into a cartoon-smooth outline."""
    p = np.asarray(points, np.float64)
    for _ in range(iterations):
        q = np.roll(p, -1, axis=0) if closed else p[1:]
        a = p if closed else p[:-1]
        new = np.empty((2 * len(a), 2))
        new[0::2] = 0.75 * a + 0.25 * q
        new[1::2] = 0.25 * a + 0.75 * q
        p = new if closed else np.vstack([p[:1], new, p[-1:]])
    return p


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour in [0, 1] from HSV in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ----------------------------------------------------------------------------- backgrounds


DOMAINS: dict[str, tuple[str, ...]] = {"a": ("street", "city"), "b": ("nature", "studio", "abstract")}
"""Background families of the two domains of ``generate(domain=...)``: train on one, test on the other."""
_KIND_P = {"street": 0.3, "city": 0.25, "nature": 0.15, "studio": 0.15, "abstract": 0.15}


def _background(rng: np.random.Generator, h: int, w: int, noise: np.ndarray,
                domain: str | None = None) -> tuple[np.ndarray, float, str]:
    """A textured background and its horizon y; returns (rgb float32, horizon, kind).

    Drawn at half resolution and upsampled: four times cheaper, and the slight
    softness reads as depth of field behind the sharp cars.
    """
    hs, ws = (h + 1) // 2, (w + 1) // 2
    small, horizon, kind = _background_small(rng, hs, ws, cv2.resize(noise, (ws, hs), interpolation=cv2.INTER_AREA),
                                              domain)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), horizon * h / hs, kind


def _background_small(rng: np.random.Generator, h: int, w: int, noise: np.ndarray,
                      domain: str | None = None) -> tuple[np.ndarray, float, str]:
    """The background at the size given: sky/road, city, nature, studio or abstract (a domain's family only)."""
    kinds = DOMAINS[domain] if domain else tuple(_KIND_P)
    p = [_KIND_P[k] for k in kinds]
    kind = str(rng.choice(list(kinds), p=[v / sum(p) for v in p] if domain else p))
    yy = (np.arange(h, dtype=np.float32) / h)[:, None, None]
    xx = (np.arange(w, dtype=np.float32) / w)[None, :, None]
    horizon = float(rng.uniform(0.3, 0.6)) * h
    hz = horizon / h
    img = np.zeros((h, w, 3), np.float32)

    def sky() -> np.ndarray:
        top = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.4, 0.8), rng.uniform(0.6, 0.9))
        low = _hsv(rng.uniform(0.5, 0.62), rng.uniform(0.05, 0.3), rng.uniform(0.85, 1.0))
        if rng.random() < 0.2:  # dusk
            low = _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.3, 0.6), 0.95)
        t = np.clip(yy / max(hz, 1e-3), 0, 1)
        s = top * (1 - t) + low * t
        clouds = _smoothstep((noise[..., None] * 0.9 + rng.uniform(-0.2, 0.3) - 0.1) * 2.0)
        return s * (1 - 0.6 * clouds) + 0.97 * 0.6 * clouds

    def ground(base: np.ndarray, grain: float) -> np.ndarray:
        t = np.clip((yy - hz) / max(1 - hz, 1e-3), 0, 1)
        return base * (0.8 + 0.35 * t) * (1 + grain * noise[..., None])

    is_ground = yy >= hz
    if kind in ("street", "city"):
        img[:] = sky()
        if kind == "city":
            x = 0
            while x < w:
                bw = max(2, int(rng.uniform(0.08, 0.22) * w))
                top = int(horizon - rng.uniform(0.15, 0.9) * horizon)
                col = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.35, 0.85))
                y0, y1 = max(top, 0), int(horizon)
                shade = (0.85 + 0.3 * (np.arange(bw, dtype=np.float32) / max(bw, 1)))[None, :, None]
                img[y0:y1, x : x + bw] = (col * shade[:, : max(0, min(bw, w - x))])
                win = _hsv(rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.95))
                step_x, step_y = max(4, int(bw / rng.integers(3, 7))), max(5, int(rng.uniform(0.03, 0.07) * h))
                for wy in range(y0 + step_y // 2, y1 - step_y, step_y):
                    for wx in range(x + step_x // 3, x + bw - step_x // 2, step_x):
                        img[wy : wy + step_y // 2, wx : wx + step_x // 2] = win * rng.uniform(0.7, 1.1)
                x += bw + int(rng.integers(0, 6))
        asphalt = np.full(3, rng.uniform(0.22, 0.5), np.float32) * _hsv(rng.uniform(0, 1), 0.08, 1.0)
        img = np.where(is_ground, ground(asphalt, 0.08), img)
        curb = int(horizon + rng.uniform(0.03, 0.08) * h)
        img[int(horizon) : curb] = img[int(horizon) : curb] * 0.6 + 0.4 * rng.uniform(0.5, 0.8)
        lane_y = int(horizon + rng.uniform(0.5, 0.8) * (h - horizon))
        lane_col = np.array([0.95, 0.95, 0.9] if rng.random() < 0.7 else [0.95, 0.8, 0.2], np.float32)
        dash, gap = max(1, int(rng.uniform(0.06, 0.14) * w)), max(1, int(rng.uniform(0.04, 0.1) * w))
        th = max(1, h // 80)
        off = int(rng.integers(0, dash + gap))
        for x in range(-off, w, dash + gap):
            img[lane_y : lane_y + th, max(x, 0) : max(x + dash, 0)] = lane_col
    elif kind == "nature":
        img[:] = sky()
        for k in range(int(rng.integers(1, 4))):
            ph, amp_h = rng.uniform(0, 6.28), rng.uniform(0.03, 0.15) * h
            ridge = horizon - amp_h * (1 + np.sin(np.arange(w) / w * rng.uniform(3, 9) + ph)) / 2 - k * 4
            hill = np.arange(h)[:, None] >= ridge[None, :]
            img[hill] = _hsv(rng.uniform(0.22, 0.4), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6) + 0.1 * k)
        grass = _hsv(rng.uniform(0.15, 0.35), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.7))
        img = np.where(is_ground, ground(grass, 0.15), img)
    elif kind == "studio":
        c = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.5, 0.95))
        r = np.sqrt((xx - 0.5) ** 2 + (yy - hz) ** 2)
        img[:] = c * (1.15 - 0.8 * r)
        floor = c * rng.uniform(0.5, 0.85)
        img = np.where(is_ground, floor * (0.9 + 0.3 * (yy - hz)) + 0.02 * noise[..., None], img)
    else:  # abstract: two-colour gradient, stripes or checks, noise
        c1, c2 = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 1.0)), _hsv(
            rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 1.0)
        )
        ang = rng.uniform(0, math.pi)
        t = np.clip((xx * math.cos(ang) + yy * math.sin(ang) + 1) / 2.5, 0, 1)
        img[:] = c1 * (1 - t) + c2 * t
        pattern = rng.integers(0, 3)
        if pattern == 0:
            f, a2 = rng.uniform(8, 30), rng.uniform(0, math.pi)
            band = (np.sin((xx * math.cos(a2) + yy * math.sin(a2)) * f * 6.28) > 0).astype(np.float32)
            img = img * (1 - 0.25 * band)
        elif pattern == 1:
            n = int(rng.integers(6, 20))
            chk = ((np.floor(xx * n) + np.floor(yy * n * h / w)) % 2).astype(np.float32)  # square cells
            img = img * (0.85 + 0.2 * chk)
        img = img * (1 + 0.25 * noise[..., None])
    return np.clip(img, 0, 1).astype(np.float32), horizon, kind


# ----------------------------------------------------------------------------- car geometry


@dataclass
class _CarSpec:
    """A car's shape in local units: length 1, front at u=0, ground at v=0, v up."""

    kind: str
    r: float  # wheel radius
    xf: float  # front wheel centre u
    xr: float  # rear wheel centre u
    arch: float  # wheel-arch radius
    sill: float  # body bottom v
    belt: float  # window bottom v
    roof: float
    a: float  # windshield base u
    b: float  # roof front u
    c: float  # roof rear u
    d: float  # rear-glass base u
    deck: float  # rear-glass base v (trunk height)
    hood_front: float  # top of the front face v
    nose: float  # most-forward point v
    pillar: float  # pillar thickness
    c_pillar: float  # rear pillar thickness
    ws: float  # visible windshield strip width
    rws: float  # visible rear-windshield strip width
    profile: list[tuple[float, float]] = field(default_factory=list)
    window_cuts: list[float] = field(default_factory=list)  # u of the pillars between side windows
    doors: list[tuple[float, float]] = field(default_factory=list)  # (u0, u1) of front / back door
    trunk: bool = False
    cab_end: float = 0.0  # pickup only


def _car_spec(rng: np.random.Generator, kind: str) -> _CarSpec:
    """Random proportions for one car of a kind, with its outline control points."""
    U = rng.uniform
    big = kind in ("suv", "pickup")
    r = U(0.1, 0.12) if big else (U(0.085, 0.095) if kind == "van" else U(0.085, 0.105))
    xf = U(0.15, 0.17) if kind == "van" else U(0.17, 0.21)
    xr = U(0.78, 0.83)
    sill = r * U(0.5, 0.65)
    s = _CarSpec(
        kind=kind, r=r, xf=xf, xr=xr, arch=r * U(1.12, 1.2), sill=sill,
        belt=U(0.205, 0.23), roof=U(0.295, 0.33), a=U(0.28, 0.34), b=U(0.41, 0.46), c=U(0.63, 0.70),
        d=U(0.79, 0.84), deck=U(0.215, 0.235), hood_front=U(0.16, 0.18), nose=U(0.1, 0.125),
        pillar=U(0.014, 0.02), c_pillar=U(0.02, 0.035), ws=U(0.018, 0.03), rws=U(0.018, 0.03),
    )
    if kind == "hatchback":
        s.c, s.d, s.deck = U(0.74, 0.8), U(0.94, 0.96), s.roof - U(0.05, 0.07)
        s.c_pillar = U(0.04, 0.06)
    elif kind == "suv":
        s.roof, s.belt, s.hood_front, s.nose = U(0.35, 0.38), U(0.235, 0.26), U(0.2, 0.22), U(0.13, 0.15)
        s.a, s.b, s.c = U(0.27, 0.31), U(0.38, 0.42), U(0.9, 0.93)
        s.d, s.deck, s.c_pillar = U(0.975, 0.985), s.roof - U(0.07, 0.09), U(0.035, 0.05)
    elif kind == "coupe":
        s.roof, s.belt, s.a, s.b = U(0.26, 0.285), U(0.19, 0.205), U(0.32, 0.36), U(0.47, 0.51)
        s.c, s.d, s.deck, s.hood_front = U(0.6, 0.64), U(0.85, 0.88), U(0.2, 0.215), U(0.145, 0.16)
    elif kind == "pickup":
        s.roof, s.belt, s.hood_front, s.nose = U(0.33, 0.36), U(0.23, 0.25), U(0.2, 0.22), U(0.13, 0.15)
        s.a, s.b = U(0.28, 0.31), U(0.37, 0.4)
        s.cab_end = U(0.6, 0.66) if rng.random() < 0.6 else U(0.5, 0.54)
        s.c = s.cab_end - U(0.015, 0.025)
        s.d, s.deck, s.rws = s.cab_end, s.belt + 0.012, U(0.01, 0.016)
    elif kind == "van":
        s.roof, s.belt, s.hood_front, s.nose = U(0.38, 0.42), U(0.24, 0.26), U(0.2, 0.22), U(0.13, 0.15)
        s.a, s.b, s.c = U(0.13, 0.17), U(0.26, 0.3), U(0.95, 0.97)
        s.d, s.deck, s.c_pillar = U(0.985, 0.99), s.roof - U(0.03, 0.05), U(0.02, 0.03)

    # outline control points, front-bottom going over the roof to rear-bottom
    p: list[tuple[float, float]] = [
        (0.02, sill), (0.0, s.nose * 0.6), (-0.006, s.nose), (0.008, s.hood_front - 0.012),
        (0.05, s.hood_front), (s.a, s.belt - 0.004), (s.b, s.roof), (s.c, s.roof),
    ]
    if kind in ("sedan", "coupe"):
        p += [(s.d, s.deck), (0.975, s.deck - 0.002), (0.997, s.deck - 0.025), (1.0, 0.13)]
    elif kind == "pickup":
        p += [(s.cab_end, s.roof - 0.01), (s.cab_end, s.deck), (s.cab_end + 0.01, s.deck), (0.995, s.deck),
              (1.0, s.deck - 0.02), (1.0, 0.13)]
    else:
        p += [(s.d, s.deck), (0.995, s.deck - 0.04), (1.0, 0.13)]
    p += [(0.99, sill)]
    s.profile = p

    bpil = U(0.5, 0.55) if kind != "van" else U(0.36, 0.42)
    front_door_start = max(s.xf + s.arch * 0.95, s.a - 0.01)
    if kind == "coupe" or (kind == "pickup" and s.cab_end < 0.56):
        bpil = s.c - U(0.0, 0.03) if kind == "coupe" else s.c - 0.02
        s.window_cuts = [] if kind == "pickup" else [bpil]
        s.doors = [(front_door_start, bpil)]
    else:
        s.window_cuts = [bpil]
        rear_end = min(s.xr - s.arch * 0.55, s.c - 0.02) if kind in ("sedan", "hatchback") else s.xr - s.arch * 0.55
        if kind == "pickup":
            rear_end = s.cab_end - 0.015
        if kind == "van":
            rear_end = bpil + U(0.2, 0.26)
        s.doors = [(front_door_start, bpil), (bpil, rear_end)]
        if kind in ("suv", "van"):
            s.window_cuts.append(rear_end + 0.01 if kind == "suv" else rear_end)
    s.trunk = kind in ("sedan", "coupe")
    return s


# ----------------------------------------------------------------------------- drawing


@dataclass
class _Instance:
    """A painted part instance: its category, car, and the image region it may cover."""

    category: str
    car: int
    roi: tuple[int, int, int, int]  # y0, y1, x0, x1 (clipped to the image)


class _Canvas:
    """The image being drawn (float RGB) and its owner map (part instance per pixel, -1 = none)."""

    def __init__(self, rgb: np.ndarray) -> None:
        self.rgb = rgb
        self.owner = np.full(rgb.shape[:2], -1, np.int32)
        self.instances: list[_Instance] = []

    def paint(self, roi: tuple[int, int, int, int], mask: np.ndarray, colours: np.ndarray,
              category: str | None, car: int) -> None:
        """Colour ``mask`` (ROI-shaped) with ``colours`` (one row per masked pixel); own it if ``category``."""
        y0, y1, x0, x1 = roi
        if not mask.any():
            return
        self.rgb[y0:y1, x0:x1][mask] = colours
        if category is not None:
            self.owner[y0:y1, x0:x1][mask] = len(self.instances)
            self.instances.append(_Instance(category, car, roi))


@dataclass
class _Layer:
    """One part instance to paint: its mask (work-ROI shaped) and how to colour its pixels."""

    category: str
    mask: np.ndarray
    colour: Callable[[np.ndarray], np.ndarray]  # mask -> (n, 3) colours of its pixels
    outline: float = 0.75  # rim darkening factor (cartoon outline)
    seam: bool = False  # draw a dark panel gap around it on the body
    band: np.ndarray | None = None  # 3/4 view: its swept-surface pixels, coloured from the band image


_SWEEPS = ("hood", "trunk", "windshield", "rear_windshield", "front_bumper", "back_bumper", "headlight", "taillight")


class _CarPainter:
    """Draws one car: local geometry → part masks (layers) → shaded, owned pixels on the canvas.

    Local coordinates: length 1, front at u=0, ground at v=0, v up. A 3/4 view is an
    oblique extrusion: the side profile swept by ``depth`` toward the front and up,
    which reveals the hood, windshield, roof and front face (each joins its part).
    """

    def __init__(self, canvas: _Canvas, rng: np.random.Generator, spec: _CarSpec, ox: float, gy: float,
                 scale: float, facing_left: bool, car_index: int, noise: np.ndarray,
                 depth: tuple[float, float] = (0.0, 0.0)) -> None:
        self.cv, self.rng, self.s = canvas, rng, spec
        self.ox, self.gy, self.sc, self.left, self.car = ox, gy, scale, facing_left, car_index
        self.depth = depth  # (du, dv) of the far side in local units; (0, 0) = pure side view
        du, dv = depth
        h, w = canvas.owner.shape
        xs = [ox + scale * (u if facing_left else 1.0 - u) for u in (-0.03 + min(0.0, du), 1.03)]
        y0, y1 = int(math.floor(gy - scale * (spec.roof + 0.03 + dv))) - 3, int(math.ceil(gy + 0.02 * scale)) + 3
        x0, x1 = int(math.floor(min(xs))) - 3, int(math.ceil(max(xs))) + 3
        self.roi = (y0, y1, x0, x1)  # the work region; may reach outside the image
        X, Y = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        u = (X - ox) / scale
        self.u = u if facing_left else 1.0 - u
        self.v = (gy - Y) / scale
        self.clip = (max(0, y0), min(h, y1), max(0, x0), min(w, x1))  # the part inside the image
        cy0, cy1, cx0, cx1 = self.clip
        self.inside = (slice(cy0 - y0, max(cy0 - y0, cy1 - y0)), slice(cx0 - x0, max(cx0 - x0, cx1 - x0)))
        self.noise = np.zeros(self.u.shape, np.float32)
        if cy1 > cy0 and cx1 > cx0:
            self.noise[self.inside] = noise[cy0:cy1, cx0:cx1]
        self.rim = max(1, int(round(scale / 260)))
        self.gap = max(1, int(round(scale / 300)))
        self.band_rgb = np.zeros(self.u.shape + (3,), np.float32)

    # geometry -------------------------------------------------------------
    def poly(self, pts: np.ndarray | list[tuple[float, float]]) -> np.ndarray:
        """Rasterize a local-coordinate polygon into a work-ROI mask."""
        p = np.asarray(pts, np.float64)
        x = self.ox + self.sc * (p[:, 0] if self.left else 1.0 - p[:, 0])
        y = self.gy - self.sc * p[:, 1]
        y0, _, x0, _ = self.roi
        q = np.round(np.stack([x - x0, y - y0], axis=1) * 16).astype(np.int32)
        m = np.zeros(self.u.shape, np.uint8)
        cv2.fillPoly(m, [q], 1, lineType=cv2.LINE_8, shift=4)
        return m.astype(bool)

    def disk(self, cu: float, cv_: float, rad: float) -> np.ndarray:
        return (self.u - cu) ** 2 + (self.v - cv_) ** 2 <= rad * rad

    @staticmethod
    def line_v(u0: float, v0: float, u1: float, v1: float, u: np.ndarray | float) -> np.ndarray | float:
        """v of the straight line through (u0, v0), (u1, v1) at ``u``."""
        return v0 + (v1 - v0) * (u - u0) / (u1 - u0 if u1 != u0 else 1e-6)

    @staticmethod
    def erode(m: np.ndarray, px: int) -> np.ndarray:
        return cv2.erode(m.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)

    @staticmethod
    def dilate(m: np.ndarray, px: int) -> np.ndarray:
        return cv2.dilate(m.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)

    # shading (1-D arrays of the pixels to colour) -------------------------
    def paint_shade(self, u: np.ndarray, v: np.ndarray, n: np.ndarray, gain: float | np.ndarray = 1.0) -> np.ndarray:
        """Car paint: darker low, specular shoulder and roof lines, soft sheen and noise."""
        s = self.s
        t = np.clip((v - s.sill) / (s.roof - s.sill), 0, 1)
        shade = (0.6 + 0.5 * t) * gain * (1 + 0.05 * n) + 0.06 * np.cos(6.28 * (u * 1.4 + self.phase))
        col = self.paint[None, :] * shade[:, None]
        hi = 0.55 * np.exp(-(((v - (s.belt - 0.014)) / 0.009) ** 2)) + 0.25 * np.exp(
            -(((v - (s.roof - 0.01)) / 0.012) ** 2))
        lo = 0.25 * np.exp(-(((v - (s.sill + 0.03)) / 0.012) ** 2))
        return col + hi[:, None] * (1.0 - col) - lo[:, None] * col

    def glass_shade(self, u: np.ndarray, v: np.ndarray, n: np.ndarray, gain: float = 1.0) -> np.ndarray:
        """Tinted glass with a soft vertical gradient and diagonal reflection streaks."""
        t = np.clip((v - self.s.belt) / (self.s.roof - self.s.belt), 0, 1)
        col = self.glass[None, :] * ((0.75 + 0.6 * t[:, None]) * gain) * (1 + 0.06 * n[:, None])
        w_ = (u * 3.0 + v * 2.2 + self.phase) % 1.0
        streak = np.exp(-(((w_ - 0.35) / 0.06) ** 2)) * 0.35 + np.exp(-(((w_ - 0.5) / 0.02) ** 2)) * 0.2
        return col + streak[:, None] * (0.95 - col)

    def plastic_shade(self, v: np.ndarray, n: np.ndarray, gain: float = 1.0) -> np.ndarray:
        t = np.clip((v - self.s.sill) / 0.1, 0, 1)
        return self.plastic[None, :] * ((0.75 + 0.45 * t[:, None]) * gain) * (1 + 0.08 * n[:, None])

    def bumper_shade(self, u: np.ndarray, v: np.ndarray, n: np.ndarray, gain: float = 1.0) -> np.ndarray:
        return self.paint_shade(u, v, n, 0.95 * gain) if self.bumper_paint else self.plastic_shade(v, n, gain)

    @staticmethod
    def light_shade(u: np.ndarray, v: np.ndarray, inner: np.ndarray, outer: np.ndarray, cu: float, cv_: float,
                    size: float) -> np.ndarray:
        t = np.clip(np.sqrt((u - cu) ** 2 + (v - cv_) ** 2) / max(size, 1e-6), 0, 1)[:, None]
        return inner[None, :] * (1 - t) + outer[None, :] * t

    def headlight_shade(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.light_shade(u, v, np.array([1.0, 1.0, 0.93]), np.array([0.75, 0.75, 0.7]), 0.0,
                                self.s.hood_front - 0.025, 0.07)

    def wheel_shade(self, u: np.ndarray, v: np.ndarray, n: np.ndarray, cu: float, cv_: float,
                    gain: float = 1.0) -> np.ndarray:
        """Tyre, rim lip, spokes and hub by radius and angle."""
        du, dv = u - cu, v - cv_
        rn = np.sqrt(du * du + dv * dv) / self.s.r
        ang = np.arctan2(dv, du)
        tyre = 0.1 + 0.07 * np.clip((1 - rn) * 3, 0, 1) + 0.02 * n
        col = np.repeat(tyre[:, None], 3, axis=1)
        rim_r = self.rim_ratio
        light = np.clip(0.55 + 0.35 * np.sin(ang + 0.8) * 0.5 + 0.1 * n, 0, 1)
        metal = self.rim_col[None, :] * (0.7 + 0.5 * light[:, None])
        spokes = np.cos(self.n_spokes * (ang - self.spin)) > self.spoke_cut
        in_rim = rn < rim_r
        lip = in_rim & (rn > rim_r - 0.07)
        deep = in_rim & ~spokes & (rn > 0.2) & ~lip
        col = np.where(in_rim[:, None], metal, col)
        col = np.where(deep[:, None], metal * 0.25, col)
        col = np.where(lip[:, None], np.clip(metal * 1.25, 0, 1), col)
        col = np.where((rn < 0.18)[:, None], metal * 0.8, col)
        col = np.where((rn < 0.07)[:, None], metal * 0.4, col)
        return col * gain

    def at(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.u[m], self.v[m], self.noise[m]

    # painting -------------------------------------------------------------
    def own(self, layer: _Layer) -> None:
        """Paint a layer (its rim darkened for a cartoon outline) and own the pixels inside the image."""
        m = layer.mask
        if not m.any():
            return
        colours = layer.colour(m)
        if layer.band is not None:
            band = layer.band[m]
            colours[band] = self.band_rgb[m][band]
        edge = (m & ~self.erode(m, self.rim))[m]
        colours = np.clip(np.where(edge[:, None], colours * layer.outline, colours), 0, 1)
        vis = np.zeros_like(m)
        vis[self.inside] = m[self.inside]
        if not vis.any():
            return
        if layer.seam:
            self.seam(vis)
        if layer.category == "body":
            self.body_id = len(self.cv.instances)  # the instance the panel seams darken
        self.cv.paint(self.clip, vis[self.inside], colours[vis[m]], layer.category, self.car)

    def seam(self, vis: np.ndarray) -> None:
        """Darken a gap around a panel on this car's (already painted) body: the panel line."""
        cy0, cy1, cx0, cx1 = self.clip
        ring = (self.dilate(vis, self.gap) & ~vis)[self.inside] & (self.cv.owner[cy0:cy1, cx0:cx1] == self.body_id)
        if ring.any():
            self.cv.rgb[cy0:cy1, cx0:cx1][ring] *= 0.45

    def shadow(self) -> None:
        """A soft ground shadow under the car (and its depth), on background pixels only."""
        du, dv = self.depth
        cu, cv_ = 0.5 + du / 2, dv / 2
        k = np.clip(1.0 - ((self.u - cu) / 0.58) ** 2 - ((self.v - cv_) / (0.03 + dv / 2 + 1.0 / self.sc)) ** 2,
                    0, 1) * 0.6
        cy0, cy1, cx0, cx1 = self.clip
        if cy1 <= cy0 or cx1 <= cx0:
            return
        free = self.cv.owner[cy0:cy1, cx0:cx1] < 0
        self.cv.rgb[cy0:cy1, cx0:cx1] *= (1 - k[self.inside] * free)[..., None]

    def shift(self, m: np.ndarray, dx: int, dy: int) -> np.ndarray:
        """``m`` moved by (dx, dy) pixels inside the work ROI."""
        out = np.zeros_like(m)
        h, w = m.shape
        if abs(dx) >= w or abs(dy) >= h:
            return out
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = m[max(-dy, 0) : h - max(dy, 0),
                                                                          max(-dx, 0) : w - max(dx, 0)]
        return out

    # the car --------------------------------------------------------------
    def draw(self) -> None:
        """Choose materials, build the part layers, add the 3/4 surfaces if any, paint."""
        s, rng = self.s, self.rng
        self.phase = float(rng.uniform(0, 1))
        style = rng.random()
        if style < 0.15:
            self.paint = _hsv(rng.random(), rng.uniform(0, 0.08), rng.uniform(0.85, 0.97))  # white
        elif style < 0.27:
            self.paint = _hsv(rng.random(), rng.uniform(0, 0.1), rng.uniform(0.15, 0.28))  # black
        elif style < 0.4:
            self.paint = _hsv(rng.random(), rng.uniform(0, 0.06), rng.uniform(0.55, 0.75))  # silver
        else:
            self.paint = _hsv(rng.random(), rng.uniform(0.5, 0.95), rng.uniform(0.5, 0.9))
        self.glass = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.2, 0.5), rng.uniform(0.22, 0.38))
        self.plastic = _hsv(rng.uniform(0, 1), 0.05, rng.uniform(0.12, 0.22))
        self.bumper_paint = bool(rng.random() < 0.6)
        self.rim_col = _hsv(rng.uniform(0, 1), rng.uniform(0, 0.08), rng.uniform(0.6, 0.9))
        if rng.random() < 0.15:
            self.rim_col = _hsv(0, 0, 0.25)  # dark alloys
        self.n_spokes, self.spin = int(rng.integers(4, 8)), float(rng.uniform(0, 6.28))
        self.spoke_cut, self.rim_ratio = float(rng.uniform(-0.3, 0.5)), float(rng.uniform(0.55, 0.7))
        amber_tail = bool(rng.random() < 0.4)
        painted_mirror = bool(rng.random() < 0.6)

        layers = self.side_layers(amber_tail, painted_mirror)
        far_wheels: list[_Layer] = []
        if self.depth != (0.0, 0.0):
            far_wheels = self.add_depth(layers)
        self.shadow()
        self.body_id = -2  # set when the body is painted
        for layer in far_wheels + layers:
            self.own(layer)

    def side_layers(self, amber_tail: bool, painted_mirror: bool) -> list[_Layer]:
        """The side view's part layers in paint order (later ones cover earlier ones)."""
        s = self.s
        u, v = self.u, self.v
        layers: list[_Layer] = []
        wheels = [s.xf, s.xr]
        arches = [self.disk(x, s.r + 0.006, s.arch) for x in wheels]
        outline = self.poly(_smooth(s.profile, 3))
        silhouette = outline.copy()
        for a in arches:
            silhouette &= ~a | (v > s.r + 0.006 + s.arch)
        self.silhouette = silhouette
        body = silhouette & (v > 0.0)
        well = np.zeros_like(body)
        for a in arches:
            well |= a & outline & (v > s.sill * 0.4)
        self.well = well

        def body_colour(m: np.ndarray) -> np.ndarray:
            col = self.paint_shade(*self.at(m))
            return np.where(well[m][:, None], col * 0.15 + 0.02, col)

        layers.append(_Layer("body", body | well, body_colour, 0.5))
        inner = self.erode(body, self.gap + 1)

        def paint_fn(gain: float) -> Callable[[np.ndarray], np.ndarray]:
            return lambda m: self.paint_shade(*self.at(m), gain)

        hood_seam = self.line_v(0.015, s.hood_front - 0.03, s.a, s.belt - 0.018, u)
        layers.append(_Layer("hood", (u < s.a - 0.01) & (v > hood_seam) & inner, paint_fn(1.03), 0.8, True))
        if s.trunk:
            trunk_seam = self.line_v(s.d, s.deck - 0.02, 0.995, s.deck - 0.035, u)
            layers.append(_Layer("trunk", (u > s.d + 0.008) & (v > trunk_seam) & inner, paint_fn(1.03), 0.8, True))
        for i, (d0, d1) in enumerate(s.doors):
            m = (u > d0) & (u < d1 - 0.003) & (v > s.sill + 0.012) & (v < s.belt - 0.006) & inner
            for a_ in arches:
                m &= ~self.dilate(a_, self.gap * 2)

            def door_colour(m: np.ndarray, d1: float = d1, gain: float = 1.0 - 0.02 * i) -> np.ndarray:
                uu, vv, nn = self.at(m)
                c = self.paint_shade(uu, vv, nn, gain)
                handle = (np.abs(uu - (d1 - 0.05)) < 0.018) & (np.abs(vv - (s.belt - 0.03)) < 0.005)
                return np.where(handle[:, None], c * 0.55, c)

            layers.append(_Layer("front_door" if i == 0 else "back_door", m, door_colour, 0.8, True))
        bump_top = s.nose - 0.01
        for cat, side in (("front_bumper", u < s.xf - s.arch * 0.8), ("back_bumper", u > s.xr + s.arch * 0.8)):
            m = side & (v < bump_top) & inner
            for a_ in arches:
                m &= ~self.dilate(a_, self.gap)
            layers.append(_Layer(cat, m, lambda m: self.bumper_shade(*self.at(m)), 0.8, True))

        def glass_colour(m: np.ndarray) -> np.ndarray:
            return self.glass_shade(*self.at(m))

        in_sil = self.erode(silhouette, 1)
        top_in = s.roof - s.pillar
        wa = self.line_v(s.belt, s.a, s.roof, s.b, v)  # u on the A line at v
        ws = silhouette & (u < wa + s.ws) & (v > s.belt + 0.004) & (v < s.roof - 0.006) & (u < s.b + s.ws)
        layers.append(_Layer("windshield", ws & in_sil, glass_colour, 0.7))
        if s.kind == "pickup":
            rw = silhouette & (u > s.cab_end - s.rws) & (v > s.belt + 0.02) & (v < s.roof - 0.02)
        else:
            wd = self.line_v(s.roof, s.c, s.deck, s.d, v)
            rw = silhouette & (u > wd - s.rws) & (v > s.deck + 0.003) & (v < s.roof - 0.006) & (u > s.c - s.rws)
        layers.append(_Layer("rear_windshield", rw & in_sil, glass_colour, 0.7))
        off_f = s.ws + s.pillar
        bu = self.line_v(s.belt, s.a, s.roof, s.b, s.belt + 0.006) + off_f
        tu = self.line_v(s.belt, s.a, s.roof, s.b, top_in) + off_f
        if s.kind == "pickup":
            cu_top = cu_bot = s.cab_end - s.rws - s.c_pillar * 0.6
        else:
            cu_top = self.line_v(s.roof, s.c, s.deck, s.d, top_in) - s.rws - s.c_pillar
            cu_bot = min(self.line_v(s.roof, s.c, s.deck, s.d, s.belt + 0.006) - s.rws - s.c_pillar,
                         0.96 - s.c_pillar)
        greenhouse = self.poly(_smooth([(bu, s.belt + 0.006), (tu, top_in), (cu_top, top_in),
                                        (cu_bot, s.belt + 0.006)], 2)) & silhouette
        cuts = [-1.0] + list(s.window_cuts) + [2.0]
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            m = greenhouse & (u > lo + s.pillar / 2) & (u < hi - s.pillar / 2)
            layers.append(_Layer("window", m, glass_colour, 0.75))
        hl_v = s.hood_front - 0.025
        hl = self.poly(_smooth([(-0.02, hl_v + 0.012), (0.07, hl_v + 0.008), (0.062, hl_v - 0.014),
                                (-0.02, hl_v - 0.016)], 2)) & self.erode(silhouette, self.rim)
        layers.append(_Layer("headlight", hl, lambda m: self.headlight_shade(self.u[m], self.v[m]), 0.6))
        tl_v = (s.deck if s.kind != "van" else 0.2) - 0.035
        tl = self.poly(_smooth([(0.95, tl_v + 0.02), (1.02, tl_v + 0.02), (1.02, tl_v - 0.02),
                                (0.965, tl_v - 0.018)], 2)) & self.erode(silhouette, self.rim)
        outer = np.array([1.0, 0.55, 0.1]) if amber_tail else np.array([0.55, 0.02, 0.02])
        layers.append(_Layer("taillight", tl, lambda m: self.light_shade(
            self.u[m], self.v[m], np.array([1.0, 0.3, 0.2]), outer, 1.0, tl_v, 0.06), 0.6))
        mu0, mv0 = bu - 0.01, s.belt - 0.004
        mirror = self.poly(_smooth([(mu0, mv0), (mu0 + 0.045, mv0 + 0.004), (mu0 + 0.04, mv0 + 0.032),
                                    (mu0 - 0.004, mv0 + 0.028)], 2))
        layers.append(_Layer("mirror", mirror, (lambda m: self.paint_shade(*self.at(m), 1.05)) if painted_mirror
                             else (lambda m: self.plastic_shade(self.v[m], self.noise[m])), 0.5))
        for x in wheels:
            m = self.disk(x, s.r, s.r) & (v >= -0.004)
            layers.append(_Layer("wheel", m, lambda m, x=x: self.wheel_shade(*self.at(m), x, s.r), 0.7))
        return layers

    def add_depth(self, layers: list[_Layer]) -> list[_Layer]:
        """3/4 view: sweep the side profile toward the front and up; each swept pixel joins the part
        it was swept from (hood top, windshield, roof, front face, bumper, lights). Returns the far
        wheels, painted first."""
        s = self.s
        du, dv = self.depth
        dx = du * self.sc * (1.0 if self.left else -1.0)
        dy = -dv * self.sc
        lab = np.full(self.u.shape, -1, np.int32)
        for i, layer in enumerate(layers):
            if layer.category not in ("wheel", "mirror"):
                lab[layer.mask] = i
        swept = lab >= 0
        # the surfaces that sweep: grow each outer part over the thin body rim around it
        for i, layer in enumerate(layers):
            if layer.category in _SWEEPS:
                lab[self.dilate(layer.mask, self.gap + 2) & swept] = i
        steps = max(1, min(40, int(math.ceil(max(abs(dx), abs(dy))))))  # shifts of <= 2 px cover the band
        kmap = np.full(self.u.shape, -1, np.int32)
        for k in range(steps, 0, -1):
            kmap[self.shift(swept, int(round(dx * k / steps)), int(round(dy * k / steps)))] = k
        band = (kmap > 0) & ~swept
        if not band.any():
            return []
        ys, xs = np.nonzero(band)
        k = kmap[ys, xs]
        t = k / steps
        py = ys - np.round(dy * k / steps).astype(np.int64)
        px = xs - np.round(dx * k / steps).astype(np.int64)
        src = lab[py, px]
        up, vp, n = self.u[py, px], self.v[py, px], self.noise[ys, xs]
        uu, vv = self.u[ys, xs], self.v[ys, xs]
        cats = np.array([layers[i].category for i in range(len(layers))])[src]
        rgb = np.zeros((len(ys), 3), np.float32)
        top = vp > s.belt - 0.01
        # body: lit roof and pillars; the front face darker, with a grille between the headlights
        is_body = cats == "body"
        rgb[is_body] = self.paint_shade(up[is_body], vp[is_body], n[is_body], 1.0)
        rgb[is_body & top] = self.paint_shade(uu[is_body & top], np.full((is_body & top).sum(), s.roof - 0.03),
                                              n[is_body & top], 1.12)
        face = is_body & (up < 0.12) & ~top
        grille = face & (t > 0.18) & (t < 0.82) & (vp > s.nose - 0.012) & (vp < s.hood_front - 0.012)
        rgb[face] *= 0.8
        slats = ((vp[grille] * self.sc / max(2.0, self.sc * 0.008)) % 1.0) < 0.5
        rgb[grille] = self.plastic[None, :] * np.where(slats[:, None], 0.6, 1.5)
        # headlights: near and far ends of the swept headlight; between them, grille
        is_hl = cats == "headlight"
        far_hl = is_hl & (t > 0.8)
        mid_hl = is_hl & (t >= 0.2) & (t <= 0.8)
        rgb[is_hl] = self.headlight_shade(up[is_hl], vp[is_hl])
        rgb[mid_hl] = self.plastic[None, :] * 0.8
        for cat, gain in (("hood", 1.15), ("trunk", 1.15), ("front_bumper", 0.8), ("back_bumper", 0.8)):
            sel = cats == cat
            if sel.any():
                if cat in ("hood", "trunk"):  # a top surface: flat v (no side highlights), lit across
                    flat = np.full(int(sel.sum()), s.belt + 0.012)
                    rgb[sel] = self.paint_shade(uu[sel], flat, n[sel], gain + 0.1 * (0.5 - t[sel]))
                else:
                    rgb[sel] = self.bumper_shade(up[sel], vp[sel], n[sel], gain)
        for cat in ("windshield", "rear_windshield", "window"):
            sel = cats == cat
            if sel.any():
                rgb[sel] = self.glass_shade(uu[sel], vv[sel], n[sel], 1.25)
        rest = ~np.isin(cats, ["body", "headlight", "hood", "trunk", "front_bumper", "back_bumper", "windshield",
                               "rear_windshield", "window"])
        if rest.any():
            rgb[rest] = self.paint_shade(up[rest], vp[rest], n[rest], 0.9)
        crease = k <= self.rim  # the fold between side and top/front surfaces
        rgb[crease] *= 0.8
        self.band_rgb[ys, xs] = rgb
        # the swept pixels join their parts; the middle of the swept headlight is body (grille)
        body_index = int(np.nonzero(np.array([layer.category == "body" for layer in layers]))[0][0])
        dest = np.where(mid_hl, body_index, src)
        for i in np.unique(dest[~far_hl]):
            sel = (dest == i) & ~far_hl
            layers[i].mask[ys[sel], xs[sel]] = True
            layers[i].band = np.zeros(self.u.shape, bool)
            layers[i].band[ys[sel], xs[sel]] = True
        if far_hl.any():
            m = np.zeros(self.u.shape, bool)
            m[ys[far_hl], xs[far_hl]] = True
            first_wheel = next(i for i, layer in enumerate(layers) if layer.category == "wheel")
            layers.insert(first_wheel, _Layer("headlight", m, lambda m: self.headlight_shade(self.u[m], self.v[m]),
                                              0.6, band=m.copy()))
        far = []
        for x in (s.xf, s.xr):
            m = self.disk(x + du, s.r + dv, s.r)
            far.append(_Layer("wheel", m, lambda m, x=x: self.wheel_shade(*self.at(m), x + du, s.r + dv, 0.7), 0.7))
        return far


# ----------------------------------------------------------------------------- one image


def _domain_look(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Domain "b"'s camera: a strong colour cast (hue rotated 40–140° about the grey axis), lower contrast and
    heavier sensor grain, on the whole float image (cars included): textures the "a" domain never shows."""
    angle = np.deg2rad(rng.uniform(40, 140)) * (1 if rng.random() < 0.5 else -1)
    c, s, k = np.cos(angle), np.sin(angle), 1 / np.sqrt(3)
    axis = np.array([k, k, k])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = c * np.eye(3) + s * cross + (1 - c) * np.outer(axis, axis)
    out = rgb @ rot.T.astype(np.float32)
    mean = out.mean(axis=(0, 1), keepdims=True)
    out = mean + (out - mean) * rng.uniform(0.55, 0.8)
    return out + (rng.random(out.shape[:2] + (1,), dtype=np.float32) - 0.5) * 0.12


def _render_image(rng: np.random.Generator, width: int, height: int,
                  domain: str | None = None) -> tuple[np.ndarray, np.ndarray, list[_Instance], dict]:
    """Draw one scene; returns (uint8 RGB, owner map, part instances, scene facts)."""
    noise = _fractal_noise(rng, height, width)
    bg, horizon, bg_kind = _background(rng, height, width, noise, domain)
    canvas = _Canvas(bg)
    n_cars = int(rng.choice([1, 2, 3], p=[0.5, 0.32, 0.18]))
    cars = []
    for i in range(n_cars):
        if n_cars == 1:  # 15%..90% of the width, skewed large: a styled car should be seen
            frac = 0.15 + 0.75 * float(rng.random()) ** 0.6
        else:
            frac = rng.uniform(0.35, 0.7) if i == 0 else rng.uniform(0.15, 0.6)
        scale = float(frac * width)
        nearness = 0.2 + 0.8 * (frac - 0.15) / 0.75  # bigger cars stand lower in the frame
        gy = horizon + (height - horizon) * float(np.clip(nearness * rng.uniform(0.85, 1.05), 0.15, 0.98))
        gy = float(np.clip(gy, 0.4 * scale, height - 2))
        if i > 0 and rng.random() < 0.6:  # overlap an earlier car: occlusion
            prev = cars[int(rng.integers(0, len(cars)))]
            ox = prev[1] + prev[3] * rng.uniform(-0.5, 0.6)
            ox = float(np.clip(ox, -0.3 * scale, width - 0.7 * scale))
        else:
            ox = rng.uniform(-0.12 * scale, width - 0.88 * scale)
        cars.append((str(rng.choice(CAR_KINDS, p=[0.26, 0.2, 0.2, 0.12, 0.12, 0.1])), float(ox), gy, scale,
                     bool(rng.random() < 0.5)))
    cars.sort(key=lambda c: c[2])  # far (higher ground line) first, so near cars occlude them
    views: list[str] = []
    for k, (kind, ox, gy, scale, left) in enumerate(cars):
        spec = _car_spec(rng, kind)
        depth = (0.0, 0.0)
        if rng.random() < THREE_QUARTER:
            d, ang = rng.uniform(0.13, 0.2), rng.uniform(0.35, 0.6)
            depth = (-d * math.cos(ang), d * math.sin(ang))
        views.append("three_quarter" if depth != (0.0, 0.0) else "side")
        _CarPainter(canvas, rng, spec, ox, gy, scale, left, k, noise, depth).draw()
    grain = (rng.random((height, width, 1), dtype=np.float32) - 0.5) * 0.045
    look = _domain_look(rng, canvas.rgb) if domain == "b" else canvas.rgb
    rgb = np.clip((look + grain) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    facts = {"background": bg_kind, "cars": [{"kind": c[0], "facing": "left" if c[4] else "right", "view": view}
                                           for c, view in zip(cars, views)]}
    return rgb, canvas.owner, canvas.instances, facts


# ----------------------------------------------------------------------------- dataset


def _remove_stale_images(images_dir: Path) -> None:
    """Delete this generator's own files (``NNNNNN.jpg|png``) left by an earlier run, so the folder matches the JSON."""
    for p in images_dir.iterdir():
        stem, _, ext = p.name.partition(".")
        if ext in ("jpg", "png") and len(stem) == 6 and stem.isdigit() and p.is_file():
            p.unlink()


def generate(out_dir: str | Path, n_images: int, seed: int, width: int = 512, height: int = 384,
             domain: str | None = None) -> SynthDataset:
    """Write ``n_images`` synthetic car-part images and their COCO files under ``out_dir``.

    Image ``k`` is drawn from ``numpy.random.default_rng([seed, k])``, so the same seed
    gives byte-identical files and a larger ``n_images`` only appends images. ``domain`` (``"a"`` or
    ``"b"``, :data:`DOMAINS`) draws every image from one family of backgrounds and camera looks, for
    domain-shift experiments: train on ``a``, test on ``b`` (None: all families, the default mix).
    """
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)} (or None), got {domain!r}")
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    if width < 16 or height < 16:
        raise ValueError(f"images must be at least 16x16, got {width}x{height}")
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_images(images_dir)
    images: list[dict] = []
    annotations: list[dict] = []
    boxes: list[dict] = []
    for k in range(n_images):
        rng = np.random.default_rng([seed, k])
        image_id = k + 1
        rgb, owner, instances, facts = _render_image(rng, width, height, domain)
        as_png = rng.integers(0, PNG_EVERY) == 0
        rle_parts = {"wheel"} if rng.random() < 0.3 else set()
        if rng.random() < 0.15:
            rle_parts.add("window")
        name = f"{image_id:06d}.{'png' if as_png else 'jpg'}"
        pil = Image.fromarray(rgb)
        if as_png:
            pil.save(images_dir / name, format="PNG", compress_level=1)
        else:
            pil.save(images_dir / name, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height, "license": 1,
                       "background": facts["background"], "cars": facts["cars"]})
        for inst_id, inst in enumerate(instances):
            y0, y1, x0, x1 = inst.roi
            m = owner[y0:y1, x0:x1] == inst_id
            if not m.any():
                continue  # fully hidden by something drawn later
            rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
            by0, by1, bx0, bx1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            tight = m[by0:by1, bx0:bx1]
            bbox = [float(x0 + bx0), float(y0 + by0), float(bx1 - bx0), float(by1 - by0)]
            crowd = inst.category in rle_parts
            if crowd:
                full = np.zeros((height, width), bool)
                full[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1] = tight
                seg: list | dict = _encode_rle(full)
            else:
                seg = mask_to_polygons(tight, x0 + bx0, y0 + by0)
            area = float(np.count_nonzero(tight))
            ann_id = len(annotations) + 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": _CAT_ID[inst.category],
                   "segmentation": seg, "area": area, "bbox": bbox,
                   "iscrowd": int(crowd), "attributes": {"car": inst.car}}
            annotations.append(ann)
            boxes.append({**ann, "segmentation": [], "area": float(bbox[2] * bbox[3]), "iscrowd": 0})
    info = {"description": "nstray synthetic vehicle parts", "version": "1.0", "contributor": "nstray",
            "url": "", "generator": {"seed": seed, "images": n_images, "width": width, "height": height}}
    licenses = [{"id": 1, "name": "CC0 1.0 (synthetic)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    ann_path, box_path = root / "annotations.json", root / "annotations_boxes.json"
    for path, anns in ((ann_path, annotations), (box_path, boxes)):
        doc = {"info": info, "licenses": licenses, "images": images, "annotations": anns, "categories": CATEGORIES}
        path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return SynthDataset(root=root, images_dir=images_dir, annotations=ann_path, annotations_boxes=box_path)
