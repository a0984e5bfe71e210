"""Online style augmentation for training: style the annotated parts of an image on the fly.

:class:`PartStyle` is a transform for any PyTorch data pipeline (torchvision ``transforms.v2`` friendly): it
takes an image and its class mask and returns the image with its parts styled and the mask unchanged.

Conventions: ``image`` is ``[3, H, W]``, ``uint8`` or float in ``[0, 1]`` (a ``tv_tensors.Image`` stays one);
``mask`` is ``[H, W]`` (or ``[1, H, W]``) of class ids, ``background_id`` (0) = background, ``ignore_id`` (255)
= unlabeled. Every other id present is a part. Pixels outside the styled parts are returned bit-identical,
and the mask is returned as it came (the labels still hold).

Two modes:

* **plan**: a style plan (the job's), class id ``c`` named ``class_names[c]``; parts are styled by the plan's
  styles per category (:class:`~nstray.stylize.parts.PartStylizer`, one pass per network), a variant drawn per call;
* **random** (style randomization, Jackson et al. 2019): each part gets a style vector of the arbitrary-style
  network sampled from a Gaussian fitted to a style bank, mixed with the image's own style vector by a
  random ``alpha`` (their strength). No style image needed. The bank: the 26 builtin styles of the
  multi-style network rendered on a fixed procedural canvas, embedded by the style predictor (26 real
  artistic styles; Jackson et al. fitted theirs to ~79k paintings, which nstray cannot ship).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nstray import compose

__all__ = ["StyleBank", "builtin_style_bank", "PartStyle"]


@dataclass(frozen=True)
class StyleBank:
    """A Gaussian over style vectors: ``mean [D]`` and ``basis [R, D]`` (principal directions scaled by their
    standard deviations), so a sample is ``mean + z @ basis`` with ``z ~ N(0, I_R)``."""

    mean: Tensor
    basis: Tensor

    @classmethod
    def fit(cls, vectors: Tensor) -> StyleBank:
        """The Gaussian of ``vectors [N, D]`` (rank ≤ N − 1: its principal subspace)."""
        if vectors.dim() != 2 or vectors.shape[0] < 2:
            raise ValueError(f"need [N >= 2, D] style vectors, got {tuple(vectors.shape)}")
        mean = vectors.mean(0)
        _, s, vh = torch.linalg.svd(vectors - mean, full_matrices=False)
        keep = s > s.max() * 1e-6
        return cls(mean, (s[keep, None] / math.sqrt(vectors.shape[0] - 1)) * vh[keep])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.basis.shape[0], generator=generator, device=self.basis.device, dtype=self.basis.dtype)
        return self.mean + z @ self.basis


def _canvas(size: int = 128, seed: int = 0) -> Tensor:
    """A fixed, textured ``[1, 3, size, size]`` canvas (smooth multi-octave colour noise) to render styles on."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, 3, size, size)
    for octave in (4, 8, 16, 32, 64):
        noise = torch.rand(1, 3, octave, octave, generator=g)
        out += F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False) / octave ** 0.5
    out -= out.amin(dim=(2, 3), keepdim=True)
    return out / out.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)


@torch.inference_mode()
def builtin_style_bank(predictor: torch.nn.Module, device: str | torch.device = "cpu") -> StyleBank:
    """:class:`StyleBank` of the multi-style network's builtin styles, as the arbitrary network's predictor sees them."""
    from nstray.models.arbitrary import prepare_style_image
    from nstray.models.multistyle import NUM_STYLES, multistyle26

    net = multistyle26().to(device)
    canvas = _canvas().to(device)
    vectors = []
    for k in range(NUM_STYLES):
        weights = torch.zeros(1, NUM_STYLES, device=device)
        weights[0, k] = 1
        rendering = net(canvas, weights)
        vectors.append(predictor(prepare_style_image(rendering))[0])
    return StyleBank.fit(torch.stack(vectors))


@functools.lru_cache(maxsize=4)
def _random_mode_models(device: str) -> tuple[torch.nn.Module, torch.nn.Module, StyleBank]:
    """The arbitrary-style predictor and transformer on ``device`` and the builtin bank (on the CPU, where
    seeded generators draw), built once per process and device: every worker's transform shares them."""
    from nstray.models.arbitrary import arbitrary_predictor, arbitrary_transformer

    predictor = arbitrary_predictor().to(device)
    bank = builtin_style_bank(predictor, device)
    return predictor, arbitrary_transformer().to(device), StyleBank(bank.mean.cpu(), bank.basis.cpu())


