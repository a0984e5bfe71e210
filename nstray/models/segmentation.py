"""Semantic segmentation networks (torchvision's DeepLabV3 and LR-ASPP), their weights metadata,
nstray's segmenter checkpoints, and IoU from a confusion matrix. Pure: torch + torchvision only.

Conventions:

* images are ``float[B, 3, H, W]`` RGB in [0, 1]; normalization (ImageNet mean/std) happens inside
  :class:`Segmenter`, so callers never normalize;
* a label map is ``int64[H, W]``: ``0`` is background, ``k`` is ``classes[k]``, :data:`IGNORE_INDEX`
  (255) marks pixels that count for neither loss nor IoU;
* networks return torchvision's ``{"out": logits[B, C, H, W], "aux": ...}`` at the input size;
  :meth:`Segmenter.predict` works at a chosen ``size`` (shorter side) and upsamples the class scores
  bilinearly to the exact input size before the argmax, so a mask always matches its image pixel for pixel.

Pretrained weights (:data:`PRETRAINED`) carry what torchvision's weights enums carry: category names,
input transforms, reported metrics, parameter count, the torchvision file and how to get it. The
COCO-with-VOC-labels weights know ``car``, ``bus``, ``motorbike`` and ``bicycle`` as whole vehicles;
COCO's ``truck`` was trained as background. Files are resolved by :mod:`nstray.weights` (not here).

nstray's own checkpoints (:func:`segmenter_checkpoint`) are plain dicts of tensors, strings and
numbers, so they load with ``torch.load(weights_only=True)``; they hold the architecture, the class
list and the working size, so a checkpoint alone rebuilds its segmenter.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARCHS",
    "CHECKPOINT_FORMAT",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRETRAINED",
    "VOC_CATEGORIES",
    "VOC_VEHICLES",
    "PretrainedSeg",
    "SegmentationError",
    "Segmenter",
    "build",
    "confusion_matrix",
    "iou_scores",
    "load_backbone_state",
    "normalize",
    "poly_lr_factor",
    "predict_images",
    "read_segmenter",
    "segmentation_loss",
    "segmenter_checkpoint",
    "segmenter_from_pretrained",
    "train_step",
]

IGNORE_INDEX = 255
CHECKPOINT_FORMAT = "nstray.segmenter"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# architecture -> (torchvision builder, ImageNet backbone = its nstray weights registry name,
#                  whether torchvision trains it with an auxiliary head)
ARCHS: dict[str, tuple[str, str, bool]] = {
    "deeplabv3_resnet50": ("deeplabv3_resnet50", "resnet50", True),
    "deeplabv3_resnet101": ("deeplabv3_resnet101", "resnet101", True),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", "mobilenet_v3_large", True),
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large", "mobilenet_v3_large", False),
}

VOC_CATEGORIES: tuple[str, ...] = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_VEHICLES: dict[str, int] = {"bicycle": 2, "bus": 6, "car": 7, "motorbike": 14}
"""Vehicle classes of the COCO-with-VOC-labels weights. COCO trucks were trained as background."""


class SegmentationError(ValueError):
    """A segmenter cannot be built or loaded, or its input is wrong; the message says what and how to fix it."""


@dataclass(frozen=True)
class PretrainedSeg:
    """One set of pretrained weights, described as torchvision's weights enums describe theirs."""

    name: str  # the nstray weights registry name
    arch: str
    torchvision: str  # ``Enum.MEMBER`` in torchvision.models.segmentation
    categories: tuple[str, ...]
    num_params: int
    metrics: Mapping[str, Mapping[str, float]]  # dataset -> {"miou": ..., "pixel_acc": ...}, as reported
    resize: int = 520  # torchvision's eval transform: shorter side resized to this
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: str = ("Trained on COCO train2017 with only the 20 Pascal VOC categories; COCO 'truck' pixels "
                  "were background, so trucks are not segmented.")

    @property
    def how_to_get(self) -> str:
        return (f"`nstray weights pull {self.name}` on a machine with internet (torch hub cache), then "
                f"`nstray weights push {self.name} s3://bucket/weights/` for clusters without internet")


