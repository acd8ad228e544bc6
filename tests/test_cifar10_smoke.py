"""The whole CIFAR-10 bench path on CPU without CIFAR-10: a tiny archive in the real
``cifar-10-python.tar.gz`` format, ``zoo bench --models cm,edm,pd --dataset cifar10
--train-missing`` with the cifar10 presets scaled down by ``--set``, and FID/IS/KID/PR through
torch-fidelity in the feature space of a stand-in random conv net (no Inception weights here)."""

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from zoo import plugins
from zoo.cli import main
from zoo.hookspecs import hookimpl
from zoo.metrics import FidelityMetric, register_feature_extractor

PER_BATCH = 8  # images in each of the five training batches


def write_cifar10_archive(path, per_batch=PER_BATCH, seed=0):
    """``cifar-10-python.tar.gz`` as the real one is laid out: pickled dicts (``data`` uint8
    [N, 3072] in channel-major order, ``labels``; str keys, as Python 2's pickles load with
    ``encoding="latin1"``) in ``cifar-10-batches-py/``."""
    rng = np.random.default_rng(seed)
    members = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        # smooth colour blobs, so the images have some structure
        grid = np.linspace(-1, 1, 32)
        centre = rng.uniform(-0.5, 0.5, (per_batch, 3, 2, 1, 1))
        dist = (grid[None, None, :, None] - centre[:, :, 0]) ** 2 + \
               (grid[None, None, None, :] - centre[:, :, 1]) ** 2
        images = (255 * np.exp(-4 * dist)).astype(np.uint8)
        members[name] = {"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(),
                         "data": images.reshape(per_batch, 3072),
                         "filenames": [f"{i}.png" for i in range(per_batch)]}
    members["batches.meta"] = {"label_names": [f"class{i}" for i in range(10)],
                               "num_cases_per_batch": per_batch, "num_vis": 3072}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class RandomConvExtractor(FeatureExtractorBase):
    """A stand-in for Inception: a fixed random conv net on uint8 [B, 3, H, W] images, with
    8-d pooled ``features`` (FID, KID, precision/recall) and 10 ``logits_unbiased`` (IS)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(),
                                      nn.Conv2d(8, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
            self.head = nn.Linear(8, 10)

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased"}.get(metric, "features")

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        features = self.conv(x.float() / 127.5 - 1).double()
        out = {"features": features, "logits_unbiased": self.head(features.float()).double()}
        return tuple(out[name] for name in self.features_list)


class StandInMetric:
    @hookimpl
    def register_metrics(self, register):
        register_feature_extractor("test-random-conv", RandomConvExtractor)
        register("fid-standin", FidelityMetric("fid-standin", "test-random-conv", fd_name="FID",
                                               suffix="-standin", channels=3))


SMOKE_SETTINGS = [
    "iterations=3", "batch_size=8", "checkpoint_every=3", "log_every=3",
    'network_kwargs={"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, '
    '"attn_resolutions": [16]}',
    "cm.distance=l2",  # LPIPS needs the VGG16 ImageNet weights
    "pd.teacher_steps=4",
]


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))
    write_cifar10_archive(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz")
    # torchvision checks the archive's files against the real CIFAR-10's md5 sums
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    plugins.register_plugin(StandInMetric(), "stand-in-metric")
    yield tmp_path
    plugins.unregister_plugin("stand-in-metric")


def test_cifar10_bench_path_end_to_end_on_cpu(tiny_cifar10):
    out, runs = tiny_cifar10 / "bench", tiny_cifar10 / "runs"
    args = ["bench", "--models", "cm,edm,pd", "--dataset", "cifar10", "--train-missing",
            "--runs-root", str(runs), "--out", str(out), "--n", "16", "--batch-size", "16",
            "--device", "cpu", "--no-progress", "--metrics", "fid-standin"]
    for setting in SMOKE_SETTINGS:
        args += ["--set", setting]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # the loader extracted the archive and cached the 40 training images as HDF5
    assert (tiny_cifar10 / "data" / "hdf5" / "cifar10-32.h5").is_file()
    # teacher first, then the students that start from it
    trained = [line.split(":")[0] for line in result.output.splitlines()
               if "training it:" in line]
    assert trained == ["edm", "cm", "cm", "pd"]
    edm = json.loads((runs / "cifar10" / "edm" / "config.json").read_text())
    assert (edm["augment_p"], edm["network_kwargs"]["augment_dim"], edm["iterations"]) == (
        0.12, 9, 3)
    cd = json.loads((runs / "cifar10" / "cm-cd" / "config.json").read_text())
    assert cd["network"] == "ncsnpp" and cd["network_kwargs"]["dropout"] == 0.0
    record = json.loads((out / "table.json").read_text())
    rows = [(r["label"], r["nfe"]) for r in record["rows"]]
    assert rows == [("CD (L2)", 1), ("CD (L2)", 2), ("CT (L2)", 1), ("CT (L2)", 2)] + [
        ("EDM (Heun)", n) for n in (1, 3, 5, 9, 19, 35)] + [
        (f"EDM ({label})", n) for label in ("DDIM", "DPM-Solver-3", "DPM-Solver++(2M)", "3-DEIS")
        for n in ((10, 19) if label == "DPM-Solver-3" else (10, 20))] + [("PD", 1), ("PD", 2)]
    for row in record["rows"]:
        assert set(row["metrics"]) == {"FID-standin", "IS-standin", "KID-standin",
                                       "precision-standin", "recall-standin"}
        assert np.isfinite(row["metrics"]["FID-standin"])
    for name in ("table.md", "table.csv", "metric_vs_nfe.png"):
        assert (out / name).stat().st_size > 0
    assert len(list((out / "samples").glob("*.png"))) == len(rows)


def test_missing_inception_weights_are_found_before_any_training(tiny_cifar10, monkeypatch):
    """`zoo bench --train-missing` on CIFAR-10 without Inception weights stops before it trains
    anything (it used to train every run, then fail), naming the file and where it goes."""
    import torch

    from zoo.metrics import fidelity

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tiny_cifar10 / "hub"))
    monkeypatch.delenv(fidelity.INCEPTION_ENV, raising=False)
    runs = tiny_cifar10 / "runs"
    result = CliRunner().invoke(main, ["bench", "--models", "edm", "--dataset", "cifar10",
                                       "--train-missing", "--runs-root", str(runs),
                                       "--out", str(tiny_cifar10 / "bench"), "--n", "16"])
    assert result.exit_code == 1
    assert fidelity.INCEPTION_FILE in result.output
    assert not runs.exists()  # nothing was trained
