"""zoo.metrics' W2 against hand computations, written against cosmic-ray's survivors (issue 16;
docs/testing.md)."""

import math

import numpy as np
import pytest
import torch

from zoo.data import load_dataset
from zoo.metrics.w2 import W2Metric, wasserstein2


def test_w2_floor_is_the_mean_over_sets_of_two_fresh_true_sets_and_is_cached(monkeypatch):
    """floor = mean_k W2(true set 20_000 + seed + 10⁶k, reference 10_000 + seed + 10⁶k); computed
    once per (data, set sizes, seed)."""
    monkeypatch.setattr(W2Metric, "SET_SIZE", 100)
    toy = load_dataset("checkerboard", n=1000)
    draws = []
    sample_true = toy.sample_true
    toy.sample_true = lambda n, seed: draws.append((n, seed)) or sample_true(n, seed)
    samples = sample_true(200, 3)
    metric = W2Metric()
    result = metric.compute(samples, toy, seed=2)
    hand = np.mean([wasserstein2(sample_true(100, 20_002 + 1_000_000 * k),
                                 sample_true(100, 10_002 + 1_000_000 * k)) for k in range(2)])
    assert result["W2 floor"] == pytest.approx(hand, rel=1e-12)
    assert len(draws) == 4
    again = metric.compute(samples * 2, toy, seed=2)
    assert len(draws) == 6 and again["W2 floor"] == result["W2 floor"]  # references only
    other = metric.compute(samples, toy, seed=5)
    assert len(draws) == 10 and other["W2 floor"] != result["W2 floor"]


def test_w2_refuses_mismatched_sets_and_scores_non_finite_ones_worst():
    a = torch.zeros(3, 2)
    for b in (torch.zeros(4, 2), torch.zeros(3, 3), torch.zeros(3)):
        with pytest.raises(ValueError, match="need two point sets of equal shape"):
            wasserstein2(a, b)
    with pytest.raises(ValueError, match="need two point sets"):
        wasserstein2(torch.zeros(3), torch.zeros(3))
    assert wasserstein2(a, torch.tensor([[0.0, math.inf]] * 3)) == math.inf
    assert wasserstein2(torch.tensor([[math.nan, 0.0]] * 3), a) == math.inf
    # one set: W2 of points 3 apart in one coordinate and 4 in the other is 5
    assert wasserstein2(torch.zeros(2, 2), torch.tensor([[3.0, 4.0], [3.0, 4.0]])) == 5.0


def test_w2_metric_needs_a_true_sampler():
    digits = load_dataset("checkerboard", n=10)
    digits.sample_true = None
    with pytest.raises(ValueError, match="W2 needs a dataset with a true sampler"):
        W2Metric().compute(torch.zeros(10, 2), digits)


def test_w2_sets_are_the_documented_2000_points(monkeypatch):
    """n samples make n // 2000 sets (one when fewer): 4000 → 2000 + 2000, 3999 → one of 3999
    (the sizes seen by a stand-in for the transport solver)."""
    import zoo.metrics.w2 as w2

    sizes = []
    monkeypatch.setattr(w2, "wasserstein2", lambda a, b: sizes.append(len(a)) or 1.0)
    toy = load_dataset("checkerboard", n=10)
    for n, expected in ((4000, [2000, 2000]), (3999, [3999]), (100, [100])):
        sizes.clear()
        W2Metric().compute(torch.zeros(n, 2), toy)
        assert sizes == expected * 2  # each set against its reference, then the floors


def test_evaluate_without_a_seed_is_the_seed_0_evaluation():
    """The default seed is 0, as for Evaluation and every metric's compute; the W2 references
    depend on it, so another default would move every toy number measured without a seed."""
    from zoo.metrics import evaluate

    toy = load_dataset("checkerboard", n=100)
    samples = toy.sample_true(50, 1)
    assert evaluate(samples, toy) == evaluate(samples, toy, seed=0)
    assert evaluate(samples, toy)["W2"] != evaluate(samples, toy, seed=1)["W2"]


def test_shift_translates_each_image_by_its_drawn_offset_filling_with_background():
    """shift: image i moved by (dy_i − 1, dx_i − 1) pixels, (dy, dx) the generator's next
    randint(0, 3, (2, n)) draws; uncovered pixels are −1. Checked against a loop by hand."""
    from zoo.metrics.digits import shift

    x = torch.rand(40, 1, 8, 8) * 2 - 1
    dy, dx = torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(5))
    out = shift(x, torch.Generator().manual_seed(5))
    hand = torch.full_like(x, -1.0)
    for i in range(40):
        oy, ox = int(dy[i]) - 1, int(dx[i]) - 1  # output (r, c) reads input (r + oy, c + ox)
        for r in range(8):
            for c in range(8):
                if 0 <= r + oy < 8 and 0 <= c + ox < 8:
                    hand[i, 0, r, c] = x[i, 0, r + oy, c + ox]
    assert torch.equal(out, hand)
    assert len(set(zip(dy.tolist(), dx.tolist()))) == 9  # every offset occurs in 40 draws


