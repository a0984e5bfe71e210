"""Content images for training: listed from a folder or a COCO dataset (local or ``s3://``), read on demand.

- :func:`list_content_images` turns ``--data`` into a sorted list of image URIs: a COCO JSON (its
  ``images[].file_name`` under an images root) or every image file below a folder / S3 prefix.
- :func:`sample_positions` says which images a worker trains on at a step. Images are drawn from a
  seeded permutation per epoch, the global batch of step ``s`` being positions
  ``[s·B·W, (s+1)·B·W)`` of the concatenated epochs, rank ``r`` taking its ``B`` of them. It depends
  only on (seed, step, rank, world size), so a resumed run sees exactly the images the
  uninterrupted run would have seen, with no sampler state to save.
- :class:`ContentImages` reads, decodes (:func:`nstray.data.images.decode_image`, any pixel mode)
  and crops one image per position (:func:`~nstray.train.style_training.fit_crop`, crop offset
  seeded by the position). An unreadable image is replaced by the next one in the list, with a
  warning; many in a row stop the run with the reasons.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from nstray import storage
from nstray.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageDecodeError, decode_image
from nstray.train.style_training import fit_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "TrainDataError",
    "list_content_images",
    "sample_positions",
    "StepBatches",
    "ContentImages",
]

log = logging.getLogger(__name__)

_MAX_SKIPS = 16


class TrainDataError(ValueError):
    """No usable training images (or too many unreadable ones); the message says where and why."""


def list_content_images(data: str, images_root: str | None = None) -> list[str]:
    """Sorted URIs of the content images of ``data``: a COCO ``.json`` (images under ``images_root``; default:
    the JSON's folder, or its ``images/`` subfolder where the files are), or every image file below a
    folder / ``s3://`` prefix."""
    if data.lower().endswith(".json"):
        from nstray.data.coco import DatasetError, load_coco, read_records

        try:
            coco = load_coco(data)
        except DatasetError as exc:
            raise TrainDataError(str(exc)) from None
        root = images_root or _default_images_root(data, coco)
        records, errors = read_records(coco, root, check_files=False, source=data)
        uris = sorted({r.uri for r in records})
        if not uris:
            why = f"; first problem: {errors[0]}" if errors else ""
            raise TrainDataError(f"{data}: no usable images (images root {root}){why}")
        return uris
    if images_root is not None:
        raise TrainDataError(f"--images is for a COCO annotations file; {data} is a folder")
    from nstray.data.coco import DatasetError, list_image_files

    try:
        return list_image_files(data)
    except DatasetError as exc:
        raise TrainDataError(str(exc)) from None


def _default_images_root(annotations: str, coco: dict) -> str:
    """The folder of the JSON, or its ``images/`` subfolder when the first image is found there instead."""
    import os

    folder = annotations.rsplit("/", 1)[0] if storage.is_s3(annotations) else os.path.dirname(
        os.path.abspath(storage.parse(annotations).path))
    first = next((e.get("file_name") for e in coco.get("images", []) if isinstance(e, dict)), None)
    if isinstance(first, str) and not storage.exists(storage.join(folder, first)):
        sub = storage.join(folder, "images")
        if storage.exists(storage.join(sub, first)):
            return sub
    return folder


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & 0x7FFF_FFFF_FFFF_FFFF)
    return tuple(torch.randperm(n, generator=g).tolist())


def sample_positions(n: int, step: int, batch_size: int, rank: int, world_size: int, seed: int) -> list[tuple[int, int]]:
    """``(image index, global position)`` of the ``batch_size`` images rank ``rank`` trains on at ``step`` (0-based)."""
    if n < 1:
        raise ValueError("no images")
    start = (step * world_size + rank) * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, i = divmod(pos, n)
        out.append((_permutation(n, seed, epoch)[i], pos))
    return out


class StepBatches(Sampler[list[tuple[int, int]]]):
    """Batch sampler for steps ``start .. stop-1``: yields :func:`sample_positions` of each step."""

    def __init__(self, n: int, start: int, stop: int, batch_size: int, rank: int, world_size: int, seed: int) -> None:
        self.n, self.start, self.stop = n, start, stop
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            yield sample_positions(self.n, step, self.batch_size, self.rank, self.world_size, self.seed)


class ContentImages(Dataset):
    """``dataset[(index, position)] -> float[3, size, size]``: image ``index`` read, decoded and cropped.

    The crop offset comes from ``(seed, position)``, so it is the same on every rerun.
    """

    def __init__(self, uris: Sequence[str], size: int, *, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if not uris:
            raise TrainDataError("no training images")
        self.uris = list(uris)
        self.size = int(size)
        self.seed = int(seed)
        self.max_pixels = int(max_pixels)

    def __len__(self) -> int:
        return len(self.uris)

    def load(self, index: int) -> Tensor:
        """Read and decode image ``index`` and take its centre crop (no randomness)."""
        return self._read(index, 0.5)

    def _read(self, index: int, offset: float) -> Tensor:
        uri = self.uris[index]
        image = decode_image(storage.read_bytes(uri), name=uri, max_pixels=self.max_pixels)
        return fit_crop(image, self.size, offset)

    def __getitem__(self, key: tuple[int, int]) -> Tensor:
        index, position = key
        offset = random.Random(self.seed * 1_000_003 + position).random()
        problems = []
        for k in range(_MAX_SKIPS):
            i = (index + k) % len(self.uris)
            try:
                return self._read(i, offset)
            except (storage.StorageError, ImageDecodeError) as exc:
                problems.append(str(exc))
                log.warning("skipping unreadable training image: %s", exc)
        raise TrainDataError(f"{_MAX_SKIPS} training images in a row are unreadable; e.g. {problems[0]}")
