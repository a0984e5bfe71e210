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

from nstray import compose, regions
from nstray.assets import PlanAssets
from nstray.plan import NONE, ArbitrarySpec, FeedforwardSpec, MultiStyleSpec, Plan, PartSpec

__all__ = ["PRECISIONS", "PRECISION_GATE_PSNR_DB", "cpu_has_bf16", "StylizeError", "StylizeResult", "PartStylizer",
           "resolve_device"]

# the multi-style network's arithmetic: all three on a GPU; on a CPU fp32, or bf16 where it is native
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the quality gate of fp16/bf16: PSNR against fp32's output (over the styled pixels, values in [0, 1]), as
# benchmarks/feedforward.py (d) and benchmarks/stylize_path.py measure it; an augmentation set needs no
# bit-exactness, and 40 dB is below what the eye sees on a styled texture
PRECISION_GATE_PSNR_DB = 40.0


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 convolutions natively (AVX512-BF16 or AMX, through oneDNN); elsewhere
    bf16 is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
    """One image of a batch between planning and compositing (its pixels live in its :class:`_Group`)."""

    regions: list[_Region]
    styles: dict[str, str]
    group: int  # index of its same-size group
    slot: int  # its position in that group's tensors
    crops: dict[int, _Crop] = field(default_factory=dict)  # region label -> crop request (scaled regions)
    whole: bool = False  # one styled region covers every pixel (e.g. a whole frame in one style)

    def unscaled(self, kind: str) -> list[_Region]:
        """Regions of ``kind`` styled in the full-frame pass (not through a crop)."""
        return [r for r in self.regions if r.kind == kind and r.label not in self.crops]


@dataclass
class _Group:
    """Same-size images of a batch, on the stylizer's device: uploaded once, composited and downloaded once."""

    indices: list[int]  # positions in the caller's batch
    pixels: Tensor  # uint8 [B, H, W, 3]
    x: Tensor  # float [B, 3, H, W] in [0, 1]
    labels: Tensor  # int32 [B, H, W]: the caller's label maps (−1 background, k = part k)
    region_map: Tensor | None = None  # long [B, H, W]: region label, −1 = not styled
    layers: dict[str, Tensor] = field(default_factory=dict)  # "multistyle"/"arbitrary"/"crops"/... -> [B,3,H,W]


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


def _fill_nearest(rows: Tensor, max_dist: float | None, method: str = "auto") -> tuple[Tensor, Tensor]:
    """Every pixel's nearest row of ``rows`` ``[B, H, W]`` (−1 = none) and its distance: see
    :func:`nstray.regions.nearest_fill`. ``auto``: on the CPU OpenCV's distance transform (faster there,
    and what the CPU path always did); elsewhere jump flooding, which keeps it on the device."""
    if method == "jump-flooding" or (method == "auto" and not rows.is_cpu):
        return regions.nearest_fill(rows, max_dist)
    import cv2

    fills, dists = [], []
    for r in rows.cpu().numpy():
        assigned = r >= 0
        if assigned.all() or not assigned.any():
            fills.append(r.astype(np.int64))
            dists.append(np.where(assigned, 0.0, np.inf).astype(np.float32))
            continue
        src = np.ascontiguousarray(~assigned).astype(np.uint8)
        dist, nearest = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        seeds = r[assigned]  # OpenCV numbers the zero pixels in raster order, as boolean indexing does
        fills.append(seeds[nearest - 1].astype(np.int64))
        dists.append(dist)
    return torch.from_numpy(np.stack(fills)), torch.from_numpy(np.stack(dists))


