"""The HDF5 cache of image datasets: converted once, verified on every load.

A cache file holds ``images`` (uint8 ``[N, C, H, W]``, values 0..``max_value``, stored
contiguously so that it can be memory-mapped), optionally ``labels`` (int64 ``[N]``), and the
attributes ``name``, ``resolution``, ``channels``, ``max_value``, ``format_version`` and
``checksum`` (sha256 of the image bytes then the label bytes). Files are written and verified
block by block, so a dataset larger than memory (ImageNet 64×64: 16 GB of uint8) never has to
fit in it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from zoo.data.datasets import DataCacheError
from zoo.files import temporary_file

FORMAT_VERSION = 1
BLOCK_ROWS = 4096  # images hashed (and copied) per block when a file is verified


@dataclass
class CachedImages:
    images: np.ndarray  # uint8 [N, C, H, W]; a read-only np.memmap of the file when streamed
    labels: np.ndarray | None  # int64 [N]
    max_value: int
    checksum: str


def write_images(path, images: np.ndarray, labels: np.ndarray | None, *, name: str,
                 max_value: int = 255) -> str:
    """Write one in-memory array (and labels) as a cache file; returns the checksum."""
    return write_image_batches(path, [(images, labels)], count=len(images), name=name,
                               max_value=max_value)


def write_image_batches(path, batches: Iterable[tuple[np.ndarray, np.ndarray | None]], *,
                        count: int, name: str, max_value: int = 255) -> str:
    """Write ``(images [n, C, H, W], labels [n] or None)`` batches, ``count`` images in all, as
    one cache file, atomically (temporary file in the same folder, then rename), holding one
    batch in memory at a time.

    Every batch has labels or none has. Returns the checksum.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    digest, labels = hashlib.sha256(), []
    try:
        with h5py.File(tmp, "w") as f:
            stored = None
            for images, batch_labels in batches:
                images = np.ascontiguousarray(images, dtype=np.uint8)
                if images.ndim != 4 or images.shape[2] != images.shape[3]:
                    raise ValueError(f"expected square images [N, C, H, W], got shape "
                                     f"{images.shape}")
                if stored is None:
                    stored = f.create_dataset("images", shape=(count, *images.shape[1:]),
                                              dtype=np.uint8)
                    has_labels, start = batch_labels is not None, 0
                if (batch_labels is not None) != has_labels or images.shape[1:] != stored.shape[1:]:
                    raise ValueError(f"batches of {name!r} differ in image shape or in having "
                                     "labels")
                if start + len(images) > count:
                    raise ValueError(f"more than the {count} images announced for {name!r}")
                stored[start : start + len(images)] = images
                start += len(images)
                digest.update(images.tobytes())
                if has_labels:
                    labels.append(np.asarray(batch_labels, dtype="<i8"))
            if stored is None or start != count:
                raise ValueError(f"{0 if stored is None else start} images for {name!r}, "
                                 f"{count} announced")
            if has_labels:
                labels = np.ascontiguousarray(np.concatenate(labels))
                f.create_dataset("labels", data=labels)
                digest.update(labels.tobytes())
            checksum = digest.hexdigest()
            f.attrs.update(name=name, resolution=stored.shape[-1], channels=stored.shape[1],
                           max_value=max_value, format_version=FORMAT_VERSION, checksum=checksum)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checksum


def read_images(path, *, resolution: int, channels: int,
                in_memory_bytes: float = math.inf) -> CachedImages:
    """Read and verify a cache file: its checksum and that it holds ``channels×res×res`` images.

    Images up to ``in_memory_bytes`` as float32 come back as an array; larger ones stay in the
    file, memory-mapped (``np.memmap`` of the contiguous ``images``, read by
    :class:`StreamedImages`: the OS pages in what a batch touches). The checksum is computed
    block by block.
    """
    try:
        with h5py.File(path, "r") as f:
            images = f["images"]
            labels = f["labels"][...] if "labels" in f else None
            attrs = dict(f.attrs)
            stored_checksum = str(attrs["checksum"])
            max_value = int(attrs["max_value"])
            shape, offset = images.shape, images.id.get_offset()
            contiguous = offset is not None and images.compression is None
    except (OSError, KeyError) as exc:
        raise DataCacheError(
            f"unreadable HDF5 cache file {path}: {exc}; delete it to rebuild"
        ) from exc
    if attrs.get("format_version") != FORMAT_VERSION:
        raise DataCacheError(
            f"HDF5 cache file {path} has format version {attrs.get('format_version')}, this zoo "
            f"writes version {FORMAT_VERSION}; delete it to rebuild"
        )
    expected = (channels, resolution, resolution)
    found = (int(attrs["channels"]), int(attrs["resolution"]), int(attrs["resolution"]))
    if len(shape) != 4 or shape[1:] != expected or found != expected:
        raise DataCacheError(
            f"HDF5 cache file {path} holds images of shape {shape[1:]} (resolution "
            f"{found[1]}, channels {found[0]}) but resolution {resolution}, channels {channels} "
            "was requested; delete it to rebuild"
        )
    if not contiguous:
        raise DataCacheError(f"HDF5 cache file {path} does not store its images contiguously; "
                             "delete it to rebuild")
    try:
        mapped = np.memmap(path, np.uint8, "r", offset=offset, shape=shape)
    except (OSError, ValueError) as exc:
        raise DataCacheError(f"unreadable HDF5 cache file {path}: {exc}; delete it to rebuild"
                             ) from exc
    digest = hashlib.sha256()
    for start in range(0, len(mapped), BLOCK_ROWS):
        digest.update(mapped[start : start + BLOCK_ROWS].tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    if digest.hexdigest() != stored_checksum:
        raise DataCacheError(
            f"corrupt HDF5 cache file {path}: checksum mismatch; delete it to rebuild"
        )
    in_memory = 4 * mapped.size <= in_memory_bytes
    return CachedImages(np.array(mapped) if in_memory else mapped, labels, max_value,
                        stored_checksum)


class StreamedImages:
    """Images left in their HDF5 cache file, read on demand as float32 in [-1, 1].

    ``images`` is a read-only ``np.memmap`` of the file's contiguous uint8 ``images``; ``x[i]``,
    ``x[a:b]`` and ``x[indices]`` (a tensor, array or list) copy only those rows, so memory holds
    a batch, never the whole array.
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, images: np.memmap, max_value: int):
        self.images, self.max_value = images, max_value

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.images.shape)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        u8 = np.array(self.images[index])  # a copy of the rows asked for
        return torch.from_numpy(u8).float().div_(self.max_value).mul_(2).sub_(1)
