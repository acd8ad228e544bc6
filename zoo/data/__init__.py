"""Datasets and the one loader every method uses.

Registered datasets (``load_dataset(name, **options)``):

- ``checkerboard`` (alias ``toy``) and ``gmm``: 2D toy points; options ``n``, ``seed``.
- ``digits``: scikit-learn's 8×8 digits; option ``split`` (``train``/``test``/``all``).
- ``cifar10``: CIFAR-10 train split; options ``root``, ``download``.
- ``folder``: any folder of images; options ``path``, ``resolution``.
"""

from zoo.data.datasets import (
    DataCacheError,
    Dataset,
    DatasetNotFoundError,
    DatasetOptionError,
    data_dir,
    load_dataset,
    with_checked_options,
)
from zoo.data.images import cifar10, digits, folder
from zoo.data.loader import BatchLoader
from zoo.data.toy import checkerboard, gmm
from zoo.hookspecs import hookimpl

# name: (loader, preset scale — see zoo.methods.preset_scale)
DATASETS = {
    "checkerboard": (checkerboard, "toy"),
    "toy": (checkerboard, "toy"),
    "gmm": (gmm, "toy"),
    "digits": (digits, "digits"),
    "cifar10": (cifar10, "cifar10"),
    "folder": (folder, "digits"),
}

__all__ = [
    "BatchLoader",
    "DataCacheError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetOptionError",
    "data_dir",
    "load_dataset",
]


@hookimpl
def register_datasets(register):
    for name, (loader, scale) in DATASETS.items():
        checked = with_checked_options(name, loader)
        checked.scale = scale
        register(name, checked)
