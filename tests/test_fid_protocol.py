"""The published FID protocol in ``zoo bench``: FID-50k by default on real images, ``--ref``
files (EDM's mu/sigma, openai's arr_0 batches), sample exports for external evaluators, and
sampling that streams batch by batch into the feature extractor."""

import json
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from PIL import Image
from test_cifar10_smoke import RandomConvExtractor, tiny_cifar10  # noqa: F401  (fixture)

from zoo import plugins
from zoo.bench import DEFAULT_N, PICTURE_N, default_n, protocol_note
from zoo.cli import main
from zoo.data import load_dataset
from zoo.importers import dataset_record, write_imported_run
from zoo.metrics import digits as digits_module
from zoo.metrics import evaluate, fidelity
from zoo.sample_export import SampleExport
from zoo.viz import MAX_GRID, save_image_grid


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", split="train")


@pytest.fixture(scope="module")
def test():
    return load_dataset("digits", split="test")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))


def digits_features(images: torch.Tensor) -> np.ndarray:
    """The digits classifier's FD features of images in [-1, 1], computed here directly."""
    from zoo.metrics.digits import load_classifier

    u8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    features, _ = load_classifier().features_and_logits(u8.float() / 127.5 - 1)
    return features.double().numpy()


def frechet(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance with scipy's sqrtm (Heusel et al. 2017), independent of torch-fidelity."""
    with warnings.catch_warnings():  # dead ReLU features make Σ singular; sqrtm still holds
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))


# --- references ------------------------------------------------------------------------------


def test_fid_from_an_edm_statistics_file_equals_fid_computed_in_place(tmp_path, train, test):
    features = digits_features(train.x)
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    in_place = evaluate(test.x, train, metrics=["fd-digits"])
    from_file = evaluate(test.x, train, metrics=["fd-digits"], ref=tmp_path / "ref.npz")
    ours = digits_features(test.x)
    expected = frechet(ours.mean(0), np.cov(ours, rowvar=False), mu, sigma)
    assert from_file["FD-digits"] == pytest.approx(in_place["FD-digits"], rel=1e-5)
    assert from_file["FD-digits"] == pytest.approx(expected, rel=1e-4)
    # statistics alone carry no features: no KID or precision/recall, IS needs none
    assert set(from_file) == {"FD-digits", "IS-digits"}
    assert from_file["IS-digits"] == in_place["IS-digits"]


def test_an_openai_reference_batch_gives_the_statistics_of_its_images(tmp_path, train, test):
    nhwc = ((train.x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    np.savez(tmp_path / "VIRTUAL_digits.npz", arr_0=nhwc.numpy(),
             mu=np.zeros(2048), sigma=np.eye(2048))  # openai's own Inception statistics: unused
    stream = digits_module.DigitsMetric().stream(train, ref=tmp_path / "VIRTUAL_digits.npz")
    np.testing.assert_allclose(stream.reference["features"].double().numpy(),
                               digits_features(train.x), rtol=1e-5, atol=1e-6)
    assert evaluate(test.x, train, ref=tmp_path / "VIRTUAL_digits.npz") == evaluate(test.x, train)


def test_reference_cache_key_holds_the_extractor_weights(train, test, monkeypatch):
    evaluate(test.x, train)
    first = {p.name for p in (fidelity.cache_dir()).iterdir()}
    monkeypatch.setattr(fidelity, "extractor_fingerprint", lambda extractor: "otherweights")
    evaluate(test.x, train)
    added = {p.name for p in fidelity.cache_dir().iterdir()} - first
    assert added and all("otherweights" in name for name in added)


def test_reference_files_that_do_not_fit_are_clear_errors(tmp_path, train, test):
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match=r"2048-d statistics.*64-d feature space of zoo-digits"):
        evaluate(test.x, train, ref=tmp_path / "inception.npz")
    np.savez(tmp_path / "other.npz", features=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"holds features; expected EDM's .*mu.*arr_0"):
        evaluate(test.x, train, ref=tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("mu")
    with pytest.raises(ValueError, match="not a readable .npz"):
        evaluate(test.x, train, ref=tmp_path / "text.npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"arr_0 is float64 \[4, 8, 8, 1\], not uint8"):
        evaluate(test.x, train, ref=tmp_path / "float.npz")
    with pytest.raises(ValueError, match="no such file"):
        evaluate(test.x, train, ref=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="--ref applies to feature-space metrics"):
        toy = load_dataset("toy", n=100)
        evaluate(toy.x, toy, ref=tmp_path / "inception.npz")


# --- streaming -------------------------------------------------------------------------------


def test_features_fed_batch_by_batch_equal_features_at_once(train, test):
    stream = digits_module.DigitsMetric().stream(train, batch_size=7)
    for i in range(0, len(test), 50):
        stream.add(test.x[i : i + 50])
    at_once = stream.extract(fidelity.to_uint8(test.x, (-1.0, 1.0)))
    for layer, features in stream.features().items():  # float32 rounding of batched kernels
        scale = at_once[layer].abs().max().item()
        torch.testing.assert_close(features, at_once[layer], rtol=1e-5, atol=1e-5 * scale)
    streamed, whole = stream.result(0), evaluate(test.x, train, metrics=["fd-digits"])
    assert streamed.keys() == whole.keys()
    for key, value in whole.items():  # float32 features: batch sizes change the last bits
        assert streamed[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


# --- exports and pictures --------------------------------------------------------------------


def test_npz_and_png_exports_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (10, 3, 5, 6), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 1000, (10,), generator=g)
    export = SampleExport(tmp_path / "row", 10, (3, 5, 6), "both")
    for start in (0, 4, 8):  # batches of 4, 4, 2
        batch = u8[start : start + 4]
        export.add_npz(batch, labels[start : start + 4])
        export.add_png(batch, range(start, start + len(batch)))
    assert export.close() == [tmp_path / "row.npz", tmp_path / "row"]
    with np.load(tmp_path / "row.npz") as npz:
        assert npz["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(npz["arr_0"], u8.permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(npz["arr_1"], labels.numpy())
    files = sorted((tmp_path / "row").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(10)]
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(f)) for f in files]),
                                  u8.permute(0, 2, 3, 1).numpy())