def test_train_classifier_is_seeded_and_scales_its_features_to_unit_rms():
    """train_classifier: the same seed gives the same weights, another seed others; after
    training, feature_scale makes the features' root-mean-square on the training data 1."""
    from zoo.metrics.digits import train_classifier

    data = load_dataset("digits")
    small = type("Small", (), {"x": data.x[:96], "labels": data.labels[:96],
                               "__len__": lambda self: 96})()
    a = train_classifier(small, epochs=1, batch_size=32, seed=3)
    b = train_classifier(small, epochs=1, batch_size=32, seed=3)
    c = train_classifier(small, epochs=1, batch_size=32, seed=4)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.head.weight, c.head.weight)
    features, _ = a.features_and_logits(small.x)
    assert features.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    assert a.feature_scale.item() != 1.0 and not a.training
    assert not any(p.requires_grad for p in a.parameters())


def test_fd_infinity_from_exactly_two_sizes_is_the_line_through_them():
    """Two distinct sizes suffice: a = (n₁v₁ − n₂v₂) / (n₁ − n₂) solves v = a + b/n at both."""
    from zoo.metrics.frechet import extrapolate

    sizes, values = [100, 300], [0.7, 0.4]
    hand = (100 * 0.7 - 300 * 0.4) / (100 - 300)
    assert extrapolate(sizes, values) == pytest.approx(hand, rel=1e-12)
    assert extrapolate([100, 300, 300], [0.7, 0.4, 0.4]) == pytest.approx(hand, rel=1e-12)
    for bad in ([100], [], [100, 100]):
        with pytest.raises(ValueError, match="two or more distinct sizes"):
            extrapolate(bad, [0.5] * len(bad))


@pytest.mark.parametrize("quantile", [0.0, 1.0, 1.5, -0.1])
def test_memorised_share_refuses_a_quantile_outside_the_open_unit_interval(quantile):
    from zoo.metrics.memorisation import memorised_share

    train, points = torch.zeros(3, 2), torch.ones(4, 2)
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\)"):
        memorised_share(points, train, points, quantile=quantile)


@pytest.mark.parametrize("name", ["checkerboard", "toy", "cifar10"])
def test_held_out_metrics_refuse_other_datasets_by_name_whichever_way_it_sorts(name):
    from zoo.data import Dataset
    from zoo.metrics.held_out import digits_splits

    other = Dataset(name, torch.zeros(3, 1, 8, 8), None, "0" * 64, "image")
    with pytest.raises(ValueError, match=f"dataset '{name}' is not digits"):
        digits_splits(other, "fdinf-digits")


def test_held_out_metrics_name_the_training_splits_checksum_when_given_another_split():
    from zoo.metrics.held_out import digits_splits

    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    with pytest.raises(ValueError) as refused:
        digits_splits(test, "memorisation-digits")
    assert f"checksum {train.checksum[:16]}…)" in str(refused.value)
    assert f"checksum {test.checksum[:16]}…, 297 images" in str(refused.value)


def test_every_held_out_result_is_lower_is_better_and_its_standard_error_has_no_direction(
        monkeypatch):
    """FDs, memorised shares and their floors are lower-is-better (the table's ↓ and the plots
    rely on it); the ± columns have no direction."""
    from zoo.metrics import evaluate, lower_is_better
    from zoo.metrics.held_out import HeldOutFDMetric

    monkeypatch.setattr(HeldOutFDMetric, "SUBSETS", 2)
    train = load_dataset("digits")
    result = evaluate(train.x[:594], train, metrics=["fdinf-digits", "memorisation-digits"])
    keys = [k for k in result if "digits" in k]
    assert len(keys) == 11
    for key in keys:
        assert lower_is_better(key) is (None if key.endswith("±") else True), key


def test_fdinf_digits_without_a_seed_is_the_seed_0_evaluation(monkeypatch):
    from zoo.metrics.held_out import HeldOutFDMetric

    monkeypatch.setattr(HeldOutFDMetric, "SUBSETS", 2)
    train = load_dataset("digits")
    samples = (train.x[:600] + 0.3 * torch.randn(600, 1, 8, 8,
                                                 generator=torch.Generator().manual_seed(0)))
    metric = HeldOutFDMetric()
    default = metric.compute(samples.clamp(-1, 1), train)
    assert default == metric.compute(samples.clamp(-1, 1), train, seed=0)
    assert default != metric.compute(samples.clamp(-1, 1), train, seed=1)
