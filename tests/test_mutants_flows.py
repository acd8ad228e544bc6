"""Rectified flow's Euler sampler and MeanFlow's time sampler against hand computations,
written against cosmic-ray's survivors (issue 16; docs/testing.md)."""

import pytest
import torch
from zoo_rf.flow import sample_rf_euler


def test_rf_euler_takes_the_steps_of_any_grid_from_at_most_one_down_to_zero():
    """Z ← Z + (s − s′)·v(Z, 1 − s) on the noise weights s = 0.5, 0.2, 0 with v(Z, t) = t·1:
    Z + 0.3·0.5 + 0.2·0.8; a grid may start below 1 (a partial path) but not above it."""
    seen = []

    def velocity(x, t, labels=None):
        seen.append(t)
        return torch.full_like(x, t)

    x = torch.zeros(2, 3, dtype=torch.float64)
    out = sample_rf_euler(velocity, x, [0.5, 0.2, 0.0])
    assert seen == pytest.approx([0.5, 0.8])
    torch.testing.assert_close(out, torch.full_like(x, 0.3 * 0.5 + 0.2 * 0.8))
    for grid in ([1.5, 0.0], [1.0, 0.5], [1.0], [1.0, 1.0, 0.0], [0.5, 0.7, 0.0]):
        with pytest.raises(ValueError, match="need noise weights decreasing from <= 1 to 0"):
            sample_rf_euler(velocity, x, grid)


def test_meanflow_times_are_two_logit_normal_draws_ordered():
    """With ratio 1, (r, t) = (min, max) of two sigmoid(N(mean, std²)) draws (MeanFlow Sec. 4.3):
    pooled, their logits have the mean and standard deviation asked for."""
    from zoo_meanflow.loss import sample_times

    from zoo.training import BatchNoise

    r, t = sample_times(BatchNoise(0, 0, 20_000), mean=-0.4, std=1.6, ratio=1.0)
    assert bool((r <= t).all()) and bool((r < t).any())
    logits = torch.cat([r, t]).double().logit()
    assert logits.mean().item() == pytest.approx(-0.4, abs=0.03)
    assert logits.std().item() == pytest.approx(1.6, abs=0.03)
