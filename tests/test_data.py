"""Datasets, the HDF5 cache and the batch loader (offline, CPU)."""

import os

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from zoo import plugins
from zoo.data import (
    BatchLoader,
    DataCacheError,
    DatasetNotFoundError,
    DatasetOptionError,
    load_dataset,
)
from zoo.data.hdf5 import read_images


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def digits_cache(data_dir):
    return data_dir / "hdf5" / "digits-8-train.h5"


def test_digits_shape_range_and_labels():
    train, test, every = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (1500, 297, 1797)
    assert train.shape == (1, 8, 8) and train.kind == "image" and train.num_classes == 10
    assert train.x.dtype == torch.float32 and train.data_range == (-1.0, 1.0)
    assert train.x.min() == -1 and train.x.max() == 1
    assert set(train.labels.tolist()) == set(range(10)) and train.labels.dtype == torch.int64
    # exact scaling: 0..16 -> -1..1 in steps of 1/8
    assert torch.equal((train.x + 1) * 8, ((train.x + 1) * 8).round())
    assert len({train.checksum, test.checksum, every.checksum}) == 3
    # the split is fixed and disjoint: train + test is a reordering of all
    joined = torch.cat([train.x, test.x]).flatten(1)
    assert sorted(map(tuple, joined.tolist())) == sorted(map(tuple, every.x.flatten(1).tolist()))


def test_digits_cache_built_once_and_reused(data_dir, monkeypatch):
    first = load_dataset("digits")
    assert digits_cache(data_dir).is_file()
    with h5py.File(digits_cache(data_dir)) as f:
        assert f["images"].dtype == np.uint8 and f.attrs["max_value"] == 16
        assert f.attrs["checksum"] == first.checksum and f.attrs["resolution"] == 8

    def no_source():
        raise AssertionError("the source was read again")

    monkeypatch.setattr("sklearn.datasets.load_digits", no_source)
    second = load_dataset("digits")
    assert second.checksum == first.checksum and torch.equal(second.x, first.x)


def test_corrupt_cache_is_detected(data_dir):
    load_dataset("digits")
    with h5py.File(digits_cache(data_dir), "r+") as f:
        f["images"][0, 0, 0, 0] ^= 1
    with pytest.raises(DataCacheError, match="checksum"):
        load_dataset("digits")


def test_truncated_cache_names_the_file(data_dir):
    load_dataset("digits")
    path = digits_cache(data_dir)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataCacheError, match="digits-8-train.h5"):
        load_dataset("digits")


def test_resolution_mismatch(data_dir):
    load_dataset("digits")
    with pytest.raises(DataCacheError, match="resolution 32"):
        read_images(digits_cache(data_dir), resolution=32, channels=1)


def test_folder_dataset(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 20), (16, 16), (20, 50)]):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / ("sub" if i else "") / f"{i}.png")
    (images / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", path=str(images), resolution=12)
    assert ds.shape == (3, 12, 12) and len(ds) == 3 and ds.labels is None
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    assert load_dataset("folder", path=str(images), resolution=12).checksum == ds.checksum
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_dataset("folder", path=str(empty))
    with pytest.raises(DatasetOptionError, match="path"):
        load_dataset("folder")


def test_cifar10_offline_error_says_what_to_put_where(tmp_path):
    root = tmp_path / "cifar"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=str(root))
    message = str(err.value)
    for part in ("not found in", "cifar-10-python.tar.gz", "cifar-10-batches-py", str(root),
                 "--dataset-options '{\"download\": true}'"):
        assert part in message
    assert "--download " not in message  # no such flag
    assert isinstance(err.value, FileNotFoundError)
    # an archive that fails torchvision's md5 check is damaged, not missing
    from test_cifar10_smoke import write_cifar10_archive

    write_cifar10_archive(root / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=str(root))
    assert str(err.value).startswith(f"CIFAR-10 in {root} is damaged or incomplete")
    assert "md5" in str(err.value)


def test_checkerboard_and_gmm():
    board = load_dataset("checkerboard", n=20_000)
    assert board.shape == (2,) and board.kind == "points" and board.labels is None
    assert board.x.abs().max() <= 1 and 0.45 < board.x.std() < 0.65
    # points lie on filled cells: (row + col) even on the 4x4 board
    cells = ((board.x + 1) * 2).floor().long().clamp(0, 3)
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert load_dataset("toy", n=20_000).checksum == board.checksum
    assert load_dataset("checkerboard", n=20_000, seed=1).checksum != board.checksum
    fresh = board.sample_true(1000, 0)
    assert fresh.shape == (1000, 2) and torch.equal(fresh, board.sample_true(1000, 0))
    assert not torch.equal(fresh, board.x[:1000])
    mixture = load_dataset("gmm", n=5000)
    assert mixture.shape == (2,) and 0.4 < mixture.x.std() < 0.6
    assert mixture.sample_true(10, 3).shape == (10, 2)


def test_unknown_name_and_option():
    with pytest.raises(plugins.UnknownNameError, match="checkerboard.*digits"):
        load_dataset("nope")
    with pytest.raises(DatasetOptionError, match="accepted: n, seed"):
        load_dataset("checkerboard", size=3)


def batches(loader, count):
    return [next(loader) for _ in range(count)]


