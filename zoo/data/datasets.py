"""The :class:`Dataset` record every loader returns, its errors, and name-based loading."""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_DIR_ENV = "ZOO_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """The source files of a dataset are missing; the message says what to put where."""


class DatasetOptionError(ValueError):
    """A dataset was given an option it does not accept, or a bad value for one."""


class DataCacheError(RuntimeError):
    """An HDF5 cache file is unreadable, corrupt, or holds other data than requested."""


@dataclass
class Dataset:
    """A dataset: its data, labels (int64 ``[N]``, 0..``num_classes``−1) and record.

    Images are float32 ``[N, C, H, W]`` in [-1, 1], a tensor in memory or, for datasets too large
    for it, :class:`~zoo.data.hdf5.StreamedImages` read from the HDF5 cache on indexing; points
    float32 ``[N, D]``. ``checksum`` is
    the sha256 of the stored data (and labels), so two runs on equal checksums saw equal data.
    ``sample_true(n, seed)`` (toy data only) draws fresh points from the true distribution.
    """

    name: str
    x: torch.Tensor  # or zoo.data.hdf5.StreamedImages
    labels: torch.Tensor | None
    checksum: str
    kind: str
    num_classes: int = 0
    data_range: tuple[float, float] | None = None
    sample_true: Callable[[int, int], torch.Tensor] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)


def data_dir() -> Path:
    """Root of downloaded data and caches: ``$ZOO_DATA_DIR``, default ``~/.cache/zoo``."""
    return Path(os.environ.get(DATA_DIR_ENV) or "~/.cache/zoo").expanduser()


def sha256_of(*arrays) -> str:
    """sha256 hex of the bytes of the given tensors / numpy arrays, in order (``None`` skipped)."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is not None:
            a = a.numpy() if isinstance(a, torch.Tensor) else a
            digest.update(a.tobytes())
    return digest.hexdigest()


def _type_name(hint) -> str:
    return " or ".join("None" if a is type(None) else getattr(a, "__name__", str(a))
                       for a in (typing.get_args(hint) or (hint,)))


def _fits(hint, value) -> bool:
    """Whether ``value`` has the annotated type ``hint`` (an int is a float; a bool is no int;
    a path-like is a str)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in typing.get_args(hint))
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    if hint is type(None):
        return value is None
    return not isinstance(hint, type) or isinstance(value, hint)


def with_checked_options(name: str, loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
    """Wrap ``loader`` so that an unknown option, or one of another type than the loader's
    annotation, raises an error naming the accepted ones."""
    accepted = list(inspect.signature(loader).parameters)
    hints = typing.get_type_hints(loader)

    @functools.wraps(loader)
    def load(**options) -> Dataset:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise DatasetOptionError(
                f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
        for key, value in options.items():
            if key in hints and not _fits(hints[key], value):
                raise DatasetOptionError(
                    f"dataset {name!r}: option {key} must be {_type_name(hints[key])}, got "
                    f"{value!r} ({type(value).__name__})"
                )
        return loader(**options)

    return load


def dataset_sigma_data(name: str) -> float:
    """σ_data (the standard deviation of the data) of the dataset registered as ``name``: what
    its loader declares as its ``sigma_data`` attribute (like ``scale``), else EDM's 0.5 (images
    in [-1, 1]). Method presets take their σ_data from here; ``--sigma-data`` overrides it."""
    import math

    from zoo import plugins
    from zoo.diffusion import SIGMA_DATA

    value = getattr(plugins.get("datasets", name), "sigma_data", None)
    if value is None:
        return SIGMA_DATA
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"dataset {name!r} declares sigma_data={value!r}; it must be a positive "
                         "finite number")
    return float(value)


def load_dataset(name: str, **options) -> Dataset:
    """Load the dataset registered as ``name`` (e.g. ``"checkerboard"``, ``"digits"``)."""
    from zoo import plugins

    return plugins.get("datasets", name)(**options)
