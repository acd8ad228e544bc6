"""The HDF5 cache of image datasets: converted once, verified on every load.

A cache file holds ``images`` (uint8 ``[N, C, H, W]``, values 0..``max_value``), optionally
``labels`` (int64 ``[N]``), and the attributes ``name``, ``resolution``, ``channels``,
``max_value``, ``format_version`` and ``checksum`` (sha256 of the image bytes then the label bytes).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from zoo.data.datasets import DataCacheError, sha256_of

FORMAT_VERSION = 1


@dataclass
class CachedImages:
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray | None  # int64 [N]
    max_value: int
    checksum: str


def write_images(path, images: np.ndarray, labels: np.ndarray | None, *, name: str,
                 max_value: int = 255) -> str:
    """Write a cache file atomically (temporary file in the same folder, then rename).

    Returns the checksum.
    """
    path = Path(path)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square images [N, C, H, W], got shape {images.shape}")
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype="<i8")
    checksum = sha256_of(images, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images)
            if labels is not None:
                f.create_dataset("labels", data=labels)
            f.attrs.update(name=name, resolution=images.shape[-1], channels=images.shape[1],
                           max_value=max_value, format_version=FORMAT_VERSION, checksum=checksum)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checksum


def read_images(path, *, resolution: int, channels: int) -> CachedImages:
    """Read and verify a cache file: its checksum and that it holds ``channels×res×res`` images."""
    try:
        with h5py.File(path, "r") as f:
            images = f["images"][...]
            labels = f["labels"][...] if "labels" in f else None
            attrs = dict(f.attrs)
            stored_checksum = str(attrs["checksum"])
            max_value = int(attrs["max_value"])
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
    if images.ndim != 4 or images.shape[1:] != expected or found != expected:
        raise DataCacheError(
            f"HDF5 cache file {path} holds images of shape {images.shape[1:]} (resolution "
            f"{found[1]}, channels {found[0]}) but resolution {resolution}, channels {channels} "
            "was requested; delete it to rebuild"
        )
    if sha256_of(images, labels) != stored_checksum:
        raise DataCacheError(
            f"corrupt HDF5 cache file {path}: checksum mismatch; delete it to rebuild"
        )
    return CachedImages(images, labels, max_value, stored_checksum)