def _as_float(image: Tensor) -> tuple[Tensor, bool]:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0, True
    if not image.is_floating_point():
        raise ValueError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    return image.float(), False


class PartStyle:
    """Style the parts of ``(image, mask)`` with probability ``p``; see the module docstring.

    ``plan``: a :class:`~nstray.plan.Plan` (plan mode; ``class_names`` then names the ids, and ``assets`` carries
    its style images / checkpoints, :func:`nstray.assets.load_plan_assets`), or ``None`` for random mode.
    ``alpha``: the range a part's style strength is drawn from in random mode (Jackson et al.'s interpolation
    between the sampled and the image's own style vector). ``background``: also style the background.
    ``seed``: a seed for reproducible draws (else torch's global generator).
    """

    def __init__(self, plan: Any = None, *, p: float = 0.5, class_names: Sequence[str] | None = None,
                 alpha: tuple[float, float] = (0.5, 1.0), feather_px: int = 2, background: bool = False,
                 background_id: int = 0, ignore_id: int = 255, device: str | torch.device = "cpu",
                 assets: Any = None, seed: int | None = None) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        if not 0 <= alpha[0] <= alpha[1] <= 1:
            raise ValueError(f"alpha must be a range within [0, 1], got {alpha}")
        self.p, self.alpha, self.feather_px = float(p), (float(alpha[0]), float(alpha[1])), int(feather_px)
        self.background, self.background_id, self.ignore_id = bool(background), int(background_id), int(ignore_id)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.plan = plan
        if plan is not None:
            from nstray.stylize.parts import PartStylizer

            if class_names is None:
                raise ValueError("plan mode needs class_names (class id -> category name of the plan)")
            self.class_names = list(class_names)
            self.stylizer = PartStylizer(plan, device=self.device, assets=assets)
        else:
            self.predictor, self.transformer, self.bank = _random_mode_models(str(self.device))

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator)

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if float(self._rand(1)) >= self.p:
            return image, mask
        m = mask[0] if mask.dim() == 3 and mask.shape[0] == 1 else mask
        if m.dim() != 2 or m.shape != image.shape[-2:]:
            raise ValueError(f"mask must be [H, W] (or [1, H, W]) of the image's size {tuple(image.shape[-2:])}, "
                             f"got {tuple(mask.shape)}")
        ids = [int(c) for c in torch.unique(m).tolist() if int(c) != self.ignore_id
               and (int(c) != self.background_id or self.background)]
        if not ids:
            return image, mask
        labels = torch.full(m.shape, -1, dtype=torch.int64)
        for k, c in enumerate(ids):
            labels[m.cpu() == c] = k
        x, was_uint8 = _as_float(image)
        styled = self._plan_style(x, labels, ids) if self.plan is not None else self._random_style(x, labels, len(ids))
        out = compose.to_uint8(styled).permute(2, 0, 1) if was_uint8 else styled.to(image.dtype)
        out = out.to(image.device)
        try:  # keep a tv_tensors.Image an Image
            from torchvision import tv_tensors

            if isinstance(image, tv_tensors.Image):
                out = tv_tensors.wrap(out, like=image)
        except ImportError:
            pass
        return out, mask

    def _plan_style(self, x: Tensor, labels: Tensor, ids: list[int]) -> Tensor:
        from nstray.plan import BACKGROUND

        names = [BACKGROUND if c == self.background_id else self.class_names[c] for c in ids]
        variant = int(self._rand(1) * 1_000_000)
        rgb = compose.to_uint8(x).cpu().numpy()
        res = self.stylizer(rgb, labels.numpy().astype("int32"), names, variant=variant, seed=0)
        return torch.from_numpy(res.image).permute(2, 0, 1).float() / 255.0

    @torch.inference_mode()
    def _random_style(self, x: Tensor, labels: Tensor, k: int) -> Tensor:
        from nstray.models.arbitrary import prepare_style_image

        dev = self.device
        x = x.to(dev)
        own = self.predictor(prepare_style_image(x[None]))[0]
        sampled = self.bank.sample(k, self.generator).to(dev)
        lo, hi = self.alpha
        a = (lo + (hi - lo) * self._rand(k)).to(dev)[:, None]
        vectors = a * sampled + (1 - a) * own[None]
        lab = labels.to(dev)
        masks = F.one_hot(lab.clamp_min(0), k).permute(2, 0, 1).float() * (lab >= 0)[None]
        styled = self.transformer(x[None], (vectors[None], masks[None]))[0]
        return compose.composite(x, styled[None], lab, [1.0] * k, [False] * k, [0] * k, self.feather_px).cpu()