class PartStylizer:
    """Styles images part by part under a :class:`Plan`; load once, call many times.

    ``device``: ``"cpu"`` or ``"cuda"`` (falls back to the CPU with a warning).
    ``max_work_side``: the longest side a scaled crop may be styled at (caps ``scale`` on big parts).
    ``context``: the margin around a scaled part's box, as a fraction of the box's longer side.
    ``max_batch_pixels``: pixels per forward pass (batch × H × W), bounding memory (default: 8 M on the CPU,
    32 M on a GPU, i.e. 122 images of 512² in one pass).
    ``edge_band_px``: how far a part's style extends past its edge in the multi-style pass (None:
    everywhere); see :meth:`_style_maps`.
    ``precision``: the multi-style network's dtype (``fp32``, ``fp16``, ``bf16``; channels-last either way;
    its norm statistics stay float32): fp16/bf16 on a GPU, bf16 on a CPU with native bf16 arithmetic
    (:func:`cpu_has_bf16`; 1.3x on the six-part path at 512², benchmarks/stylize_path.py), else fp32
    with a warning. Other networks run fp32.
    ``nearest_fill``: how pixels outside a network's parts find the nearest part: ``opencv`` (the
    distance transform, on the host), ``jump-flooding`` (:func:`nstray.regions.nearest_fill`, on the
    device), ``auto`` = OpenCV on the CPU, jump flooding on a GPU. They differ only on the boundaries
    between two parts' fills (see tests/test_stylize_device.py for the measured difference).
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
        max_batch_pixels: int | None = None,
        edge_band_px: int | None = 16,
        nearest_fill: str = "auto",
        precision: str = "fp32",
        assets: PlanAssets | None = None,
    ) -> None:
        self.plan = plan
        self.assets = assets if assets is not None else PlanAssets()
        self.device = resolve_device(device)
        self.max_work_side = int(max_work_side)
        self.context = float(context)
        if max_batch_pixels is None:
            max_batch_pixels = 32_000_000 if self.device.type == "cuda" else 8_000_000
        self.max_batch_pixels = int(max_batch_pixels)
        self.edge_band_px = edge_band_px
        if nearest_fill not in ("auto", "opencv", "jump-flooding"):
            raise StylizeError(f"nearest_fill must be auto, opencv or jump-flooding, got {nearest_fill!r}")
        self.nearest_fill = nearest_fill
        if precision not in PRECISIONS:
            raise StylizeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and self.device.type == "cpu" and not (precision == "bf16" and cpu_has_bf16()):
            why = ("fp16 is for GPUs (on a CPU, bf16 where it has native bf16 arithmetic)" if precision == "fp16" else
                   "bf16 needs a CPU with native bf16 arithmetic (AVX512-BF16 or AMX); this one has none")
            warnings.warn(f"precision {precision}: {why}; running fp32", RuntimeWarning, stacklevel=2)
            precision = "fp32"
        self.precision = precision
        self._dtype = PRECISIONS[precision]
        used = sorted(plan.used_styles())
        kinds = plan.kinds()
        self.multistyle = None
        self.transformer = None
        self._vectors: dict[str, Tensor] = {}
        if "multistyle" in kinds:
            from nstray.models.multistyle import multistyle26

            self.multistyle = multistyle26().to(self.device, self._dtype)
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
        self._host_vectors = {name: v.cpu().numpy() for name, v in self._vectors.items()}  # to pick fillers

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
        """Style several images; same-size images share forward passes, scaled crops are batched across images.

        Each group of same-size images is uploaded once (pinned memory, asynchronous copies on a
        GPU), planned after one small device-to-host read (labels present, boxes of scaled parts),
        styled, composited and downloaded once: nothing waits on the device per image or per part.
        """
        n = len(images)
        if not (len(label_maps) == len(part_categories) == n):
            raise StylizeError(f"got {n} images, {len(label_maps)} label maps and {len(part_categories)} category lists")
        variants = list(variants) if variants is not None else [0] * n
        seeds = list(seeds) if seeds is not None else [0] * n
        keys = list(keys) if keys is not None else [""] * n
        for i in range(n):
            self._check_input(i, images[i], label_maps[i])
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(img.shape[:2], []).append(i)
        groups: list[_Group] = []
        works: list[_Work | None] = [None] * n
        for idxs in by_size.values():
            group = self._upload([images[i] for i in idxs], [label_maps[i] for i in idxs], idxs)
            groups.append(group)
            for slot, w in enumerate(self._plan_group(group, len(groups) - 1, [part_categories[i] for i in idxs],
                                                      [variants[i] for i in idxs], [seeds[i] for i in idxs],
                                                      [keys[i] for i in idxs])):
                works[idxs[slot]] = w
        done = [w for w in works if w is not None]
        for kind in ("multistyle", "arbitrary", *self.feedforward):
            for gi, group in enumerate(groups):
                self._full_passes(group, [w for w in done if w.group == gi], kind)
        self._crop_passes(groups, done)
        results: list[StylizeResult | None] = [None] * n
        for gi, group in enumerate(groups):
            members = [w for w in done if w.group == gi]
            for slot, image in enumerate(self._composite(group, members)):
                results[group.indices[slot]] = StylizeResult(image, members[slot].styles)
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ planning

    @staticmethod
    def _check_input(index: int, image: np.ndarray, label_map: np.ndarray) -> None:
        where = f"image {index}"
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise StylizeError(f"{where}: the image must be uint8 [H, W, 3], got {got}")
        lm = np.asarray(label_map)
        if lm.shape != image.shape[:2] or not np.issubdtype(lm.dtype, np.integer):
            raise StylizeError(f"{where}: the label map must be integer [{image.shape[0]}, {image.shape[1]}] like the "
                               f"image, got {lm.dtype} {list(lm.shape)}")
        if min(image.shape[:2]) < 8:
            raise StylizeError(f"{where}: the image is {image.shape[0]}x{image.shape[1]}; both sides need at least 8 px")

    def _host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        """A host tensor to gather a batch in: page-locked when the device is a GPU (asynchronous copies)."""
        return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")

    def _upload(self, images: list[np.ndarray], label_maps: list[np.ndarray], indices: list[int]) -> _Group:
        h, w = images[0].shape[:2]
        pixels = self._host_buffer((len(images), h, w, 3), torch.uint8)
        labels = self._host_buffer((len(images), h, w), torch.int32)
        pn, ln = pixels.numpy(), labels.numpy()
        for j, (img, lm) in enumerate(zip(images, label_maps)):
            pn[j] = img
            lm = np.asarray(lm)
            if lm.dtype.itemsize > 4 and lm.size and (lm.max() > np.iinfo(np.int32).max or lm.min() < -1):
                raise StylizeError(f"image {indices[j]}: label map values must be -1 (background) or part indices, "
                                   f"found {int(lm.min())}..{int(lm.max())}")
            ln[j] = lm
        pixels = pixels.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        return _Group(indices, pixels, x, labels)

    def _plan_group(self, group: _Group, gi: int, categories: list[Sequence[str]], variants: list[int],
                    seeds: list[int], keys: list[str | int]) -> list[_Work]:
        """Regions, styles and crop requests of a group's images: one device read for the whole group."""
        b = len(categories)
        kmax = max(1, max(len(c) for c in categories))
        lab = group.labels
        lo, hi = lab.flatten(1).amin(1), lab.flatten(1).amax(1)
        present = regions.labels_present(lab, kmax)
        stats = [lo.long()[:, None], hi.long()[:, None], present.long()]
        scaled = any(p.scale > 1.0 for p in [*self.plan.parts.values(), self.plan.default] if p is not None)
        if scaled:
            stats.append(regions.label_boxes(lab, kmax).flatten(1))
        host = torch.cat(stats, 1).cpu().numpy()  # the group's one device-to-host read
        remap = np.full((b, kmax + 1), -1, dtype=np.int64)  # old label + 1 -> region label
        works = []
        for j in range(b):
            index, k = group.indices[j], len(categories[j])
            if host[j, 0] < -1 or host[j, 1] >= k:
                raise StylizeError(f"image {index}: label map values must be -1 (background) or 0..{k - 1} (one per "
                                   f"part category given), found {int(host[j, 0])}..{int(host[j, 1])}")
            present_j = host[j, 2 : 2 + kmax + 1].astype(bool)
            regs: list[_Region] = []
            styles: dict[str, str] = {}
            for old, (category, style, spec) in enumerate(self.plan.resolve(categories[j], variants[j], seeds[j],
                                                                             keys[j]), start=-1):
                if not present_j[old + 1]:
                    continue
                styles[category] = style  # same category, same draw (choose is per category)
                if style == NONE or spec is None or spec.strength == 0:
                    continue
                remap[j, old + 1] = len(regs)
                kind = self._network_of.get(style, self.plan.styles[style].kind)
                regs.append(_Region(len(regs), category, style, spec, kind))
            work = _Work(regs, styles, gi, j, whole=len(regs) == 1 and int(present_j.sum()) == 1)
            if scaled:
                boxes = host[j, 2 + kmax + 1 :].reshape(kmax + 1, 4)
                old_of = {int(r): o for o, r in enumerate(remap[j]) if r >= 0}
                for r in regs:
                    if r.spec.scale > 1.0:
                        crop = self._crop_for(index, group.x.shape[-2:], r, tuple(int(v) for v in boxes[old_of[r.label]]))
                        if crop is not None:
                            work.crops[r.label] = crop
            works.append(work)
        table = torch.from_numpy(remap).to(self.device, non_blocking=True)
        group.region_map = table.gather(1, (lab.long() + 1).flatten(1)).view(lab.shape)
        return works

    def _crop_for(self, image_index: int, hw: Sequence[int], region: _Region,
                  box: tuple[int, int, int, int]) -> _Crop | None:
        """The crop request of a scaled region (its box ``(y0, y1, x0, x1)``), or None when the cap leaves
        no upscaling (styled full-frame)."""
        y0, y1, x0, x1 = box
        h, w = int(hw[0]), int(hw[1])
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
        """``style``: multi-style weights [B, S] or (maps [B, K, H, W], the K style indices); arbitrary (vectors, maps)."""
        if kind in self.feedforward:  # a trained single-style network: no style condition
            return self.feedforward[kind](x)
        if kind == "multistyle":
            assert self.multistyle is not None and style is not None
            if isinstance(style, tuple):
                maps, active = style
                return self.multistyle(x.to(self._dtype), maps.to(self._dtype), active=active).float()
            return self.multistyle(x.to(self._dtype), style.to(self._dtype)).float()
        assert self.transformer is not None
        return self.transformer(x, style)

    def _layer(self, group: _Group, name: str) -> Tensor:
        """The group's layer ``name``, created as a copy of the originals (rows of images it does not cover stay so)."""
        if name not in group.layers:
            group.layers[name] = group.x.clone()
        return group.layers[name]

    def _full_passes(self, group: _Group, works: list[_Work], kind: str) -> None:
        """One forward pass (per chunk of the same-size group) for every unscaled region of ``kind``."""
        todo = [w for w in works if w.unscaled(kind)]
        if not todo:
            return
        h, wd = group.x.shape[-2:]
        per = max(1, self.max_batch_pixels // (h * wd))
        layer = self._layer(group, kind)
        # an image that is one region all over takes the network's one-vector-per-image form: the same
        # result as uniform per-pixel maps (a norm over all pixels, one blend), without the per-pixel work
        whole = [w for w in todo if w.whole]
        parts = [w for w in todo if not w.whole]
        for works_, uniform in ((whole, True), (parts, False)):
            for start in range(0, len(works_), per):
                chunk = works_[start : start + per]
                slots = torch.tensor([w.slot for w in chunk], device=self.device)
                x = group.x.index_select(0, slots)
                if kind in self.feedforward:
                    style = None
                elif uniform:
                    style = torch.stack([self._vectors[w.regions[0].style] for w in chunk])
                else:
                    style = self._style_maps(group, chunk, slots, kind)
                layer.index_copy_(0, slots, self._run(kind, x, style).to(layer.dtype))

    def _style_maps(self, group: _Group, works: list[_Work], slots: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        """Per-pixel style conditions of a chunk: ([B,K,H,W] weights of the K styles used, their indices) for
        the multi-style network, or ([B,R,100] vectors, [B,R,H,W] one-hot maps) for arbitrary.

        Pixels outside the network's parts take the nearest part's style (so a part's edge sees its
        own style on both sides). For the multi-style network, whose norms take each style's
        statistics over the pixels weighted by it, that fill stops ``edge_band_px`` from the parts:
        further out pixels get an unused style, so a part is normalised by its own pixels plus a
        thin band, not by whatever background happens to lie nearest (the sky above a wheel).
        """
        b = len(works)
        rmax = max(len(w.regions) for w in works)
        row_of = np.full((b, rmax + 1), -1, dtype=np.int64)  # region label + 1 -> row of this kind's table
        tables = []
        for j, w in enumerate(works):
            regs = w.unscaled(kind)
            row_of[j, [r.label + 1 for r in regs]] = np.arange(len(regs))
            tables.append([r.style for r in regs])
        rm = group.region_map.index_select(0, slots)
        rows = torch.from_numpy(row_of).to(self.device, non_blocking=True).gather(1, (rm + 1).flatten(1)).view(rm.shape)
        nrows = max(len(t) for t in tables)
        if kind != "multistyle":
            fill, _ = _fill_nearest(rows, None, self.nearest_fill)
            vectors = np.zeros((b, nrows, self._host_vectors[tables[0][0]].shape[0]), dtype=np.float32)
            for j, t in enumerate(tables):
                vectors[j, : len(t)] = np.stack([self._host_vectors[name] for name in t])
            return (torch.from_numpy(vectors).to(self.device, non_blocking=True),
                    F.one_hot(fill.to(self.device), nrows).permute(0, 3, 1, 2).float())
        # row nrows of every table: the image's filler (its first unused style), where the band ends
        assert self.multistyle is not None
        table = np.zeros((b, nrows + 1, self.multistyle.num_styles), dtype=np.float32)  # built here, sent once
        fillers = []
        for j, t in enumerate(tables):
            table[j, : len(t)] = np.stack([self._host_vectors[name] for name in t])
            unused = np.flatnonzero(np.abs(table[j, : len(t)]).sum(0) == 0)
            fillers.append(int(unused[0]) if len(unused) else -1)
            if len(unused):
                table[j, nrows, unused[0]] = 1.0
        active = np.flatnonzero(np.abs(table).sum((0, 1)))  # the styles this chunk uses (and its fillers)
        full = torch.from_numpy(np.ascontiguousarray(table[:, :, active])).to(self.device, non_blocking=True)
        banded = self.edge_band_px is not None and all(f >= 0 for f in fillers)
        fill, dist = _fill_nearest(rows, self.edge_band_px if banded else None, self.nearest_fill)
        fill, dist = fill.to(self.device), dist.to(self.device)
        if banded:
            fill = torch.where((dist > self.edge_band_px) | (fill < 0), nrows, fill)
        elif self.edge_band_px is not None:  # some image uses every style: no filler there
            has = torch.tensor([f >= 0 for f in fillers], device=self.device)[:, None, None]
            fill = torch.where(has & (dist > self.edge_band_px), nrows, fill)
        batch = torch.arange(b, device=self.device)[:, None, None]
        # [B, H, W, K] gathered, handed over as a [B, K, H, W] view: the network's norms read it pixel-major
        return full[batch, fill].permute(0, 3, 1, 2), torch.from_numpy(active)  # indices stay on the host

    def _crop_passes(self, groups: list[_Group], works: list[_Work]) -> None:
        """Style every scaled region's crop, one batch per (network, working size), pasted into a ``crops`` layer.

        A crop's working size depends on that crop alone (see :func:`_ladder_up`), never on the
        rest of the batch, so an image's pixels do not depend on which images it was batched with.
        """
        bucket_of: dict[tuple[str, tuple[int, int]], list[tuple[_Work, _Crop]]] = {}
        for w in works:
            for c in w.crops.values():
                bucket_of.setdefault((c.kind, c.size), []).append((w, c))
        for (kind, (hc, wc)), crops in bucket_of.items():
            per = max(1, self.max_batch_pixels // (hc * wc))
            for start in range(0, len(crops), per):
                self._crop_bucket(groups, crops[start : start + per], kind)

    def _crop_bucket(self, groups: list[_Group], bucket: list[tuple[_Work, _Crop]], kind: str) -> None:
        """Resample, style and paste back one bucket of same-working-size crops; resampling is batched
        over the crops that share a window geometry (the same numbers as one call per crop)."""
        hc, wc = bucket[0][1].size
        windows = []
        for w, c in bucket:
            h, wd = groups[w.group].x.shape[-2:]
            # the window that, upsampled by the crop's scale, fills the working size: more context, not padding
            wh, ww = min(h, math.ceil(hc / c.scale)), min(wd, math.ceil(wc / c.scale))
            y0 = int(min(max(round(c.center[0] - wh / 2), 0), h - wh))
            x0 = int(min(max(round(c.center[1] - ww / 2), 0), wd - ww))
            windows.append((y0, x0, wh, ww, min(hc, round(wh * c.scale)), min(wc, round(ww * c.scale))))
        same: dict[tuple[int, int, int, int], list[int]] = {}
        for i, win in enumerate(windows):
            same.setdefault(win[2:], []).append(i)
        inputs: list[Tensor | None] = [None] * len(bucket)
        for (wh, ww, th, tw), members in same.items():
            src = torch.stack([groups[bucket[i][0].group].x[bucket[i][0].slot, :, windows[i][0] : windows[i][0] + wh,
                                                            windows[i][1] : windows[i][1] + ww] for i in members])
            x = F.interpolate(src, size=(th, tw), mode="bicubic", align_corners=False).clamp_(0, 1)
            if (th, tw) != (hc, wc):  # only where the image itself is smaller than the window
                x = F.pad(x, (0, wc - tw, 0, hc - th), mode="replicate")
            for i, xi in zip(members, x):
                inputs[i] = xi
        styles = None if kind in self.feedforward else torch.stack([self._vectors[c.style] for _, c in bucket])
        out = self._run(kind, torch.stack(inputs), styles).float()
        for (wh, ww, th, tw), members in same.items():
            idx = torch.tensor(members, device=self.device)
            small = F.interpolate(out.index_select(0, idx)[:, :, :th, :tw], size=(wh, ww), mode="bilinear",
                                  align_corners=False, antialias=True).clamp_(0, 1)
            for i, sm in zip(members, small):
                w, c = bucket[i]
                y0, x0 = windows[i][:2]
                group = groups[w.group]
                layer = self._layer(group, "crops")
                inside = group.region_map[w.slot, y0 : y0 + wh, x0 : x0 + ww] == c.region
                region = layer[w.slot, :, y0 : y0 + wh, x0 : x0 + ww]
                region.copy_(torch.where(inside[None], sm, region))

    # ------------------------------------------------------------------ compositing

    def _composite(self, group: _Group, works: list[_Work]) -> list[np.ndarray]:
        """The group's styled images (uint8 [H, W, 3] each), composited on the device and downloaded at once."""
        assert group.region_map is not None
        if not group.layers:  # nothing styled in any image of the group
            return list(group.pixels.cpu().numpy())
        names = list(group.layers)
        k = max(1, max(len(w.regions) for w in works))
        strength = np.zeros((len(works), k), dtype=np.float32)
        preserve = np.zeros((len(works), k), dtype=bool)
        layer_of = np.zeros((len(works), k), dtype=np.int64)
        for j, w in enumerate(works):
            for r in w.regions:
                strength[j, r.label] = r.spec.strength
                preserve[j, r.label] = r.spec.preserve_color
                layer_of[j, r.label] = names.index("crops" if r.label in w.crops else r.kind)
        out = compose.composite_batch(
            group.x, [group.layers[name] for name in names], group.region_map,
            torch.from_numpy(strength).to(self.device, non_blocking=True),
            torch.from_numpy(preserve).to(self.device, non_blocking=True),
            torch.from_numpy(layer_of).to(self.device, non_blocking=True), self.plan.edges.feather_px,
        )
        # pixels of no styled region keep the input's bytes, whatever float rounding did
        result = torch.where((group.region_map < 0)[..., None], group.pixels, compose.to_uint8(out))
        return list(result.cpu().numpy())