def test_loader_seeds():
    ds = load_dataset("checkerboard", n=100)
    a, b = batches(BatchLoader(ds, 32, seed=1), 5), batches(BatchLoader(ds, 32, seed=1), 5)
    c = batches(BatchLoader(ds, 32, seed=2), 5)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c, strict=True))
    # each epoch is a permutation: 100 samples in batches of 20 visit every point once
    first_epoch = torch.cat([x for x, _ in batches(BatchLoader(ds, 20), 5)])
    assert torch.equal(first_epoch[first_epoch[:, 0].argsort()], ds.x[ds.x[:, 0].argsort()])


def test_loader_ranks_concatenate_to_single_process_batch():
    ds = load_dataset("digits")
    single = BatchLoader(ds, 64, seed=3, hflip=True)
    ranks = [BatchLoader(ds, 64, seed=3, hflip=True, rank=r, world_size=4) for r in range(4)]
    for _ in range(3):
        x, labels = next(single)
        parts = [next(loader) for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)


def test_loader_hflip_flips_about_half():
    ds = load_dataset("digits")
    x, _ = BatchLoader(ds, 1000, hflip=True).batch_at(0)
    plain, _ = BatchLoader(ds, 1000).batch_at(0)
    flipped = (x != plain).flatten(1).any(1).float().mean()
    assert 0.35 < flipped < 0.6
    assert torch.equal(torch.where((x == plain).flatten(1).all(1)[:, None, None, None],
                                   x, x.flip(-1)), plain)
    with pytest.raises(ValueError, match="hflip"):
        BatchLoader(load_dataset("gmm", n=10), 4, hflip=True)


def test_loader_resume():
    ds = load_dataset("checkerboard", n=50)
    loader = BatchLoader(ds, 16, seed=5)
    batches(loader, 7)
    state = loader.state_dict()
    expected = batches(loader, 3)
    resumed = BatchLoader(ds, 16, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for (x, _), (y, _) in zip(expected, batches(resumed, 3), strict=True):
        assert torch.equal(x[8:], y)
    assert torch.equal(loader.batch_at(8)[0], expected[1][0])
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(ds, 32, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(ds, 16, seed=6).load_state_dict(state)


def test_loader_batch_larger_than_dataset_and_indivisible_batch():
    ds = load_dataset("checkerboard", n=7)
    x, labels = BatchLoader(ds, 30).batch_at(2)
    assert x.shape == (30, 2) and labels is None
    stream = torch.cat([BatchLoader(ds, 1).batch_at(s)[0] for s in range(60, 90)])
    assert torch.equal(x, stream)
    with pytest.raises(ValueError, match="divisible"):
        BatchLoader(ds, 10, world_size=3)


def test_cache_write_is_atomic(data_dir):
    load_dataset("digits")
    assert not [p for p in os.listdir(data_dir / "hdf5") if p.endswith(".tmp")]


# ------------------------------------------------------------------ folder data: odd files


def test_folder_16_bit_png_is_scaled_from_its_full_range(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    grey = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(grey).save(images / "deep.png")  # a 16-bit grey PNG
    with Image.open(images / "deep.png") as check:
        assert check.mode.startswith("I")
    ds = load_dataset("folder", path=str(images), resolution=16)
    expected = torch.from_numpy(np.round(grey / 257.0)).float() / 127.5 - 1
    torch.testing.assert_close(ds.x[0], expected.expand(3, -1, -1), atol=1 / 127.5, rtol=0)
    assert ds.x.mean() == pytest.approx(0, abs=0.02)  # a ramp from black to white, not white


def test_folder_alpha_is_composited_onto_white(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:2, :, 3] = 255  # ... opaque in the top half,
    rgba[2:, :2, 3] = 0  # transparent bottom left,
    rgba[2:, 2:, 3] = 128  # half transparent bottom right
    Image.fromarray(rgba, "RGBA").save(images / "a.png")
    x = (load_dataset("folder", path=str(images), resolution=4).x[0] + 1) * 127.5
    assert x[:, :2].round().tolist() == [[[255] * 4] * 2, [[0] * 4] * 2, [[0] * 4] * 2]
    assert x[:, 2:, :2].round().unique().tolist() == [255]  # white shows through
    assert x[0, 2:, 2:].round().unique().tolist() == [255]
    assert x[1:, 2:, 2:].round().unique().tolist() == [127]  # 255 · (1 − 128/255)


def test_folder_skipped_files_are_counted_in_one_warning(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / "ok.png")
    for name in ("a.gif", "b.GIF"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(images / name)
    (images / "notes.txt").write_text("")
    (images / ".DS_Store").write_text("")
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset("folder", path=str(images), resolution=4)
    assert len(ds) == 1 and len(caught) == 1
    assert "skipped 3 file(s) that are not images zoo reads (2 .gif, 1 .txt); accepted: " \
           ".png, .jpg" in str(caught[0].message)


@pytest.mark.parametrize("options, message", [
    ({"resolution": "big"}, "dataset 'folder': option resolution must be int, got 'big' (str)"),
    ({"resolution": 8.5}, "option resolution must be int, got 8.5 (float)"),
    ({"path": 3}, "option path must be str or None, got 3 (int)"),
])
def test_folder_option_types_are_checked(tmp_path, options, message):
    with pytest.raises(DatasetOptionError) as err:
        load_dataset("folder", **{"path": str(tmp_path), **options})
    assert message in str(err.value)