def test_an_unconditional_npz_has_no_labels_and_grayscale_pngs_read_back(tmp_path):
    u8 = torch.arange(2 * 16, dtype=torch.uint8).reshape(2, 1, 4, 4)
    export = SampleExport(tmp_path / "gray", 2, (1, 4, 4), "both")
    export.add_npz(u8)
    export.add_png(u8, [0, 1])
    export.close()
    with np.load(tmp_path / "gray.npz") as npz:
        assert npz.files == ["arr_0"] and npz["arr_0"].shape == (2, 4, 4, 1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "gray" / "000001.png")),
                                  u8[1, 0].numpy())


def test_the_grid_shows_at_most_100_samples(tmp_path):
    assert 64 <= PICTURE_N <= MAX_GRID == 100
    x = torch.zeros(150, 1, 64, 64)
    width, height = Image.open(save_image_grid(x, tmp_path / "grid.png")).size
    assert (width, height) == (10 * 66 + 2, 10 * 66 + 2)  # 10 × 10 images, 2 px padding


# --- the bench -------------------------------------------------------------------------------


def test_default_n_is_fid_50k_on_real_images_and_the_note_marks_fewer(tiny_cifar10):  # noqa: F811
    cifar10, digits = load_dataset("cifar10"), load_dataset("digits")
    assert default_n(cifar10) == 50_000 == DEFAULT_N["fid"]
    assert default_n(digits) == 2_000
    assert default_n(load_dataset("toy")) == 10_000
    assert protocol_note(cifar10, 50_000) == ""
    assert protocol_note(cifar10, 10_000) == "FID-10k, not comparable to published FID-50k"
    assert protocol_note(cifar10, 16) == "FID-16, not comparable to published FID-50k"
    assert protocol_note(digits, 16) == ""


