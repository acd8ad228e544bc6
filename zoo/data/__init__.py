"""Datasets and the one loader every method uses.

Registered datasets (``load_dataset(name, **options)``):

- ``checkerboard`` (alias ``toy``) and ``gmm``: 2D toy points; options ``n``, ``seed``.
- ``digits``: scikit-learn's 8×8 digits; option ``split`` (``train``/``test``/``all``).
- ``cifar10``: CIFAR-10 train split; options ``root``, ``download``.
- ``folder``: any folder of images; options ``path``, ``resolution``. One subfolder per class
  (torchvision's ``ImageFolder`` layout) labels the images.
- ``imagenet64``: ImageNet 64×64 (the official ``train_data_batch_*.npz`` files or an
  ``ImageFolder``), streamed from its HDF5 cache; option ``root``.
- ``lsun-bedroom256``, ``lsun-cat256``: LSUN at 256×256 from a folder of images; option ``path``.
"""

from zoo.data.datasets import (
    DataCacheError,
    Dataset,
    DatasetNotFoundError,
    DatasetOptionError,
    data_dir,
    dataset_sigma_data,
    load_dataset,
    with_checked_options,
)
from zoo.data.images import cifar10, digits, folder, imagenet64, lsun_bedroom256, lsun_cat256
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
    "imagenet64": (imagenet64, "imagenet64"),
    "lsun-bedroom256": (lsun_bedroom256, "lsun256"),
    "lsun-cat256": (lsun_cat256, "lsun256"),
}

__all__ = [
    "BatchLoader",
    "DataCacheError",
    "Dataset",
    "DatasetNotFoundError",
    "DatasetOptionError",
    "data_dir",
    "dataset_sigma_data",
    "load_dataset",
]


@hookimpl
def register_datasets(register):
    for name, (loader, scale) in DATASETS.items():
        checked = with_checked_options(name, loader)
        checked.scale = scale
        register(name, checked)
