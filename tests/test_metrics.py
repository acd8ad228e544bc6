"""The evaluator: W2, FD-digits (torch-fidelity in the digits classifier's space), Inception FID
errors offline, caching of reference statistics, batch-size invariance, plugins (CPU, offline)."""

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

from zoo import plugins
from zoo.data import Dataset, load_dataset
from zoo.hookspecs import hookimpl
from zoo.metrics import (
    FidelityMetric,
    InceptionWeightsError,
    Metric,
    MetricResultError,
    default_metrics,
    evaluate,
    fidelity,
    lower_is_better,
    register_feature_extractor,
    wasserstein2,
)
from zoo.metrics import digits as digits_module
from zoo.metrics.digits import DigitsFeatureExtractor, accuracy, load_classifier

DIGITS_KEYS = {"FD-digits", "IS-digits", "KID-digits", "precision-digits", "recall-digits"}


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("data")
        mp.setenv("ZOO_DATA_DIR", str(path))
        mp.delenv(fidelity.INCEPTION_ENV, raising=False)
        yield path


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", split="train")


@pytest.fixture(scope="module")
def test(train):
    return load_dataset("digits", split="test")


def images(name="folder", shape=(3, 16, 16), n=20):
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return Dataset(name, x, None, "0" * 64, "image", data_range=(-1.0, 1.0))


def noisy(x, std, seed=0):
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + std * noise).clamp(-1, 1)


