"""Digits metrics with a real-data floor: FD∞ and FD at the held-out split's size
(zoo.metrics.frechet, fdinf-digits) and the memorisation share (zoo.metrics.memorisation,
memorisation-digits), against closed forms, brute force and the data's own construction."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import gammaln

from zoo import plugins
from zoo.data import Dataset, load_dataset
from zoo.metrics import default_metrics, evaluate, lower_is_better
from zoo.metrics.frechet import disjoint_sets, extrapolate, fd_of_sets, subset_sizes
from zoo.metrics.held_out import HeldOutFDMetric, MemorisationMetric, pixels
from zoo.metrics.memorisation import memorised_share, nearest_distances

FD_KEYS = ["FD297-digits", "FD∞-digits", "FD∞-digits held-out"]


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", split="train")


@pytest.fixture(scope="module")
def test(train):
    return load_dataset("digits", split="test")


@pytest.fixture
def few_subsets(monkeypatch):
    """FD∞ from 3 subsets per size: the same code path, fast enough for the invariance tests."""
    monkeypatch.setattr(HeldOutFDMetric, "SUBSETS", 3)


def noisy(x, std, seed=0):
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + std * noise).clamp(-1, 1)


# --- FD∞: the extrapolation against closed forms -------------------------------------------


def test_extrapolation_returns_the_intercept_of_exact_a_plus_b_over_n():
    sizes = subset_sizes(297)
    assert sizes[0] == 99 and sizes[-1] == 297 and len(sizes) == 6
    assert np.allclose(np.diff(1 / sizes), np.diff(1 / sizes)[0], rtol=0.05)  # even in 1/n
    assert extrapolate(sizes, 0.25 + 40.0 / sizes) == pytest.approx(0.25, abs=1e-10)
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        extrapolate([297, 297], [0.1, 0.2])


def test_extrapolating_the_expected_fd_of_1d_gaussians_recovers_the_true_distance():
    # 1-d: FD_n = (m − μ2)² + (s − σ2)² with s² the unbiased variance of n draws of N(μ1, σ1²),
    # so E[FD_n] = (μ1 − μ2)² + σ1²/n + σ1² + σ2² − 2 σ1 σ2 c4(n), c4(n) = E[s]/σ1, exactly
    mu1, sigma1, mu2, sigma2 = 0.3, 1.2, 0.0, 1.0
    sizes = subset_sizes(297)
    c4 = np.exp(0.5 * np.log(2 / (sizes - 1)) + gammaln(sizes / 2) - gammaln((sizes - 1) / 2))
    expected = ((mu1 - mu2) ** 2 + sigma1**2 / sizes + sigma1**2 + sigma2**2
                - 2 * sigma1 * sigma2 * c4)
    true = (mu1 - mu2) ** 2 + (sigma1 - sigma2) ** 2
    error = abs(extrapolate(sizes, expected) - true)
    assert error < 1e-4  # measured 2.1e-5: the O(1/n²) terms of c4
    assert np.all(np.abs(expected - true) > 50 * error)  # measured ≥ 6.9e-3 (n = 297)


def test_fd_infinity_of_gaussian_sets_is_nearer_the_true_distance_than_fd_at_any_size():
    d, size, sets = 8, 99, 40
    generator = torch.Generator().manual_seed(0)
    variances = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    mean = torch.full((d,), 0.1, dtype=torch.float64)
    noise = torch.randn(size * sets, d, generator=generator, dtype=torch.float64)
    x = mean + noise * variances.sqrt()
    reference = {"mu": np.zeros(d), "sigma": np.eye(d)}  # the population N(0, I) itself
    # closed form for N(m, diag(v)) against N(0, I): ‖m‖² + Σ (√v − 1)²
    true = float((mean**2).sum() + ((variances.sqrt() - 1) ** 2).sum())
    fd, fd_inf = fd_of_sets(x, x, reference, size=size, seed=0, subsets=10)
    assert len(fd) == len(fd_inf) == sets

    def fd_by_hand(a):  # scipy's matrix square root, not the code under test
        sigma = np.cov(a, rowvar=False)
        root = scipy.linalg.sqrtm(sigma).real
        return float((a.mean(0) ** 2).sum() + np.trace(sigma + np.eye(d) - 2 * root))

    rng = np.random.default_rng(0)
    by_size = [np.mean([fd_by_hand(x[rng.choice(len(x), n, replace=False)].numpy())
                        for _ in range(40)]) for n in subset_sizes(size)]
    assert fd.mean() == pytest.approx(np.mean([fd_by_hand(x[i].numpy())
                                               for i in disjoint_sets(x, size, 0)]), rel=1e-9)
    error = abs(fd_inf.mean() - true)
    assert error < 3 * fd_inf.std(ddof=1) / math.sqrt(sets)  # measured: 0.07 standard errors
    # measured: FD at 99 (the largest size) 0.33 above the true 0.57, FD∞ 0.002 off
    assert all(abs(v - true) > 20 * error for v in by_size), (true, fd_inf.mean(), by_size)


# --- disjoint sets: order-free, seeded ------------------------------------------------------


def test_disjoint_sets_depend_on_the_samples_not_their_order():
    keys = torch.randint(0, 256, (1000, 64), generator=torch.Generator().manual_seed(0))
    sets = disjoint_sets(keys, 297, seed=3)
    assert len(sets) == 3 and all(len(s) == 297 for s in sets)
    assert len(torch.cat(sets).unique()) == 891  # disjoint
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    shuffled = disjoint_sets(keys[order], 297, seed=3)
    for a, b in zip(sets, shuffled, strict=True):
        assert torch.equal(keys[a], keys[order][b])  # the same samples, in the same order
    assert not torch.equal(keys[disjoint_sets(keys, 297, seed=4)[0]], keys[sets[0]])
    with pytest.raises(ValueError, match="at least 297 samples for one set of 297, got 296"):
        disjoint_sets(keys[:296], 297, seed=0)


# --- fdinf-digits ---------------------------------------------------------------------------


def test_fd297_is_fd_digits_of_each_set_and_its_floor_the_held_out_split(train, test, few_subsets):
    samples = noisy(train.x[:700], 0.2)
    result = evaluate(samples, train, metrics=["fdinf-digits"])
    assert list(result) == [k for k in HeldOutFDMetric.lower_is_better]  # two sets: all keys
    per_set = [evaluate(samples[i], train, metrics=["fd-digits"])["FD-digits"]
               for i in disjoint_sets(pixels(samples), 297, seed=0)]
    assert len(per_set) == 2
    assert result["FD297-digits"] == pytest.approx(np.mean(per_set), rel=1e-5)
    assert result["FD297-digits ±"] == pytest.approx(abs(per_set[0] - per_set[1]) / 2, rel=1e-4)
    floor = evaluate(test.x, train, metrics=["fd-digits"])["FD-digits"]
    assert result["FD297-digits floor"] == pytest.approx(floor, rel=1e-5)


def test_floors_are_the_samples_computation_on_real_data(train, test, few_subsets):
    held_out = evaluate(test.x, train, metrics=["fdinf-digits"])  # the floor's pool, one set
    assert "FD297-digits ±" not in held_out  # one set: no spread to measure
    for key in FD_KEYS[:2]:
        assert held_out[key] == pytest.approx(held_out[f"{key} floor"], rel=1e-9), key
    training = evaluate(train.x, train, metrics=["fdinf-digits"])  # five sets
    assert training["FD∞-digits held-out"] == pytest.approx(
        training["FD∞-digits held-out floor"], rel=1e-9)
    assert training["FD∞-digits held-out ±"] > 0


def test_fdinf_digits_does_not_depend_on_sample_order_or_batch_size(train, few_subsets):
    samples = noisy(train.x[:900], 0.3, seed=1)
    order = torch.randperm(900, generator=torch.Generator().manual_seed(2))
    a = evaluate(samples, train, metrics=["fdinf-digits"], batch_size=256)
    b = evaluate(samples[order], train, metrics=["fdinf-digits"], batch_size=7)
    assert a.keys() == b.keys()
    for key in a:  # float32 features of batched kernels round differently
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    c = evaluate(samples, train, metrics=["fdinf-digits"], seed=1)
    assert c["FD297-digits"] != a["FD297-digits"]  # the seed draws the sets


def test_fd_grows_with_corruption_far_above_the_floors(train, few_subsets):
    values = [evaluate(noisy(train.x[:600], std), train, metrics=["fdinf-digits"])
              for std in (0.2, 0.6)]
    for key in FD_KEYS:
        assert values[1][key] > values[0][key] > values[0][f"{key} floor"], key
        assert values[1][key] > 5 * abs(values[1][f"{key} floor"]), key


def test_fdinf_digits_errors(train, test, monkeypatch):
    with pytest.raises(ValueError, match="sets of 297 samples.*got 296 samples, need at least 297"):
        evaluate(noisy(train.x[:296], 0.1), train, metrics=["fdinf-digits"])
    with pytest.raises(ValueError, match="digits training split.*another split"):
        evaluate(test.x, test, metrics=["fdinf-digits"])
    with monkeypatch.context() as patch:
        patch.setattr(HeldOutFDMetric, "SET_SIZE", 298)
        with pytest.raises(ValueError, match="sets of 298, the held-out split's size.*holds 297"):
            evaluate(noisy(train.x[:400], 0.1), train, metrics=["fdinf-digits"])
    blobs = Dataset("blobs", torch.zeros(3, 1, 8, 8), None, "0" * 64, "image")
    with pytest.raises(ValueError, match="'blobs' is not digits"):
        HeldOutFDMetric().compute(torch.zeros(300, 1, 8, 8), blobs)


# --- memorisation ---------------------------------------------------------------------------


def test_nearest_distances_equal_brute_force_for_any_chunk():
    generator = torch.Generator().manual_seed(0)
    x, bank = torch.randn(23, 5, generator=generator), torch.randn(17, 5, generator=generator)
    brute = torch.tensor([min(float(torch.linalg.vector_norm((a - b).double())) for b in bank)
                          for a in x], dtype=torch.float64)
    for chunk in (1, 4, 100):
        torch.testing.assert_close(nearest_distances(x, bank, chunk=chunk), brute)
    with pytest.raises(ValueError, match="positive number of rows"):
        nearest_distances(x, bank, chunk=0)
    with pytest.raises(ValueError, match=r"rows \(23, 5\) and bank \(17, 4\)"):
        nearest_distances(x, bank[:, :4])


def test_copies_of_training_images_are_all_memorised_held_out_images_five_percent(train, test):
    drawn = torch.randint(0, len(train), (400,), generator=torch.Generator().manual_seed(0))
    copies = train.x[drawn]
    result = evaluate(copies, train, metrics=["memorisation-digits"])
    assert result["memorised-digits"] == 1.0
    held_out = evaluate(test.x, train, metrics=["memorisation-digits"])
    # by construction: 297 · 0.05 = 14.85 held-out images lie below their own 5th percentile
    assert held_out["memorised-digits"] == held_out["memorised-digits floor"] == 15 / 297
    assert result["memorised-digits floor"] == 15 / 297
    fresh = evaluate(noisy(test.x, 0.5), train, metrics=["memorisation-digits"])
    assert fresh["memorised-digits"] < 0.05  # noise moves images away from every training image


def test_memorised_share_threshold_by_hand():
    train = torch.tensor([[0.0], [10.0]])
    held_out = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])  # nearest distances 1..5
    # the 25 % quantile of 1..5 is 2 (linear interpolation); strictly nearer: 1 of 5 held out
    samples = torch.tensor([[0.5], [8.5], [8.0], [10.0]])  # distances 0.5, 1.5, 2, 0
    assert memorised_share(samples, train, held_out, quantile=0.25) == (0.75, 0.2)
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\)"):
        memorised_share(samples, train, held_out, quantile=5)
    with pytest.raises(ValueError, match="at least one sample"):
        memorised_share(samples[:0], train, held_out)
    with pytest.raises(ValueError, match="copies of training images"):
        memorised_share(samples, train, torch.tensor([[0.0], [10.0], [3.0]]), quantile=0.25)


# --- registry and defaults ------------------------------------------------------------------


def test_digits_training_split_gets_the_held_out_metrics_by_default(train, test):
    assert default_metrics(train) == ["fdinf-digits", "memorisation-digits", "fd-digits"]
    assert default_metrics(test) == ["fd-digits"]
    for name in ("fdinf-digits", "memorisation-digits"):
        metric = plugins.get("metrics", name)
        assert isinstance(metric, (HeldOutFDMetric, MemorisationMetric))
    assert lower_is_better("FD∞-digits") and lower_is_better("FD297-digits floor")
    assert lower_is_better("memorised-digits") and lower_is_better("FD∞-digits ±") is None


def test_non_finite_samples_score_worst_beside_finite_floors(train, test, few_subsets):
    samples = test.x.clone()
    samples[3, 0, 2, 2] = math.nan
    result = evaluate(samples, train, metrics=["fdinf-digits", "memorisation-digits"],
                      finite=False)  # as training records it; a table refuses it
    assert all(result[k] == math.inf for k in FD_KEYS)
    assert math.isnan(result["memorised-digits"])
    assert all(math.isfinite(result[f"{k} floor"]) for k in [*FD_KEYS, "memorised-digits"])
