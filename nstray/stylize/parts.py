"""Per-part styling: every annotated part (and the background) its own style, in one pass per network.

:class:`PartStylizer` loads once the networks a plan needs (the 26-style CIN network, the
arbitrary-style predictor + transformer, each trained ``feedforward`` checkpoint through
:func:`nstray.stylize.feedforward.build_feedforward` from its checkpoint dict), predicts the style vectors of the plan's style
images once (handed in as arrays: ``assets=`` :func:`nstray.assets.load_plan_assets`), and then styles images:

1. each part's style is drawn from the plan (:meth:`Plan.choose`, deterministic);
2. **one forward pass per network** styles all the parts that use it: a per-pixel style map
   (multi-style weights; arbitrary-style vectors + masks) built from the label map. Pixels
   outside that network's parts take the style of the *nearest* such part, so a part's edge
   sees its own style on both sides (clean edges; what they get is discarded by compositing).
   A trained feed-forward checkpoint has a single style: its pass styles the whole frame;
3. parts with ``scale > 1`` are styled at a larger working size instead: their bounding box
   with context is cropped, upsampled by ``scale``, styled, and downsampled into place
   (finer strokes, proportionate to a small part). Each crop's working size is rounded up to
   a size ladder (32, 48, 64, 96, 128, 192, ...) by taking *more context* from the image, not by
   padding, so similar crops (all the wheels, all the lights) share one batch, and a crop's
   result never depends on what else is in the batch (reruns are reproducible);
4. :func:`nstray.compose.composite` blends the layers into the original by the region map with
   each part's feathered strength and colour preservation. Pixels outside every styled part are the
   input's bytes, untouched.

Nothing here knows Ray; the pipeline wraps this class in an actor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nstray import compose
from nstray.assets import PlanAssets
from nstray.plan import BACKGROUND, NONE, ArbitrarySpec, FeedforwardSpec, MultiStyleSpec, Plan, PartSpec

__all__ = ["StylizeError", "StylizeResult", "PartStylizer", "resolve_device"]


class StylizeError(ValueError):
    """Bad input to the stylizer (shapes, labels) or a plan it cannot run; the message says which."""


@dataclass
class StylizeResult:
    """The styled image (``uint8[H, W, 3]``) and the style each category present got (``none`` = untouched)."""

    image: np.ndarray
    styles: dict[str, str] = field(default_factory=dict)


@dataclass
class _Region:
    """One styled region of one image: a part (or the background) with its resolved style."""

    label: int  # label in the image's compact region map (0..R-1)
    category: str
    style: str
    spec: PartSpec
    kind: str  # the network: "multistyle" | "arbitrary" | "feedforward:<weights>" (one per checkpoint)


@dataclass
class _Crop:
    """A scaled region's crop request: where in which image, at which scale, with which style."""

    image: int
    region: int
    kind: str
    style: str
    center: tuple[float, float]  # (y, x) of the region's bbox centre
    size: tuple[int, int]  # (h, w) working size the crop is styled at (a ladder size, capped)
    scale: float  # effective scale (after the working-size cap)


@dataclass
class _Work:
    """Everything about one image of a batch between planning and compositing."""

    original: np.ndarray
    regions: list[_Region]
    region_map: np.ndarray  # int32 [H, W]: region label, -1 = not styled
    styles: dict[str, str]
    crops: dict[int, _Crop] = field(default_factory=dict)  # region label -> crop request (scaled regions)
    layers: dict[str, Tensor] = field(default_factory=dict)  # "multistyle"/"arbitrary"/"crops" -> [3,H,W]

    def unscaled(self, kind: str) -> list[_Region]:
        """Regions of ``kind`` styled in the full-frame pass (not through a crop)."""
        return [r for r in self.regions if r.kind == kind and r.label not in self.crops]


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """``cuda`` (or ``cuda:N``) when asked for and available; otherwise the CPU, with a warning if CUDA was asked for."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise StylizeError(f"unsupported device {str(device)!r}; valid: cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {str(device)!r} requested but CUDA is not available; running on the CPU", RuntimeWarning,
                      stacklevel=3)
        return torch.device("cpu")
    if dev.type not in ("cpu", "cuda"):
        raise StylizeError(f"unsupported device {str(device)!r}; valid: cpu, cuda, cuda:N")
    return dev


def _ladder_up(n: float) -> int:
    """The smallest working side >= ``n`` on the ladder 32, 48, 64, 96, 128, 192, 256, ... (2^k and 1.5·2^k).

    Crops are styled at ladder sizes (taking more context from the image to fill them), so crops of
    similar size share a batch without padding, and at most 1.5x extra pixels per side are spent.
    """
    v = 32
    while v < n:
        v = v * 3 // 2 if v & (v - 1) == 0 else v * 4 // 3
    return v


def _nearest_fill(region_map: np.ndarray, assigned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``region_map`` with every unassigned pixel given the label of the nearest assigned pixel,
    and each pixel's distance (px) to that assigned pixel (0 on assigned pixels)."""
    if assigned.all():
        return region_map, np.zeros(region_map.shape, dtype=np.float32)
    import cv2

    src = np.ascontiguousarray(~assigned).astype(np.uint8)
    dist, nearest = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    seeds = region_map[assigned]  # OpenCV numbers the zero pixels in raster order, as boolean indexing does
    return seeds[nearest - 1], dist


