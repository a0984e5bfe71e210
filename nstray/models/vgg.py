"""VGG feature encoder (Simonyan & Zisserman) for optimization NST and perceptual losses.

The convolutional trunk of torchvision's VGG-19 / VGG-16, truncated right after the deepest
layer asked for, with ImageNet normalization inside: it takes images in ``[0, 1]`` and returns
a dict ``{layer_name: features}``. Layer names follow the Gatys / Caffe convention:
``conv{block}_{i}``, ``relu{block}_{i}``, ``pool{block}`` (``relu1_1`` … ``relu5_4``, ``conv4_2``).

Weights come from the registry (:mod:`nstray.weights`): a registry name (``"vgg19"``: the
torchvision ImageNet weights in the torch hub cache), a local torchvision-format state-dict file
or an ``s3://`` URI; ``None`` builds a randomly initialised encoder (tests, timing). The builder
never downloads: offline it raises :class:`~nstray.weights.WeightsNotFound` saying how to stage
the file (``nstray weights pull vgg19`` on a machine with internet, ``nstray weights push`` to S3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from nstray import weights as weights_registry

__all__ = [
    "ARCHS",
    "DEFAULT_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGGEncoder",
    "layer_names",
    "min_input_side",
    "vgg_encoder",
    "vgg16_encoder",
    "vgg19_encoder",
]

# torchvision's VGG configurations: channels per conv, "M" for a pooling layer.
ARCHS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
DEFAULT_WEIGHTS = "default"
"""Sentinel for ``weights=``: the registry entry named like the architecture (``vgg19`` / ``vgg16``)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_names(arch: str = "vgg19") -> list[str]:
    """Names of the modules of ``torchvision.models.<arch>().features``, in order (index = position)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown VGG architecture {arch!r}; choose one of {sorted(ARCHS)}")
    names: list[str] = []
    block, conv = 1, 0
    for v in ARCHS[arch]:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


def min_input_side(arch: str, layers: Iterable[str]) -> int:
    """The smallest image side the ``layers`` of ``arch`` can take: each 2x2 pooling before the deepest
    layer halves the side, and a pooling needs at least 2 pixels (``2 ** pools``)."""
    names = layer_names(arch)
    deepest = max(names.index(n) for n in layers)
    return 2 ** sum(1 for n in names[:deepest] if n.startswith("pool"))


def _make_features(arch: str, depth: int, pool: str) -> nn.Sequential:
    """The first ``depth`` modules of torchvision's VGG ``features`` (same indices, so state dicts match)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in ARCHS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2) if pool == "max" else nn.AvgPool2d(2, 2))
        else:
            # Not in-place: a requested conv output must survive the ReLU after it.
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(v)
        if len(layers) >= depth:
            break
    return nn.Sequential(*layers[:depth])


def _init_like_torchvision(features: nn.Sequential) -> None:
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0.0)


class VGGEncoder(nn.Module):
    """Frozen VGG trunk: ``forward(x[B,3,H,W] in [0,1]) -> {layer: features}`` for the configured layers.

    Build it with :func:`vgg_encoder` (or :func:`vgg19_encoder` / :func:`vgg16_encoder`).
    """

    def __init__(self, features: nn.Sequential, names: Sequence[str], layers: Sequence[str]) -> None:
        super().__init__()
        self.features = features
        self.layers: tuple[str, ...] = tuple(layers)
        index = {n: i for i, n in enumerate(names)}
        self._taps: dict[int, str] = {index[n]: n for n in self.layers}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Features of ``x`` (RGB in ``[0, 1]``) at every configured layer."""
        h = (x - self.mean) / self.std
        out: dict[str, Tensor] = {}
        taps = self._taps
        for i, module in enumerate(self.features):
            h = module(h)
            name = taps.get(i)
            if name is not None:
                out[name] = h
        return out


def _features_state_dict(state: Mapping[str, Tensor], depth: int, label: str) -> dict[str, Tensor]:
    """Pick ``features.N.*`` (full torchvision model) or bare ``N.*`` (a features module) keys below ``depth``."""
    if not isinstance(state, Mapping):
        raise ValueError(f"VGG weights {label}: expected a state dict, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    picked: dict[str, Tensor] = {}
    for key, value in state.items():
        rest = key[len("features."):] if key.startswith("features.") else key
        idx, dot, param = rest.partition(".")
        if dot and idx.isdigit() and int(idx) < depth and param in ("weight", "bias"):
            picked[f"{idx}.{param}"] = value
    return picked


def vgg_encoder(
    arch: str = "vgg19",
    layers: Iterable[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "conv4_2"),
    weights: str | None = DEFAULT_WEIGHTS,
    *,
    pool: str = "max",
    sha256: str | None = None,
) -> VGGEncoder:
    """Build a frozen VGG encoder returning the ``layers`` asked for, truncated after the deepest one.

    ``weights``: a registry name (``"vgg19"``, ``"vgg16"``; :data:`DEFAULT_WEIGHTS` picks the one named
    like ``arch``), a local torchvision-format state-dict file, an ``s3://`` URI, or ``None`` for random
    init. ``sha256`` checks a file that is not in the registry. ``pool="avg"`` replaces max-pooling by
    average pooling (Gatys et al. 2016 recommend it for smoother gradients). Never downloads.
    """
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg', got {pool!r}")
    names = layer_names(arch)
    wanted = list(dict.fromkeys(layers))
    if not wanted:
        raise ValueError("ask for at least one layer (e.g. relu4_1)")
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"{arch} has no layer(s) {unknown}; valid names: {', '.join(names)}")
    depth = max(names.index(n) for n in wanted) + 1
    features = _make_features(arch, depth, pool)

    if weights == DEFAULT_WEIGHTS:
        weights = arch
    if weights is None:
        _init_like_torchvision(features)
    else:
        path = weights_registry.resolve(weights, sha256=sha256)  # WeightsNotFound says how to stage them
        label = weights if str(path) == weights else f"{weights} ({path})"
        # memory-mapped: the classifier of a full torchvision VGG file (~500 MB) is then never read
        state = weights_registry.load_checkpoint(path, f"VGG weights {label}", mmap=True)
        picked = _features_state_dict(state, depth, label)
        try:
            missing, unexpected = features.load_state_dict(picked, strict=False)
        except RuntimeError as exc:  # size mismatch: another architecture's weights
            first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
            raise ValueError(f"VGG weights {label} do not fit {arch} ({first.rstrip('.')})") from None
        if missing:
            raise ValueError(
                f"VGG weights {label} lack {len(missing)} tensor(s) {arch} needs up to "
                f"{names[depth - 1]} (e.g. {missing[0]!r}): is it a torchvision {arch} state dict?"
            )
        del unexpected  # only features.N.weight/bias below depth were picked
    encoder = VGGEncoder(features, names, wanted)
    encoder.requires_grad_(False)
    return encoder.eval()


def vgg19_encoder(layers: Iterable[str], weights: str | None = "vgg19", *, pool: str = "max") -> VGGEncoder:
    """VGG-19 encoder (see :func:`vgg_encoder`)."""
    return vgg_encoder("vgg19", layers, weights, pool=pool)


def vgg16_encoder(layers: Iterable[str], weights: str | None = "vgg16", *, pool: str = "max") -> VGGEncoder:
    """VGG-16 encoder (see :func:`vgg_encoder`)."""
    return vgg_encoder("vgg16", layers, weights, pool=pool)
