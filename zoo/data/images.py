"""Image datasets: digits, CIFAR-10 and any folder of images, each cached once as HDF5.

The cache lives in ``$ZOO_DATA_DIR/hdf5/<name>-<resolution>[-<key>].h5``; once it exists the
source is not read again. Images come back as float32 ``[N, C, H, W]`` scaled exactly to [-1, 1].
"""

from __future__ import annotations

import hashlib
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoo.data.datasets import Dataset, DatasetNotFoundError, DatasetOptionError, data_dir
from zoo.data.hdf5 import read_images, write_images

DIGITS_SPLITS = ("train", "test", "all")
DIGITS_TRAIN = 1500  # of 1797; the other 297 are "test"
DIGITS_SPLIT_SEED = 0
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

Arrays = tuple[np.ndarray, np.ndarray | None]  # uint8 [N, C, H, W], int64 [N] or None


def cache_path(name: str, resolution: int, key: str | None = None) -> Path:
    stem = f"{name}-{resolution}" + (f"-{key}" if key else "")
    return data_dir() / "hdf5" / f"{stem}.h5"


def cached_image_dataset(name: str, path: Path, build: Callable[[], Arrays], *, resolution: int,
                         channels: int, num_classes: int = 0, max_value: int = 255) -> Dataset:
    """Build the cache file with ``build()`` unless it exists, then load it from the file."""
    if not path.exists():
        images, labels = build()
        write_images(path, images, labels, name=name, max_value=max_value)
    cached = read_images(path, resolution=resolution, channels=channels)
    x = torch.from_numpy(cached.images).float().div_(cached.max_value).mul_(2).sub_(1)
    labels = None if cached.labels is None else torch.from_numpy(cached.labels).long()
    return Dataset(name, x, labels, cached.checksum, "image", num_classes=num_classes,
                   data_range=(-1.0, 1.0))


def digits(split: str = "train") -> Dataset:
    """scikit-learn's bundled 8×8 digits (values 0..16, 1 channel, labels 0–9).

    ``split``: ``"train"`` (default; 1500 images), ``"test"`` (the other 297) or ``"all"``
    (1797). The split is the first 1500 / last 297 of ``torch.randperm(1797)`` seeded with 0.
    """
    if split not in DIGITS_SPLITS:
        raise DatasetOptionError(f"digits: split must be one of {DIGITS_SPLITS}, got {split!r}")

    def build() -> Arrays:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.images.astype(np.uint8)[:, None]
        generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
        order = torch.randperm(len(images), generator=generator).numpy()
        parts = {"train": order[:DIGITS_TRAIN], "test": order[DIGITS_TRAIN:]}
        keep = parts.get(split, np.arange(len(images)))
        return images[keep], bunch.target.astype(np.int64)[keep]

    return cached_image_dataset("digits", cache_path("digits", 8, split), build, resolution=8,
                                channels=1, num_classes=10, max_value=16)


def _cifar10_missing(root: Path, reason: Exception) -> str:
    return (
        f"CIFAR-10 not found in {root} ({type(reason).__name__}: {reason}). Put "
        f"{CIFAR10_ARCHIVE} (from {CIFAR10_URL}) into {root}, or its extracted folder as "
        f"{root / CIFAR10_FOLDER}; or let zoo download it: download=True (CLI: --download)."
    )


def cifar10(root: str | None = None, download: bool = False) -> Dataset:
    """CIFAR-10's training split (50,000 32×32 RGB images, labels 0–9) via torchvision.

    ``root`` defaults to ``$ZOO_DATA_DIR/cifar10``; it must hold ``cifar-10-python.tar.gz`` or
    the extracted ``cifar-10-batches-py``, unless ``download=True``.
    """
    root = Path(root).expanduser() if root else data_dir() / "cifar10"

    def build() -> Arrays:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import extract_archive

        try:
            if not (root / CIFAR10_FOLDER).is_dir() and (root / CIFAR10_ARCHIVE).is_file():
                extract_archive(str(root / CIFAR10_ARCHIVE), str(root))
            source = CIFAR10(str(root), train=True, download=download)
        except (RuntimeError, OSError, tarfile.TarError) as exc:  # missing, corrupt or offline
            raise DatasetNotFoundError(_cifar10_missing(root, exc)) from exc
        return source.data.transpose(0, 3, 1, 2), np.asarray(source.targets, dtype=np.int64)

    return cached_image_dataset("cifar10", cache_path("cifar10", 32), build, resolution=32,
                                channels=3, num_classes=10)


def _image_files(root: Path) -> list[Path]:
    """The images under ``root``; the other files (hidden ones aside) are named in one warning."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = Counter(p.suffix.lower() or "(no extension)" for p in files
                      if p.suffix.lower() not in IMAGE_SUFFIXES)
    if skipped:
        kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(skipped.items()))
        warnings.warn(f"folder {root}: skipped {sum(skipped.values())} file(s) that are not "
                      f"images zoo reads ({kinds}); accepted: {', '.join(IMAGE_SUFFIXES)}",
                      stacklevel=4)
    return images


def _to_rgb(image):
    """An 8-bit RGB copy of ``image``: 16-bit (and 32-bit integer) grey scaled from its full
    range 0..65535, transparency composited onto white."""
    from PIL import Image

    if image.mode.startswith("I"):  # "I;16…" or "I": integer grey, 16-bit from PNG
        grey = np.asarray(image, dtype=np.float64) * (255 / 65535)
        image = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def _square_rgb(file: Path, resolution: int) -> np.ndarray:
    """One image as uint8 ``[3, res, res]`` (:func:`_to_rgb`): center-cropped to a square,
    Lanczos-resized."""
    from PIL import Image, ImageOps

    try:
        with Image.open(file) as image:
            square = ImageOps.fit(_to_rgb(image), (resolution, resolution),
                                  method=Image.Resampling.LANCZOS)
    except OSError as exc:
        raise DatasetNotFoundError(f"cannot read image {file}: {exc}") from exc
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)


def folder(path: str | None = None, resolution: int = 32) -> Dataset:
    """Every png/jpg/jpeg/bmp/webp image under ``path`` (recursively), RGB, at ``resolution``².

    16-bit images are scaled from their full range; transparent pixels are composited onto white.
    Other files (e.g. ``.gif``) are skipped, counted in one warning.

    The cache key hashes the folder's absolute path and its files' names, sizes and mtimes, so
    adding or editing an image builds a new cache file.
    """
    if path is None:
        raise DatasetOptionError("dataset 'folder' needs option path (a folder of images)")
    if resolution < 1:
        raise DatasetOptionError(f"folder: resolution must be >= 1, got {resolution}")
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    files = _image_files(root)
    if not files:
        raise DatasetNotFoundError(
            f"image folder {root} holds no images (searched recursively for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    listing = [str(root)] + [
        f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files
    ]
    key = hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]

    def build() -> Arrays:
        return np.stack([_square_rgb(f, resolution) for f in files]), None

    return cached_image_dataset("folder", cache_path("folder", resolution, key), build,
                                resolution=resolution, channels=3)