class PartStylizer:
    """Styles images part by part under a :class:`Plan`; load once, call many times.

    ``device``: ``"cpu"`` or ``"cuda"`` (falls back to the CPU with a warning).
    ``max_work_side``: the longest side a scaled crop may be styled at (caps ``scale`` on big parts).
    ``context``: the margin around a scaled part's box, as a fraction of the box's longer side.
    ``max_batch_pixels``: pixels per forward pass (batch × H × W), bounding memory.
    ``edge_band_px``: how far a part's style extends past its edge in the multi-style pass (None:
    everywhere); see :meth:`_style_maps`.
    ``assets``: the plan's style images and feed-forward checkpoints, already read
    (:func:`nstray.assets.load_plan_assets`); a plan that needs one that is missing is refused.
    """

    def __init__(
        self,
        plan: Plan,
        device: str | torch.device = "cpu",
        *,
        max_work_side: int = 1024,
        context: float = 0.25,
        max_batch_pixels: int = 8_000_000,
        edge_band_px: int | None = 16,
        assets: PlanAssets | None = None,
    ) -> None:
        self.plan = plan
        self.assets = assets if assets is not None else PlanAssets()
        self.device = resolve_device(device)
        self.max_work_side = int(max_work_side)
        self.context = float(context)
        self.max_batch_pixels = int(max_batch_pixels)
        self.edge_band_px = edge_band_px
        used = sorted(plan.used_styles())
        kinds = plan.kinds()
        self.multistyle = None
        self.transformer = None
        self._vectors: dict[str, Tensor] = {}
        if "multistyle" in kinds:
            from nstray.models.multistyle import multistyle26

            self.multistyle = multistyle26().to(self.device)
            for name in used:
                spec = plan.styles[name]
                if isinstance(spec, MultiStyleSpec):
                    self._vectors[name] = torch.tensor(spec.vector(), dtype=torch.float32, device=self.device)
        if "arbitrary" in kinds:
            from nstray.models.arbitrary import arbitrary_predictor, arbitrary_transformer

            self.transformer = arbitrary_transformer().to(self.device)
            predictor = arbitrary_predictor().to(self.device)  # needed only here: style vectors are cached
            for name in used:
                spec = plan.styles[name]
                if isinstance(spec, ArbitrarySpec):
                    self._vectors[name] = self._style_vector(predictor, spec)
            del predictor
        # trained checkpoints: one network per distinct weights URI, keyed "feedforward:<weights>"
        self.feedforward: dict[str, torch.nn.Module] = {}
        self._network_of: dict[str, str] = {}
        if "feedforward" in kinds:
            from nstray.stylize.feedforward import FeedforwardError, build_feedforward

            for name in used:
                spec = plan.styles[name]
                if isinstance(spec, FeedforwardSpec):
                    key = f"feedforward:{spec.weights}"
                    if key not in self.feedforward:
                        ckpt = self.assets.checkpoints.get(spec.weights)
                        if ckpt is None:
                            raise StylizeError(f"style {name}: its weights {spec.weights} are not loaded; pass "
                                               "assets=nstray.assets.load_plan_assets(plan)")
                        try:
                            self.feedforward[key] = build_feedforward(ckpt, spec.weights).to(self.device)
                        except FeedforwardError as exc:
                            raise StylizeError(f"style {name}: {exc}") from None
                    self._network_of[name] = key

    @torch.inference_mode()
    def _style_vector(self, predictor: torch.nn.Module, spec: ArbitrarySpec) -> Tensor:
        from nstray.models.arbitrary import blend, prepare_style_image

        vectors, weights = [], []
        for uri, weight in spec.images().items():
            if uri not in self.assets.images:
                raise StylizeError(f"style image {uri} is not loaded; pass assets=nstray.assets.load_plan_assets(plan)")
            img = torch.tensor(self.assets.images[uri], device=self.device).permute(2, 0, 1)[None].float() / 255.0
            vectors.append(predictor(prepare_style_image(img, spec.style_size))[0])
            weights.append(weight)
        return blend(vectors, weights)

    def style_vector(self, name: str) -> Tensor:
        """The cached vector of a used style: multi-style weights ``[26]`` or an arbitrary style vector ``[100]``."""
        if name not in self._vectors:
            raise StylizeError(f"style {name!r} is not used by this plan; used styles: {', '.join(sorted(self._vectors))}")
        return self._vectors[name]

    # ------------------------------------------------------------------ public entry points

    def __call__(
        self,
        image: np.ndarray,
        label_map: np.ndarray,
        part_categories: Sequence[str],
        variant: int = 0,
        seed: int = 0,
        key: str | int = "",
    ) -> StylizeResult:
        """Style one image: ``image`` uint8 [H,W,3]; ``label_map`` int [H,W] (−1 background, k = part k);
        ``part_categories[k]`` the category of part k. ``key`` (e.g. the image id) makes style lists
        draw differently per image."""
        return self.stylize_batch([image], [label_map], [part_categories], variants=[variant], seeds=[seed], keys=[key])[0]

    @torch.inference_mode()
    def stylize_batch(
        self,
        images: Sequence[np.ndarray],
        label_maps: Sequence[np.ndarray],
        part_categories: Sequence[Sequence[str]],
        *,
        variants: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
        keys: Sequence[str | int] | None = None,
    ) -> list[StylizeResult]:
        """Style several images; same-size images share forward passes, scaled crops are batched across images."""
        n = len(images)
        if not (len(label_maps) == len(part_categories) == n):
            raise StylizeError(f"got {n} images, {len(label_maps)} label maps and {len(part_categories)} category lists")
        variants = list(variants) if variants is not None else [0] * n
        seeds = list(seeds) if seeds is not None else [0] * n
        keys = list(keys) if keys is not None else [""] * n
        works = [self._plan_image(i, images[i], label_maps[i], part_categories[i], variants[i], seeds[i], keys[i])
                 for i in range(n)]
        for kind in ("multistyle", "arbitrary", *self.feedforward):
            self._full_passes(works, kind)
        self._crop_passes(works)
        return [self._composite(w) for w in works]

    # ------------------------------------------------------------------ planning

    def _plan_image(self, index: int, image: np.ndarray, label_map: np.ndarray, categories: Sequence[str],
                    variant: int, seed: int, key: str | int) -> _Work:
        where = f"image {index}"
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise StylizeError(f"{where}: the image must be uint8 [H, W, 3], got {got}")
        lm = np.asarray(label_map)
        if lm.shape != image.shape[:2] or not np.issubdtype(lm.dtype, np.integer):
            raise StylizeError(f"{where}: the label map must be integer [{image.shape[0]}, {image.shape[1]}] like the "
                               f"image, got {lm.dtype} {list(lm.shape)}")
        k = len(categories)
        if lm.size and (int(lm.max()) >= k or int(lm.min()) < -1):
            raise StylizeError(f"{where}: label map values must be -1 (background) or 0..{k - 1} (one per part "
                               f"category given), found {int(lm.min())}..{int(lm.max())}")
        if min(image.shape[:2]) < 8:
            raise StylizeError(f"{where}: the image is {image.shape[0]}x{image.shape[1]}; both sides need at least 8 px")

        regions: list[_Region] = []
        styles: dict[str, str] = {}
        remap = np.full(k + 1, -1, dtype=np.int32)  # old label (+1 shift: background first) -> region label
        present = np.bincount((lm + 1).ravel(), minlength=k + 1) > 0
        for old, category in [(-1, BACKGROUND)] + list(enumerate(categories)):
            if not present[old + 1]:
                continue
            style = self.plan.choose(category, variant, seed, key)
            prior = styles.get(category)
            styles[category] = style  # same category, same draw (choose is per category)
            assert prior is None or prior == style
            spec = self.plan.spec_for(category)
            if style == NONE or spec is None or spec.strength == 0:
                continue
            remap[old + 1] = len(regions)
            kind = self._network_of.get(style, self.plan.styles[style].kind)
            regions.append(_Region(len(regions), category, style, spec, kind))
        work = _Work(original=image, regions=regions, region_map=remap[lm + 1], styles=styles)
        for r in regions:
            crop = self._crop_for(index, work, r) if r.spec.scale > 1.0 else None
            if crop is not None:
                work.crops[r.label] = crop
        return work

    def _crop_for(self, image_index: int, work: _Work, region: _Region) -> _Crop | None:
        """The crop request of a scaled region, or None when the cap leaves no upscaling (styled full-frame)."""
        mask = work.region_map == region.label
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        h, w = work.original.shape[:2]
        margin = max(8, round(self.context * max(y1 - y0, x1 - x0)))
        bh, bw = min(h, y1 - y0 + 2 * margin), min(w, x1 - x0 + 2 * margin)
        scale = min(region.spec.scale, self.max_work_side / max(bh, bw))
        if scale <= 1.0 + 1e-6:
            return None
        cap = max(32, self.max_work_side - self.max_work_side % 4)
        size = (min(cap, _ladder_up(bh * scale)), min(cap, _ladder_up(bw * scale)))
        return _Crop(image_index, region.label, region.kind, region.style, ((y0 + y1) / 2, (x0 + x1) / 2), size, scale)

    # ------------------------------------------------------------------ forward passes

    def _run(self, kind: str, x: Tensor, style: Tensor | tuple[Tensor, Tensor] | None) -> Tensor:
        if kind in self.feedforward:  # a trained single-style network: no style condition
            return self.feedforward[kind](x)
        if kind == "multistyle":
            assert self.multistyle is not None
            return self.multistyle(x, style)
        assert self.transformer is not None
        return self.transformer(x, style)

    def _full_passes(self, works: list[_Work], kind: str) -> None:
        """One forward pass (per same-size group of images) for every unscaled region of ``kind``."""
        todo: dict[tuple[int, int], list[int]] = {}
        for i, w in enumerate(works):
            if w.unscaled(kind):
                todo.setdefault(w.original.shape[:2], []).append(i)
        for (h, wd), idxs in todo.items():
            per = max(1, self.max_batch_pixels // (h * wd))
            for start in range(0, len(idxs), per):
                chunk = idxs[start : start + per]
                x = torch.stack([self._to_tensor(works[i].original) for i in chunk])
                style = None if kind in self.feedforward else self._style_maps([works[i] for i in chunk], kind)
                out = self._run(kind, x, style)
                for j, i in enumerate(chunk):
                    works[i].layers[kind] = out[j]

    def _style_maps(self, works: list[_Work], kind: str) -> Tensor | tuple[Tensor, Tensor]:
        """Per-pixel style conditions of a batch: [B,26,H,W] weights, or ([B,R,100], [B,R,H,W]) for arbitrary.

        Pixels outside the network's parts take the nearest part's style (so a part's edge sees its
        own style on both sides). For the multi-style network, whose norms take each style's
        statistics over the pixels weighted by it, that fill stops ``edge_band_px`` from the parts:
        further out pixels get an unused style, so a part is normalised by its own pixels plus a
        thin band, not by whatever background happens to lie nearest (the sky above a wheel).
        """
        fills, tables = [], []
        for w in works:
            regs = w.unscaled(kind)
            labels = np.array([r.label for r in regs])
            member = np.zeros(len(w.regions) + 1, dtype=bool)  # by region label; the last entry is label -1
            member[labels] = True
            assigned = member[w.region_map]
            # compact: region label -> row of this kind's table; others take the nearest row
            row_of = np.full(len(w.regions) + 1, -1, dtype=np.int64)
            row_of[labels] = np.arange(len(regs))
            rows = row_of[w.region_map]
            rows[~assigned] = -1
            fill, dist = _nearest_fill(rows, assigned)
            table = torch.stack([self._vectors[r.style] for r in regs])
            if kind == "multistyle" and self.edge_band_px is not None:
                unused = (table.abs().sum(0) == 0).nonzero().flatten()
                far = dist > self.edge_band_px
                if len(unused) and far.any():
                    filler = torch.zeros_like(table[0])
                    filler[unused[0]] = 1.0
                    table = torch.cat([table, filler[None]])
                    fill = np.where(far, len(regs), fill)
            fills.append(torch.from_numpy(fill).to(self.device))
            tables.append(table)
        if kind == "multistyle":
            maps = [t[f].permute(2, 0, 1) for t, f in zip(tables, fills)]  # [26, H, W]
            return torch.stack(maps)
        rmax = max(t.shape[0] for t in tables)
        vectors = torch.zeros(len(tables), rmax, tables[0].shape[1], device=self.device)
        masks = torch.zeros(len(tables), rmax, *fills[0].shape, device=self.device)
        for b, (t, f) in enumerate(zip(tables, fills)):
            vectors[b, : t.shape[0]] = t
            masks[b] = F.one_hot(f, rmax).permute(2, 0, 1).float()
        return vectors, masks

    def _crop_passes(self, works: list[_Work]) -> None:
        """Style every scaled region's crop, one batch per (network, working size), pasted into a ``crops`` layer.

        A crop's working size depends on that crop alone (see :func:`_ladder_up`), never on the
        rest of the batch, so an image's pixels do not depend on which images it was batched with.
        """
        groups: dict[tuple[str, tuple[int, int]], list[_Crop]] = {}
        for w in works:
            for c in w.crops.values():
                groups.setdefault((c.kind, c.size), []).append(c)
        for (kind, (hc, wc)), crops in groups.items():
            per = max(1, self.max_batch_pixels // (hc * wc))
            for start in range(0, len(crops), per):
                self._crop_bucket(works, crops[start : start + per], kind)

    def _crop_bucket(self, works: list[_Work], bucket: list[_Crop], kind: str) -> None:
        hc, wc = bucket[0].size
        inputs, windows = [], []
        for c in bucket:
            img = works[c.image].original
            h, w = img.shape[:2]
            # the window that, upsampled by the crop's scale, fills the working size: more context, not padding
            wh, ww = min(h, math.ceil(hc / c.scale)), min(w, math.ceil(wc / c.scale))
            y0 = int(min(max(round(c.center[0] - wh / 2), 0), h - wh))
            x0 = int(min(max(round(c.center[1] - ww / 2), 0), w - ww))
            th, tw = min(hc, round(wh * c.scale)), min(wc, round(ww * c.scale))
            x = self._to_tensor(img[y0 : y0 + wh, x0 : x0 + ww])[None]
            x = F.interpolate(x, size=(th, tw), mode="bicubic", align_corners=False).clamp_(0, 1)
            if (th, tw) != (hc, wc):  # only where the image itself is smaller than the window
                x = F.pad(x, (0, wc - tw, 0, hc - th), mode="replicate")
            inputs.append(x[0])
            windows.append((y0, x0, wh, ww, th, tw))
        x = torch.stack(inputs)
        styles = None if kind in self.feedforward else torch.stack([self._vectors[c.style] for c in bucket])
        out = self._run(kind, x, styles)
        for c, o, (y0, x0, wh, ww, th, tw) in zip(bucket, out, windows):
            small = F.interpolate(o[None, :, :th, :tw], size=(wh, ww), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0, 1)
            work = works[c.image]
            layer = work.layers.get("crops")
            if layer is None:
                layer = work.layers["crops"] = self._to_tensor(work.original).clone()
            inside = torch.from_numpy(work.region_map[y0 : y0 + wh, x0 : x0 + ww] == c.region).to(self.device)
            region = layer[:, y0 : y0 + wh, x0 : x0 + ww]
            region.copy_(torch.where(inside[None], small, region))

    # ------------------------------------------------------------------ compositing

    def _to_tensor(self, image: np.ndarray) -> Tensor:
        return torch.tensor(image, device=self.device).permute(2, 0, 1).float() / 255.0

    def _composite(self, work: _Work) -> StylizeResult:
        if not work.regions:
            return StylizeResult(work.original.copy(), work.styles)
        names = list(work.layers)
        layers = torch.stack([work.layers[n] for n in names])
        layer_of = [names.index("crops" if r.label in work.crops else r.kind) for r in work.regions]
        region_map = torch.from_numpy(work.region_map).to(self.device)
        source = torch.tensor(work.original, device=self.device)  # a copy: the input may be a read-only buffer
        out = compose.composite(
            source.permute(2, 0, 1).float() / 255.0, layers, region_map,
            strength=[r.spec.strength for r in work.regions],
            preserve=[r.spec.preserve_color for r in work.regions],
            layer_of=layer_of, feather_px=self.plan.edges.feather_px,
        )
        # pixels of no styled region keep the input's bytes, whatever float rounding did
        result = torch.where((region_map < 0)[..., None], source, compose.to_uint8(out))
        return StylizeResult(result.cpu().numpy(), work.styles)