def blurred(x):
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16)[None, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


# --- the digits classifier ------------------------------------------------------------------


def test_shipped_classifier_is_small_and_accurate_on_held_out_split(test):
    assert digits_module.WEIGHTS.stat().st_size < 300_000
    assert accuracy(load_classifier(), test) >= 0.97


def test_missing_classifier_weights_say_how_to_train_them(tmp_path, monkeypatch, test, train):
    with pytest.raises(FileNotFoundError, match="benchmarks/train_digits_classifier.py"):
        load_classifier(tmp_path / "missing.pt")
    monkeypatch.setattr(digits_module, "WEIGHTS", tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        evaluate(test.x, train)


def test_digits_extractor_checks_its_input():
    extractor = DigitsFeatureExtractor("zoo-digits", ["features", "logits_unbiased"])
    features, logits = extractor(torch.zeros(5, 1, 8, 8, dtype=torch.uint8))
    assert features.shape == (5, 64) and logits.shape == (5, 10)
    with pytest.raises(ValueError, match=r"uint8 images \[B, 1, 8, 8\]"):
        extractor(torch.zeros(5, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(5, 3, 8, 8\)"):
        extractor(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))


# --- FD-digits ------------------------------------------------------------------------------


def test_fd_digits_of_a_set_against_itself_is_zero(test):
    result = evaluate(test.x, test)
    assert set(result) == DIGITS_KEYS
    assert abs(result["FD-digits"]) < 1e-6 and abs(result["KID-digits"]) < 0.05
    assert result["precision-digits"] == result["recall-digits"] == 1.0
    assert 7 < result["IS-digits"] <= 10  # 10 roughly balanced, confidently classified classes


def test_fd_digits_small_for_held_out_data_and_grows_with_corruption(train, test):
    def fd_digits(x):
        return evaluate(x, train, metrics=["fd-digits"])

    clean = fd_digits(test.x)
    fd = [clean["FD-digits"]] + [fd_digits(noisy(test.x, s))["FD-digits"] for s in (0.1, 0.3, 0.6)]
    assert fd[0] < 0.3 and fd == sorted(fd) and fd[-1] > 5 * fd[0], fd
    blur = fd_digits(blurred(test.x))
    assert blur["FD-digits"] > 10 * fd[0] and blur["precision-digits"] < clean["precision-digits"]


def test_result_does_not_depend_on_batch_size(train, test):
    samples = noisy(test.x, 0.2)
    small = evaluate(samples, train, metrics=["fd-digits"], batch_size=7)
    large = evaluate(samples, train, metrics=["fd-digits"], batch_size=256)
    assert small.keys() == large.keys() == DIGITS_KEYS
    for key in small:
        assert small[key] == pytest.approx(large[key], rel=1e-5, abs=1e-6), key


def test_reference_statistics_are_cached_by_checksum_and_reused(tmp_path, monkeypatch, train, test):
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    passes = {"reference": 0, "samples": 0}
    getitem, add = fidelity.UInt8Images.__getitem__, fidelity.FeatureStream.add

    def counting(self, i):
        passes["reference"] += 1
        return getitem(self, i)

    def counting_add(self, x):
        passes["samples"] += len(x)
        return add(self, x)

    monkeypatch.setattr(fidelity.UInt8Images, "__getitem__", counting)
    monkeypatch.setattr(fidelity.FeatureStream, "add", counting_add)
    first = evaluate(test.x, train, metrics=["fd-digits"])
    assert passes["reference"] >= len(train) and passes["samples"] >= len(test)
    cached = sorted(p.name for p in (tmp_path / "fidelity-cache").iterdir())
    assert cached and all(p.startswith(f"digits-{train.checksum[:16]}-") for p in cached)
    passes.update(reference=0, samples=0)
    second = evaluate(test.x, train, metrics=["fd-digits"])
    assert passes["reference"] == 0 and passes["samples"] >= len(test)  # no second dataset pass
    assert second == first


# --- W2 -------------------------------------------------------------------------------------


def test_w2_exact_on_known_cases():
    a = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert wasserstein2(a, a + v) == pytest.approx(0.5, abs=1e-9)  # a translation by |v| = 0.5
    assert wasserstein2(a, a[torch.randperm(50)]) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein2(torch.zeros(4, 2), torch.tensor([[0.0, 2.0]] * 4)) == pytest.approx(2.0)


def test_w2_equals_the_assignment_problems_value_near_and_far():
    """An independent exact solver: with equal sizes the optimal plan is a permutation, so
    scipy's assignment on the squared distances gives the same W2, on close sets and on sets
    far apart (a collapsed sampler's), where the two solvers differ most in speed."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    g = np.random.default_rng(0)
    a = g.normal(size=(300, 2))
    for b in (g.normal(size=(300, 2)) * 1.1, g.normal(size=(300, 2)) * 0.01 + 40.0):
        cost = cdist(a, b, "sqeuclidean")
        rows, cols = linear_sum_assignment(cost)
        assert wasserstein2(a, b) == pytest.approx(np.sqrt(cost[rows, cols].mean()), rel=1e-9)


def test_w2_through_the_evaluator_has_a_positive_floor():
    toy = load_dataset("checkerboard", n=1000)
    result = evaluate(toy.sample_true(300, 5), toy)
    # fewer than two sets of W2Metric.SET_SIZE: one set, so no standard error (never "± 0")
    assert set(result) == {"W2", "W2 floor"} and result["W2 floor"] > 0
    assert result["W2"] < 3 * result["W2 floor"]
    far = evaluate(toy.sample_true(300, 5) + 1.0, toy)
    assert far["W2"] > 0.9 and far["W2 floor"] == result["W2 floor"]


def test_w2_is_the_mean_over_disjoint_sets_each_against_its_own_true_set(monkeypatch):
    from zoo.metrics.w2 import W2Metric

    monkeypatch.setattr(W2Metric, "SET_SIZE", 100)
    toy = load_dataset("checkerboard", n=1000)
    samples = toy.sample_true(350, 7) * 1.1  # 3 sets: 116, 117, 117 points
    result = W2Metric().compute(samples, toy, seed=4)
    parts = torch.tensor_split(samples, 3)
    references = [toy.sample_true(len(p), 10_004 + 1_000_000 * k) for k, p in enumerate(parts)]
    each = [wasserstein2(p, r) for p, r in zip(parts, references)]
    assert len({len(r) for r in references}) == 2 and each[0] != each[1]  # fresh set per part
    assert result["W2"] == pytest.approx(np.mean(each), rel=1e-12)
    assert result["W2 ±"] == pytest.approx(np.std(each, ddof=1) / math.sqrt(3), rel=1e-9)
    assert lower_is_better("W2 ±") is None


# --- registry, defaults, directions ---------------------------------------------------------


def test_defaults_directions_and_protocol(train):
    toy = load_dataset("checkerboard", n=100)
    assert default_metrics(toy) == ["w2"]
    assert default_metrics(train) == ["fdinf-digits", "memorisation-digits", "fd-digits"]
    assert default_metrics(load_dataset("digits", split="test")) == ["fd-digits"]
    assert default_metrics(images()) == ["fid"]
    for name in ("w2", "fd-digits", "fid"):
        assert isinstance(plugins.get("metrics", name), Metric)
    assert lower_is_better("FD-digits") and lower_is_better("KID-digits") and lower_is_better("W2")
    assert lower_is_better("FID") and lower_is_better("W2 floor")
    assert lower_is_better("IS") is False and lower_is_better("recall-digits") is False
    assert lower_is_better("no such thing") is None


# --- error paths ----------------------------------------------------------------------------


def test_unknown_metric_lists_the_valid_ones(train):
    valid = "fd-digits, fdinf-digits, fid, memorisation-digits, w2"
    with pytest.raises(plugins.UnknownNameError, match=f"unknown metric 'fdd'.*{valid}"):
        evaluate(train.x, train, metrics=["fdd"])
    with pytest.raises(ValueError, match="at least one metric"):
        evaluate(train.x, train, metrics=[])


def test_metric_of_the_wrong_kind_or_shape(train):
    toy = load_dataset("checkerboard", n=100)
    with pytest.raises(ValueError, match="'w2' applies to points.*'digits' is of kind 'image'"):
        evaluate(train.x, train, metrics=["w2"])
    with pytest.raises(ValueError, match="'fd-digits' applies to image.*kind 'points'"):
        evaluate(toy.x, toy, metrics=["fd-digits"])
    other = images()
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\).*holds \(3, 16, 16\)"):
        evaluate(other.x, other, metrics=["fd-digits"])
    four = images(shape=(4, 8, 8))
    with pytest.raises(ValueError, match="1 or 3 channels.*has 4"):
        evaluate(four.x, four, metrics=["fid"])


def test_samples_that_do_not_match_the_dataset(train):
    with pytest.raises(ValueError, match=r"\(20, 3, 8, 8\).*\[n, 1, 8, 8\]"):
        evaluate(torch.zeros(20, 3, 8, 8), train)
    with pytest.raises(ValueError, match=r"\[n, 1, 8, 8\]"):
        evaluate(torch.zeros(20, 64), train)
    with pytest.raises(ValueError, match="at least 10 samples"):
        evaluate(train.x[:5], train, metrics=["fd-digits"])
    with pytest.raises(ValueError, match="got 5 samples, need at least 297"):
        evaluate(train.x[:5], train)
    with pytest.raises(ValueError, match="both report 'W2'"):
        toy = load_dataset("checkerboard", n=100)
        evaluate(toy.x[:20], toy, metrics=["w2", "w2"])


def test_non_finite_samples_score_worst(train, test):
    samples = test.x.clone()
    samples[0, 0, 0, 0] = math.nan
    result = evaluate(samples, train, finite=False)  # training's periodic measurement
    assert result["FD-digits"] == result["KID-digits"] == math.inf
    assert math.isnan(result["IS-digits"]) and math.isnan(result["precision-digits"])
    # where a table is made, such a result is refused, naming the metric and its plugin
    with pytest.raises(MetricResultError, match=r"metric 'fd-digits' \(plugin zoo.metrics "
                                                r"\(fewstep-zoo\)\) returned 'FD-digits' = inf"):
        evaluate(samples, train, metrics=["fd-digits"])


def test_missing_inception_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    cifar_like = images("cifar10", shape=(3, 32, 32))
    with pytest.raises(InceptionWeightsError) as error:
        evaluate(cifar_like.x, cifar_like)
    message = str(error.value)
    assert fidelity.INCEPTION_FILE in message and str(hub / "checkpoints") in message
    assert URL_INCEPTION_V3 in message and f"{fidelity.INCEPTION_ENV}=PATH" in message
    assert "--inception-weights" not in message  # evaluate() has no such flag: the bench adds it
    assert not hub.exists()  # nothing was downloaded or created
    monkeypatch.setenv(fidelity.INCEPTION_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(InceptionWeightsError, match="nowhere.pth.*not found|not found.*nowhere"):
        evaluate(cifar_like.x, cifar_like, metrics=["fid"])


def test_a_damaged_inception_weights_file_is_refused_by_its_sha256(tmp_path, monkeypatch):
    """torch hub names the file after its sha256's first digits (6726825d): a partial download or
    another network under that name is refused before any FID is computed from it."""
    fake = tmp_path / fidelity.INCEPTION_FILE
    torch.save({"w": torch.zeros(3)}, fake)
    monkeypatch.setenv(fidelity.INCEPTION_ENV, str(fake))
    cifar_like = images("cifar10", shape=(3, 32, 32))
    with pytest.raises(InceptionWeightsError, match=r"sha256 [0-9a-f]{64} does not begin with "
                                                    r"6726825d"):
        evaluate(cifar_like.x, cifar_like, metrics=["fid"])


def inception_available() -> bool:
    try:
        return fidelity.inception_weights().is_file()
    except InceptionWeightsError:
        return False


@pytest.mark.weights
@pytest.mark.skipif(not inception_available(), reason="no Inception weights in the torch hub cache")
def test_inception_fid_with_real_weights():
    data = images("folder-test", shape=(3, 32, 32), n=24)
    result = evaluate(data.x, data, metrics=["fid"], batch_size=8)
    assert set(result) == {"FID", "IS", "KID", "precision", "recall"}
    assert abs(result["FID"]) < 1e-2 and result["precision"] == 1.0


# --- plugins --------------------------------------------------------------------------------


class PixelExtractor(FeatureExtractorBase):
    """Raw pixels / 255 as features: FD in this space is checkable by hand."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("pixels",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pixels"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        return (x.flatten(1).double() / 255,)


class PixelFD:
    """A plugin registering FD on raw pixels as ``fd-pixels-TAG`` (extractor
    ``test-pixels-TAG``): a stand-in for Inception where its weights are absent."""

    def __init__(self, tag: str):
        self.tag = tag

    @hookimpl
    def register_metrics(self, register):
        register_feature_extractor(f"test-pixels-{self.tag}", PixelExtractor)
        register(f"fd-pixels-{self.tag}", FidelityMetric(
            f"fd-pixels-{self.tag}", f"test-pixels-{self.tag}", suffix="-pixels", isc=False))


class MeanGap:
    name, kinds, lower_is_better = "mean-gap", ("image", "points"), {"mean gap": True}

    def compute(self, samples, dataset, *, seed=0):
        return {"mean gap": (samples.mean() - dataset.x.mean()).abs().item()}


class ThirdParty:
    @hookimpl
    def register_metrics(self, register):
        register_feature_extractor("test-pixels", PixelExtractor)
        register("fd-pixels", FidelityMetric("fd-pixels", "test-pixels", suffix="-pixels",
                                             isc=False, shape=(1, 8, 8)))
        register("mean-gap", MeanGap())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.fixture
def third_party():
    plugins.register_plugin(ThirdParty(), "third-party-metrics")
    yield
    plugins.unregister_plugin("third-party-metrics")


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # constant corner pixels
def test_plugin_registers_a_metric_and_a_feature_extractor(third_party, train, test):
    samples = noisy(test.x, 0.2)
    result = evaluate(samples, train, metrics=["fd-pixels", "mean-gap"])
    assert set(result) == {"FD-pixels", "KID-pixels", "precision-pixels", "recall-pixels",
                           "mean gap"}
    pixels = [((x + 1) * 127.5).round().flatten(1).double().numpy() / 255
              for x in (samples, train.x)]
    assert result["FD-pixels"] == pytest.approx(frechet_distance(*pixels), rel=1e-4)
    assert result["mean gap"] == pytest.approx((samples.mean() - train.x.mean()).abs().item())
    assert lower_is_better("FD-pixels") is True and lower_is_better("mean gap") is True
    with pytest.raises(ValueError, match="'zoo-digits' is already registered"):
        register_feature_extractor("zoo-digits", PixelExtractor)


def test_plugin_metrics_are_gone_after_unregistering(third_party, train):
    plugins.unregister_plugin("third-party-metrics")
    with pytest.raises(plugins.UnknownNameError, match="'fd-pixels'"):
        evaluate(train.x, train, metrics=["fd-pixels"])
    assert lower_is_better("FD-pixels") is None
    plugins.register_plugin(ThirdParty(), "third-party-metrics")  # its extractor again: a no-op
    assert "fd-pixels" in plugins.registry("metrics")
    assert not [f for f in plugins.failures() if f.name == "third-party-metrics"]


def test_inception_url_matches_torch_fidelity():
    assert fidelity.INCEPTION_URL == URL_INCEPTION_V3
    assert Path(URL_INCEPTION_V3).name == fidelity.INCEPTION_FILE
