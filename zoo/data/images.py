"""Image datasets: digits, CIFAR-10, ImageNet 64×64, LSUN and any folder of images, each cached
once as HDF5.

The cache lives in ``$ZOO_DATA_DIR/hdf5/<name>-<resolution>[-<key>].h5``; once it exists the
source is not read again. Images come back as float32 ``[N, C, H, W]`` scaled exactly to [-1, 1]:
in memory up to :data:`IN_MEMORY_BYTES` of float32 (digits, CIFAR-10), beyond that as
:class:`~zoo.data.hdf5.StreamedImages` that read each batch from the file (ImageNet 64×64 is
63 GB as float32).
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from zoo.data.datasets import Dataset, DatasetNotFoundError, DatasetOptionError, data_dir
from zoo.data.hdf5 import StreamedImages, read_images, write_image_batches

DIGITS_SPLITS = ("train", "test", "all", "fit", "val")
DIGITS_TRAIN = 1500  # of 1797; the other 297 are "test"
DIGITS_VAL = 297  # the last of the training split: "val", what tuning scores on; the rest "fit"
DIGITS_SPLIT_SEED = 0
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IN_MEMORY_BYTES = 2**31  # larger datasets (as float32) stay in their HDF5 file
FOLDER_BATCH = 1024  # images decoded per batch while a folder is converted
IMAGENET64_FILES = "train_data_batch_*.npz"
IMAGENET64_CLASSES = 1000
IMAGENET64_SOURCE = ("the official downsampled ImageNet 64x64 training files (Chrabaszcz et al. "
                     "2017, Imagenet64_train_npz from https://image-net.org/download-images)")

Arrays = tuple[np.ndarray, np.ndarray | None]  # uint8 [N, C, H, W], int64 [N] or None
Source = tuple[int, Iterable[Arrays]]  # the number of images, then their batches


def cache_path(name: str, resolution: int, key: str | None = None) -> Path:
    stem = f"{name}-{resolution}" + (f"-{key}" if key else "")
    return data_dir() / "hdf5" / f"{stem}.h5"


def cached_image_dataset(name: str, path: Path, build: Callable[[], Source], *,
                         resolution: int, channels: int, num_classes: int = 0,
                         max_value: int = 255) -> Dataset:
    """Build the cache file from ``build()`` (the number of images and their batches) unless it
    exists, then load it from the file: in memory up to :data:`IN_MEMORY_BYTES` as float32,
    else streamed."""
    if not path.exists():
        count, batches = build()
        write_image_batches(path, batches, count=count, name=name, max_value=max_value)
    cached = read_images(path, resolution=resolution, channels=channels,
                         in_memory_bytes=IN_MEMORY_BYTES)
    if isinstance(cached.images, np.memmap):
        x = StreamedImages(cached.images, cached.max_value)
    else:
        x = torch.from_numpy(cached.images).float().div_(cached.max_value).mul_(2).sub_(1)
    labels = None if cached.labels is None else torch.from_numpy(cached.labels).long()
    return Dataset(name, x, labels, cached.checksum, "image", num_classes=num_classes,
                   data_range=(-1.0, 1.0))


def digits(split: str = "train") -> Dataset:
    """scikit-learn's bundled 8×8 digits (values 0..16, 1 channel, labels 0–9).

    ``split``: ``"train"`` (default; 1500 images), ``"test"`` (the other 297) or ``"all"``
    (1797). The split is the first 1500 / last 297 of ``torch.randperm(1797)`` seeded with 0.
    Tuning divides the training split: ``"fit"`` (its first 1203) trains the trials, ``"val"``
    (its last 297) scores them; the test split is never seen while tuning.
    """
    if split not in DIGITS_SPLITS:
        raise DatasetOptionError(f"digits: split must be one of {DIGITS_SPLITS}, got {split!r}")

    def build() -> Source:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = bunch.images.astype(np.uint8)[:, None]
        generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
        order = torch.randperm(len(images), generator=generator).numpy()
        parts = {"train": order[:DIGITS_TRAIN], "test": order[DIGITS_TRAIN:],
                 "fit": order[:DIGITS_TRAIN - DIGITS_VAL],
                 "val": order[DIGITS_TRAIN - DIGITS_VAL:DIGITS_TRAIN]}
        keep = parts.get(split, np.arange(len(images)))
        return len(keep), [(images[keep], bunch.target.astype(np.int64)[keep])]

    return cached_image_dataset("digits", cache_path("digits", 8, split), build, resolution=8,
                                channels=1, num_classes=10, max_value=16)


def _cifar10_missing(root: Path, reason: Exception) -> str:
    """What is wrong with CIFAR-10 in ``root``: absent, or present but damaged (torchvision's md5
    check of the extracted batches, or an archive that does not extract), and what to do."""
    get = (f"Put {CIFAR10_ARCHIVE} (from {CIFAR10_URL}) into {root}, or its extracted folder as "
           f"{root / CIFAR10_FOLDER}; or let zoo download it: dataset option download=True (CLI: "
           "--dataset-options '{\"download\": true}').")
    found = [p for p in (root / CIFAR10_FOLDER, root / CIFAR10_ARCHIVE) if p.exists()]
    if found:
        return (f"CIFAR-10 in {root} is damaged or incomplete: {', '.join(map(str, found))} "
                f"failed to extract or torchvision's md5 check ({type(reason).__name__}: "
                f"{reason}). Delete it and get it again: {get}")
    return f"CIFAR-10 not found in {root} ({type(reason).__name__}: {reason}). {get}"


def cifar10(root: str | None = None, download: bool = False) -> Dataset:
    """CIFAR-10's training split (50,000 32×32 RGB images, labels 0–9) via torchvision.

    ``root`` defaults to ``$ZOO_DATA_DIR/cifar10``; it must hold ``cifar-10-python.tar.gz`` or
    the extracted ``cifar-10-batches-py``, unless ``download=True``.
    """
    root = Path(root).expanduser() if root else data_dir() / "cifar10"

    def build() -> Source:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import extract_archive

        try:
            if not (root / CIFAR10_FOLDER).is_dir() and (root / CIFAR10_ARCHIVE).is_file():
                extract_archive(str(root / CIFAR10_ARCHIVE), str(root))
            source = CIFAR10(str(root), train=True, download=download)
        except (RuntimeError, OSError, tarfile.TarError) as exc:  # missing, corrupt or offline
            raise DatasetNotFoundError(_cifar10_missing(root, exc)) from exc
        return len(source.data), [(source.data.transpose(0, 3, 1, 2),
                                   np.asarray(source.targets, dtype=np.int64))]

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


def class_folders(root: Path, files: list[Path]) -> list[str] | None:
    """The class names of an image folder laid out as torchvision's ``ImageFolder``: one
    subfolder per class (images at any depth below it), sorted by name; ``None`` when an image
    lies directly in ``root`` (no classes)."""
    if any(f.parent == root for f in files):
        return None
    return sorted({f.relative_to(root).parts[0] for f in files})


def _listing_key(root: Path, files: list[Path], *extra: str) -> str:
    """Cache key of a source: its absolute path, ``extra`` and its files' names, sizes, mtimes."""
    listing = [str(root), *extra] + [
        f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files
    ]
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:16]