_VOC = "COCO-val2017-VOC-labels"
PRETRAINED: dict[str, PretrainedSeg] = {
    p.name: p
    for p in [
        PretrainedSeg("deeplabv3_resnet50", "deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
                      VOC_CATEGORIES, 42_004_074, {_VOC: {"miou": 66.4, "pixel_acc": 92.4}}),
        PretrainedSeg("deeplabv3_resnet101", "deeplabv3_resnet101",
                      "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
                      VOC_CATEGORIES, 60_996_202, {_VOC: {"miou": 67.4, "pixel_acc": 92.4}}),
        PretrainedSeg("deeplabv3_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large",
                      "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
                      VOC_CATEGORIES, 11_029_328, {_VOC: {"miou": 60.3, "pixel_acc": 91.2}}),
        PretrainedSeg("lraspp_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
                      "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
                      VOC_CATEGORIES, 3_221_538, {_VOC: {"miou": 57.9, "pixel_acc": 91.2}}),
    ]
}


def _check_arch(arch: str) -> tuple[str, str, bool]:
    if arch not in ARCHS:
        raise SegmentationError(f"unknown segmentation architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def build(arch: str, num_classes: int, *, aux_loss: bool | None = None) -> nn.Module:
    """A randomly initialized torchvision segmentation network with ``num_classes`` outputs (no download).

    ``aux_loss`` (default: as torchvision trains the architecture) adds the auxiliary head of DeepLabV3.
    """
    import torchvision.models.segmentation as tvseg

    builder, _, has_aux = _check_arch(arch)
    if num_classes < 2:
        raise SegmentationError(f"a segmenter needs at least 2 classes (background + one), got {num_classes}")
    aux = has_aux if aux_loss is None else bool(aux_loss)
    if aux and not has_aux:
        raise SegmentationError(f"{arch} has no auxiliary head")
    return getattr(tvseg, builder)(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux)


def load_backbone_state(model: nn.Module, arch: str, state: Mapping[str, Tensor]) -> int:
    """Load ImageNet classifier weights (torchvision's ``resnet50`` / ``mobilenet_v3_large`` files) into the
    network's backbone; returns how many tensors were loaded. The classifier head of the file is left out."""
    _, backbone, _ = _check_arch(arch)
    target = model.backbone.state_dict()
    strip = "features." if backbone.startswith("mobilenet") else ""
    picked: dict[str, Tensor] = {}
    for key, value in state.items():
        if strip and not key.startswith(strip):
            continue
        name = key[len(strip):]
        if name in target:
            if target[name].shape != value.shape:
                raise SegmentationError(f"backbone weights: {key} has shape {tuple(value.shape)}, the {backbone} "
                                        f"backbone expects {tuple(target[name].shape)}; is it a {backbone} file?")
            picked[name] = value
    if len(picked) < len(target) // 2:
        raise SegmentationError(f"backbone weights match only {len(picked)} of the {len(target)} tensors of the "
                                f"{backbone} backbone; pass torchvision's {backbone} ImageNet weights")
    model.backbone.load_state_dict(picked, strict=False)
    return len(picked)


# ---------------------------------------------------------------- the segmenter


def normalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """``float[B, 3, H, W]`` in [0, 1] → the network's input: training and inference both go through here."""
    m = torch.tensor(tuple(mean), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


@dataclass
class Segmenter:
    """A network with its class list and input convention; :meth:`predict` gives label maps at the input size."""

    model: nn.Module
    arch: str
    classes: list[str]
    size: int = 520  # the working size: the shorter side is resized to this before the network
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    meta: dict[str, Any] = field(default_factory=dict)

    def normalize(self, x: Tensor) -> Tensor:
        return normalize(x, self.mean, self.std)

    def _working_logits(self, images: Tensor, size: int | None) -> Tensor:
        """Class scores at the working size (the shorter side at ``size``, default the segmenter's)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise SegmentationError(f"images must be float[B, 3, H, W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        side = int(size or self.size)
        scale = side / min(h, w)
        work = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = images if work == (h, w) else F.interpolate(images, size=work, mode="bilinear", align_corners=False,
                                                        antialias=scale < 1)
        return self.model(self.normalize(x))["out"]

    @torch.no_grad()
    def logits(self, images: Tensor, size: int | None = None) -> Tensor:
        """``float[B, C, H, W]`` class scores at the input's exact size; the network sees the shorter side at ``size``."""
        h, w = images.shape[-2:]
        out = self._working_logits(images, size)
        return out if out.shape[-2:] == (h, w) else F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict_scored(self, images: Tensor, size: int | None = None) -> tuple[Tensor, Tensor]:
        """``(labels int64[B, H, W], confidence float[B, H, W])``: the argmax class (0 = background) and its
        softmax probability at the input's exact size. The class scores are upsampled bilinearly from the working
        size before the argmax (as torchvision's models and reference evaluation do: smooth part edges, not the
        working grid's staircase), one image at a time so memory stays one image's ``C×H×W`` scores."""
        h, w = images.shape[-2:]
        logits = self._working_logits(images, size)
        if logits.shape[-2:] == (h, w):
            conf, labels = logits.softmax(1).max(1)
            return labels, conf
        labels = torch.empty((images.shape[0], h, w), dtype=torch.int64, device=logits.device)
        conf = torch.empty((images.shape[0], h, w), dtype=logits.dtype, device=logits.device)
        for i in range(images.shape[0]):
            up = F.interpolate(logits[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)
            conf[i], labels[i] = (t[0] for t in up.softmax(1).max(1))
        return labels, conf

    def predict(self, images: Tensor, size: int | None = None) -> Tensor:
        """``int64[B, H, W]`` class indices (0 = background) at the input size (see :meth:`predict_scored`)."""
        return self.predict_scored(images, size)[0]


def predict_images(seg: Segmenter, images: Sequence[Any], size: int | None = None,
                   device: str | torch.device = "cpu") -> list[tuple[Any, Any]]:
    """``(labels int64[H, W], confidence float32[H, W])`` numpy arrays per ``uint8[H, W, 3]`` RGB image (see
    :meth:`Segmenter.predict_scored`); images of one size go through the network together, never stacked
    across sizes. Used by ``nstray segment`` and by the dataset job's segmenter mask source."""
    out: list[tuple[Any, Any]] = [None] * len(images)  # type: ignore[list-item]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    seg.model.eval()
    for shape, idx in groups.items():
        if len(shape) != 3 or shape[2] != 3:
            raise SegmentationError(f"images must be uint8[H, W, 3] RGB, got shape {shape}")
        x = torch.stack([torch.tensor(images[i]) for i in idx]).permute(0, 3, 1, 2).float().div_(255.0).to(device)
        labels, conf = seg.predict_scored(x, size)
        for j, i in enumerate(idx):
            out[i] = (labels[j].cpu().numpy(), conf[j].float().cpu().numpy())
    return out


def segmenter_checkpoint(model: nn.Module, arch: str, classes: Sequence[str], *, size: int,
                         meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The deployable checkpoint of a trained network: loads with ``torch.load(weights_only=True)``.

    Only the main head's weights are kept (the auxiliary head helps training, not inference).
    """
    net = getattr(model, "module", model)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items() if not k.startswith("aux_classifier.")}
    return {"format": CHECKPOINT_FORMAT, "version": 1, "arch": arch, "classes": list(classes), "size": int(size),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "state_dict": state, "meta": dict(meta or {})}


def read_segmenter(data: bytes | str | Path | Mapping[str, Any], label: str = "checkpoint") -> Segmenter:
    """Rebuild a :class:`Segmenter` from a checkpoint (bytes, a local file, or the loaded dict).

    Loading is ``weights_only=True``: a pickle that would run code is refused.
    """
    if isinstance(data, Mapping):
        ckpt: Any = data
    else:
        try:
            ckpt = torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu",
                              weights_only=True)
        except Exception as exc:
            raise SegmentationError(f"{label}: cannot load it as a safe (weights-only) checkpoint: "
                                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                                    ) from None
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SegmentationError(f"{label} is not an nstray segmenter checkpoint (no format {CHECKPOINT_FORMAT!r}); "
                                "train one with `nstray train-seg`, or pass a pretrained name such as "
                                "deeplabv3_resnet50")
    missing = [k for k in ("arch", "classes", "size", "state_dict") if k not in ckpt]
    if missing:
        raise SegmentationError(f"{label}: checkpoint lacks {', '.join(missing)}")
    classes = [str(c) for c in ckpt["classes"]]
    model = build(str(ckpt["arch"]), len(classes), aux_loss=False)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise SegmentationError(f"{label}: weights do not fit {ckpt['arch']} with {len(classes)} classes: "
                                f"{str(exc).splitlines()[0]}") from None
    model.eval()
    return Segmenter(model, str(ckpt["arch"]), classes, int(ckpt["size"]), tuple(ckpt.get("mean", IMAGENET_MEAN)),
                     tuple(ckpt.get("std", IMAGENET_STD)), dict(ckpt.get("meta") or {}))


def segmenter_from_pretrained(name: str, state: Mapping[str, Tensor]) -> Segmenter:
    """A :class:`Segmenter` from torchvision pretrained weights (the state dict of the file named by ``PRETRAINED[name]``)."""
    if name not in PRETRAINED:
        raise SegmentationError(f"no pretrained segmentation weights {name!r}; known: {', '.join(PRETRAINED)}")
    info = PRETRAINED[name]
    has_aux = any(k.startswith("aux_classifier.") for k in state)
    model = build(info.arch, len(info.categories), aux_loss=has_aux and ARCHS[info.arch][2])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SegmentationError(f"{name}: the file does not hold {info.torchvision}: {str(exc).splitlines()[0]}") from None
    model.eval()
    classes = ["background", *info.categories[1:]]
    return Segmenter(model, info.arch, classes, info.resize, info.mean, info.std,
                     {"pretrained": name, "torchvision": info.torchvision, "metrics": dict(info.metrics)})


# ---------------------------------------------------------------- training maths


def segmentation_loss(outputs: Mapping[str, Tensor], target: Tensor, aux_weight: float = 0.5) -> Tensor:
    """torchvision's recipe: cross-entropy on ``out`` plus ``aux_weight`` × that of ``aux`` (ignore index 255)."""
    loss = F.cross_entropy(outputs["out"], target, ignore_index=IGNORE_INDEX)
    if "aux" in outputs and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=IGNORE_INDEX)
    return loss


def train_step(model: nn.Module, images: Tensor, target: Tensor, optimizer: torch.optim.Optimizer,
               aux_weight: float = 0.5) -> Tensor:
    """One optimizer step on ``images`` in [0, 1] (normalized here exactly as :class:`Segmenter` does); the loss."""
    loss = segmentation_loss(model(normalize(images)), target, aux_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def poly_lr_factor(step: int, total_steps: int, power: float = 0.9) -> float:
    """Poly schedule: the learning-rate multiplier at (0-based) ``step`` of ``total_steps``."""
    return (1.0 - min(step, total_steps) / max(1, total_steps)) ** power


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``int64[C, C]``: row = true class, column = predicted class; pixels labelled ``ignore_index`` are skipped."""
    if pred.shape != target.shape:
        raise SegmentationError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t != ignore_index) & (t >= 0) & (t < num_classes)
    return torch.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_scores(cm: Tensor) -> dict[str, Any]:
    """Per-class IoU, mIoU and pixel accuracy of a confusion matrix.

    IoU_k = TP / (TP + FP + FN). A class absent from both truth and prediction has no IoU (``nan``) and is
    left out of the mean (torchvision's reference would average in the nan).
    """
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    valid = ~torch.isnan(iou)
    total = cm.sum()
    return {
        "iou": iou.tolist(),
        "miou": float(iou[valid].mean()) if valid.any() else math.nan,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
        "pixels": int(total),
    }
