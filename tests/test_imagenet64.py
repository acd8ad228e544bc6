"""ImageNet 64×64 from the official npz batches, streamed from its HDF5 cache; class folders;
LSUN folders (offline, CPU, tiny fake files)."""

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import zoo.data.images
from zoo.data import BatchLoader, DatasetNotFoundError, load_dataset
from zoo.data.hdf5 import StreamedImages
from zoo.methods import preset_scale


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def write_official_batches(folder, sizes=(20, 17), seed=0):
    """Fake ``train_data_batch_<i>.npz`` in the official layout (Chrabaszcz et al. 2017):
    ``data`` uint8 (N, 12288) holding the red, green and blue 64×64 planes in turn, ``labels``
    1..1000. Returns the images as [N, 3, 64, 64] and the 1-based labels, in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i, n in enumerate(sizes, start=1):
        hwc = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        y = rng.integers(1, 1001, n)
        y[0] = 1000 if i == 1 else 1  # both ends of the label range
        data = np.concatenate([hwc[..., c].reshape(n, -1) for c in range(3)], axis=1)
        np.savez(folder / f"train_data_batch_{i}.npz", data=data, labels=list(y), mean=0)
        images.append(hwc.transpose(0, 3, 1, 2))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def test_official_npz_batches_shapes_labels_and_cache(data_dir):
    images, labels = write_official_batches(data_dir / "imagenet64" / "Imagenet64_train_npz")
    ds = load_dataset("imagenet64")
    assert (len(ds), ds.shape, ds.num_classes, ds.kind) == (37, (3, 64, 64), 1000, "image")
    assert torch.equal(ds.labels, torch.from_numpy(labels - 1))  # 0-based
    assert ds.labels.min() == 0 and ds.labels.max() == 999
    expected = torch.from_numpy(images).float() / 255 * 2 - 1
    torch.testing.assert_close(ds.x[torch.arange(37)], expected, rtol=0, atol=1e-6)
    caches = list((data_dir / "hdf5").glob("imagenet64-64-*.h5"))
    assert len(caches) == 1
    with h5py.File(caches[0]) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (37, 3, 64, 64)
        assert np.array_equal(f["images"][...], images)
        assert np.array_equal(f["labels"][...], labels - 1)
        assert f.attrs["checksum"] == ds.checksum
    (data_dir / "imagenet64" / "Imagenet64_train_npz" / "train_data_batch_1.npz").unlink()
    assert len(load_dataset("imagenet64")) == 17  # the listing changed: a new cache file
    assert len(list((data_dir / "hdf5").glob("imagenet64-64-*.h5"))) == 2


def test_large_datasets_are_read_batch_by_batch_from_the_file(data_dir, monkeypatch):
    """Beyond IN_MEMORY_BYTES the images stay in the cache file, memory-mapped; batches equal
    those of an in-memory copy."""
    write_official_batches(data_dir / "imagenet64")
    monkeypatch.setattr(zoo.data.images, "IN_MEMORY_BYTES", 0)  # as 63 GB would
    ds = load_dataset("imagenet64")
    assert isinstance(ds.x, StreamedImages) and isinstance(ds.x.images, np.memmap)
    cache = next((data_dir / "hdf5").glob("imagenet64-64-*.h5"))
    assert str(ds.x.images.filename) == str(cache) and ds.x.images.mode == "r"  # mapped
    assert len(ds) == 37 and ds.shape == (3, 64, 64)
    loader = BatchLoader(ds, 50, seed=3)  # larger than the dataset: repeats within a batch
    x, labels = next(loader)
    assert x.shape == (50, 3, 64, 64) and labels.shape == (50,)
    # the same batch as from an in-memory copy of the same data
    monkeypatch.setattr(zoo.data.images, "IN_MEMORY_BYTES", 2**31)
    in_memory = load_dataset("imagenet64")
    assert isinstance(in_memory.x, torch.Tensor) and in_memory.checksum == ds.checksum
    x_mem, labels_mem = BatchLoader(in_memory, 50, seed=3).batch_at(0)
    assert torch.equal(x, x_mem) and torch.equal(labels, labels_mem)


def test_missing_files_say_where_to_put_them(data_dir):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("imagenet64")
    message = str(err.value)
    assert str(data_dir / "imagenet64") in message and "train_data_batch_1.npz" in message
    with pytest.raises(DatasetNotFoundError, match="lsun-bedroom256"):
        load_dataset("lsun-bedroom256")


def test_bad_npz_is_named(data_dir):
    folder = data_dir / "imagenet64"
    folder.mkdir(parents=True)
    np.savez(folder / "train_data_batch_1.npz", data=np.zeros((2, 12288), np.uint8),
             labels=[0, 5])
    with pytest.raises(DatasetNotFoundError, match="train_data_batch_1.npz: 'labels' must be"):
        load_dataset("imagenet64")


def write_class_folders(root, classes, size=8):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_folder_with_class_subfolders_is_labelled_in_sorted_order(tmp_path):
    root = tmp_path / "images"
    write_class_folders(root, ["zebra", "ant", "moth"])
    (root / "ant" / "deeper").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "ant" / "deeper" / "x.png")
    ds = load_dataset("folder", path=str(root), resolution=8)
    assert ds.num_classes == 3
    files = sorted(p for p in root.rglob("*.png"))  # the folder's images in path order
    expected = [["ant", "moth", "zebra"].index(p.relative_to(root).parts[0]) for p in files]
    assert ds.labels.tolist() == expected
    first = torch.from_numpy(np.array(Image.open(files[0]))).permute(2, 0, 1)
    torch.testing.assert_close(ds.x[0], first.float() / 127.5 - 1, rtol=0, atol=1e-6)


def test_imagenet64_from_class_folders(data_dir):
    write_class_folders(data_dir / "imagenet64", ["n01", "n02"], size=80)
    ds = load_dataset("imagenet64")
    assert ds.shape == (3, 64, 64) and ds.num_classes == 2 and ds.labels.tolist() == [0, 0, 1, 1]


def test_gpu_scale_datasets_have_their_own_presets_or_a_clear_refusal():
    assert preset_scale("imagenet64") == "imagenet64"
    with pytest.raises(ValueError, match="no training presets for dataset 'lsun-cat256'"):
        preset_scale("lsun-cat256", {"toy": {}, "imagenet64": {}})