def _image_folder(name: str, root: Path, resolution: int) -> Dataset:
    """The images under ``root`` at ``resolution``², labelled by class subfolder when every
    image lies in one (:func:`class_folders`), converted :data:`FOLDER_BATCH` at a time."""
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    files = _image_files(root)
    if not files:
        raise DatasetNotFoundError(
            f"image folder {root} holds no images (searched recursively for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    classes = class_folders(root, files)
    extra = ("classes:" + "/".join(classes),) if classes else ()

    def batches() -> Iterable[Arrays]:
        index = {c: i for i, c in enumerate(classes or ())}
        for start in range(0, len(files), FOLDER_BATCH):
            batch = files[start : start + FOLDER_BATCH]
            labels = None if classes is None else np.array(
                [index[f.relative_to(root).parts[0]] for f in batch], dtype=np.int64)
            yield np.stack([_square_rgb(f, resolution) for f in batch]), labels

    def build() -> Source:
        return len(files), batches()

    return cached_image_dataset(name, cache_path(name, resolution,
                                                 _listing_key(root, files, *extra)),
                                build, resolution=resolution, channels=3,
                                num_classes=len(classes or ()))


def folder(path: str | None = None, resolution: int = 32) -> Dataset:
    """Every png/jpg/jpeg/bmp/webp image under ``path`` (recursively), RGB, at ``resolution``².

    With one subfolder per class and no image directly in ``path`` (torchvision's
    ``ImageFolder`` layout) the images are labelled 0, 1, ... by their subfolder's name in
    sorted order. 16-bit images are scaled from their full range; transparent pixels are
    composited onto white. Other files (e.g. ``.gif``) are skipped, counted in one warning.

    The cache key hashes the folder's absolute path and its files' names, sizes and mtimes, so
    adding or editing an image builds a new cache file.
    """
    if path is None:
        raise DatasetOptionError("dataset 'folder' needs option path (a folder of images)")
    if resolution < 1:
        raise DatasetOptionError(f"folder: resolution must be >= 1, got {resolution}")
    return _image_folder("folder", Path(path).expanduser().resolve(), resolution)


def _batch_number(path: Path) -> int:
    return int(re.search(r"(\d+)\.npz$", path.name).group(1))


def _imagenet64_count(files: list[Path]) -> int:
    """The number of images in the npz batches (read from their small ``labels``)."""
    total = 0
    for file in files:
        with np.load(file) as npz:
            total += len(npz["labels"]) if "labels" in npz else 0
    return total


def _imagenet64_batches(files: list[Path]) -> Iterable[Arrays]:
    """The official npz batches: ``data`` uint8 [n, 12288] (the red, green and blue 64×64
    planes in turn, Chrabaszcz et al. 2017) and 1-based ``labels``; yields 0-based labels."""
    for file in files:
        with np.load(file) as npz:
            if "data" not in npz or "labels" not in npz:
                raise DatasetNotFoundError(f"{file} holds {', '.join(npz.files)}, not the "
                                           f"'data' and 'labels' of {IMAGENET64_SOURCE}")
            data, labels = npz["data"], np.asarray(npz["labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 64 * 64:
            raise DatasetNotFoundError(f"{file}: 'data' is {data.dtype} {data.shape}, expected "
                                       f"uint8 (N, 12288): {IMAGENET64_SOURCE}")
        if labels.shape != (len(data),) or not (
                len(labels) == 0 or 1 <= labels.min() <= labels.max() <= IMAGENET64_CLASSES):
            raise DatasetNotFoundError(f"{file}: 'labels' must be {len(data)} class numbers in "
                                       f"1..{IMAGENET64_CLASSES}")
        yield data.reshape(-1, 3, 64, 64), labels - 1


def imagenet64(root: str | None = None) -> Dataset:
    """ImageNet 64×64 (1,281,167 training images, 1000 classes, labels 0..999), streamed from
    its HDF5 cache.

    ``root`` (default ``$ZOO_DATA_DIR/imagenet64``) holds either the official downsampled
    training files ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` (directly or in
    their ``Imagenet64_train_npz`` folder; labels 1..1000 become 0..999), or one folder of
    images per class (resized to 64×64, classes in sorted order).
    """
    root = Path(root).expanduser().resolve() if root else data_dir() / "imagenet64"
    for where in (root, root / "Imagenet64_train_npz"):
        files = sorted(where.glob(IMAGENET64_FILES), key=_batch_number)
        if files:
            return cached_image_dataset(
                "imagenet64", cache_path("imagenet64", 64, _listing_key(where, files)),
                lambda files=files: (_imagenet64_count(files), _imagenet64_batches(files)),
                resolution=64, channels=3,
                num_classes=IMAGENET64_CLASSES)
    images = _image_files(root) if root.is_dir() else []
    if images and class_folders(root, images):
        return _image_folder("imagenet64", root, 64)
    raise DatasetNotFoundError(
        f"ImageNet 64x64 not found in {root}: put {IMAGENET64_SOURCE}, train_data_batch_1.npz "
        f"... train_data_batch_10.npz, into {root}, or one folder of images per class "
        "(ImageFolder layout); or pass the dataset option root"
    )


def _lsun(category: str, path: str | None) -> Dataset:
    """LSUN ``category`` at 256×256 from a folder of its images (center-cropped, resized)."""
    name = f"lsun-{category}256"
    root = Path(path).expanduser().resolve() if path else data_dir() / name
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"LSUN {category} not found: put its training images (e.g. exported from the "
            f"{category}_train_lmdb of https://github.com/fyu/lsun) into {root}, or pass the "
            "dataset option path"
        )
    return _image_folder(name, root, 256)


def lsun_bedroom256(path: str | None = None) -> Dataset:
    """LSUN bedroom at 256×256 from a folder of images (default
    ``$ZOO_DATA_DIR/lsun-bedroom256``)."""
    return _lsun("bedroom", path)


def lsun_cat256(path: str | None = None) -> Dataset:
    """LSUN cat at 256×256 from a folder of images (default ``$ZOO_DATA_DIR/lsun-cat256``)."""
    return _lsun("cat", path)