def imported_edm_run(run_dir, dataset: str):
    """A tiny EDM network written as an imported run (no training) on ``dataset``."""
    edm = plugins.get("methods", "edm")
    kwargs = {"model_channels": 16, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": []}
    config = edm.config_class(method="edm", dataset=dataset, network="ddpmpp",
                              network_kwargs=kwargs)
    net = edm.build_denoiser(config, (3, 32, 32)).net
    return write_imported_run(run_dir, "edm", {}, "ddpmpp", kwargs, net.state_dict(),
                              dataset_record(dataset, (3, 32, 32), True),
                              {"file": "tiny.pkl", "format": "test"})


def test_bench_streams_batches_and_exports_every_sample(tiny_cifar10, monkeypatch):  # noqa: F811
    """An imported (untrained, step-0) EDM run benched on CIFAR-10 data with --n 20,
    --batch-size 8: the sampler is asked for one batch at a time, the extractor sees batches of
    at most 8, every sample is exported, and the table carries the FID-N note."""
    runs, out = tiny_cifar10 / "runs", tiny_cifar10 / "bench"
    imported_edm_run(runs / "cifar10" / "edm", "cifar10")
    edm = plugins.get("methods", "edm")
    asked, seen = [], []
    sample, forward = type(edm).sample, RandomConvExtractor.forward
    monkeypatch.setattr(type(edm), "bench_steps", (1, 2))
    monkeypatch.setattr(type(edm), "fast_bench", {})
    monkeypatch.setattr(type(edm), "sample",
                        lambda self, run, n, **kw: asked.append(n) or sample(self, run, n, **kw))
    monkeypatch.setattr(RandomConvExtractor, "forward",
                        lambda self, x: seen.append(len(x)) or forward(self, x))
    args = ["bench", "--models", "edm", "--dataset", "cifar10", "--runs-root", str(runs),
            "--out", str(out), "--n", "20", "--batch-size", "8", "--no-progress",
            "--metrics", "fid-standin", "--save-samples", "both"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    note = "FID-20, not comparable to published FID-50k"
    assert note in result.output and note in (out / "table.md").read_text()
    record = json.loads((out / "table.json").read_text())
    assert record["note"] == note and record["n"] == 20
    assert [(r["label"], r["nfe"]) for r in record["rows"]] == [("EDM (Heun)", 1),
                                                                 ("EDM (Heun)", 3)]
    assert asked == [1, 8, 8, 4] * 2  # warm-up, then one batch at a time
    assert max(seen) <= 8 and sum(seen) >= 2 * 20
    # the exports hold exactly the samples one call makes, as uint8
    run = edm.load(runs / "cifar10" / "edm")
    x = sample(edm, run, 20, seed=0, batch_size=20, steps=2)
    expected = fidelity.to_uint8(x.x, (-1.0, 1.0)).permute(0, 2, 3, 1).numpy()
    with np.load(out / "samples" / "edm-heun-nfe3.npz") as npz:
        assert "arr_1" not in npz.files  # unconditional: no labels
        assert np.abs(npz["arr_0"].astype(int) - expected).max() <= 1  # batch-size rounding
    pngs = sorted((out / "samples" / "edm-heun-nfe3").glob("*.png"))
    assert len(pngs) == 20
    grid = Image.open(out / "samples" / "edm-heun-nfe3.png")
    assert grid.size == (5 * 66 + 2, 4 * 66 + 2)  # the 20 samples (at most 64), 32 px shown at 64


def test_imported_openai_runs_give_the_papers_rows(tmp_path, monkeypatch):
    """imagenet64 runs imported from openai's files: CD-L2 and CD-LPIPS side by side replace
    cm-cd, each CM run at 1 and 2 steps of the σ its import preset records (NFE 2 only where it
    has two), the EDM teacher also at the paper's 40 Heun steps (79 NFE). Without training
    presets the runs have no configs: they can only be imported."""
    import zoo_cm.method
    import zoo_edm.method

    from zoo.importers import OPENAI_PRESETS

    cm, edm = plugins.get("methods", "cm"), plugins.get("methods", "edm")
    root = tmp_path / "runs"
    for name, preset in [("cm-cd-l2", "cd-imagenet64-l2"), ("cm-cd-lpips", "cd-imagenet64-lpips"),
                         ("cm-ct", "ct-imagenet64"), ("cm-cat", "cd-lsun-cat256-lpips")]:
        (root / "imagenet64" / name).mkdir(parents=True)
        fields = OPENAI_PRESETS[preset].method_fields
        (root / "imagenet64" / name / "config.json").write_text(json.dumps(
            {"dataset": "imagenet64", **fields}))
    configs = cm.bench_configs("imagenet64", root)
    assert list(configs) == ["cm-cd-l2", "cm-cd-lpips", "cm-ct"]
    for module in (zoo_cm.method, zoo_edm.method):
        monkeypatch.delitem(module.PRESETS, "imagenet64", raising=False)
    assert cm.bench_configs("imagenet64", root) == dict.fromkeys(configs)
    assert edm.bench_configs("imagenet64", root) == {"edm": None}
    rows = {name: [(r.label, r.nfe, r.options) for r in cm.bench_rows(root / "imagenet64" / name)]
            for name in [*configs, "cm-cat"]}
    assert rows == {
        "cm-cd-l2": [("CD (L2)", 1, {"nfe": 1}), ("CD (L2)", 2, {"nfe": 2})],
        "cm-cd-lpips": [("CD (LPIPS)", 1, {"nfe": 1}), ("CD (LPIPS)", 2, {"nfe": 2})],
        "cm-ct": [("CT (LPIPS)", 1, {"nfe": 1}), ("CT (LPIPS)", 2, {"nfe": 2})],
        "cm-cat": [("CD (LPIPS)", 1, {"nfe": 1})]}
    (root / "imagenet64" / "edm").mkdir()
    (root / "imagenet64" / "edm" / "config.json").write_text('{"dataset": "imagenet64"}')
    assert [r.nfe for r in edm.bench_rows(root / "imagenet64" / "edm")] == [1, 3, 5, 9, 19, 35,
                                                                             79, 10, 20, 10, 19,
                                                                             10, 20, 10, 20]
    # cifar10 keeps its trainable presets and the one cm-cd run
    assert set(cm.bench_configs("cifar10", root)) == {"cm-cd", "cm-ct"}
