"""zoo_cm.loss's schedules, weightings, distances and continuous-time value against hand
computations, written against cosmic-ray's survivors (issue 16; docs/testing.md)."""

import math

import pytest
import torch
from test_cm import FixedNoise, cm_config, consistency_fn
from zoo_cm.loss import (
    ConsistencyTraining,
    ContinuousConsistency,
    ct_num_scales,
    ct_target_ema,
    inverse_karras_time_derivative,
    karras_time,
    l1_distance,
    l2_distance,
    metric_hvp,
    weighting,
)

LO, HI, RHO = 0.01, 20.0, 5.0  # other than the defaults, so a default used in their place shows


def test_weightings_are_the_formulas():
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert weighting("uniform", t).tolist() == [1.0, 1.0]
    assert weighting("snrp1", t).tolist() == pytest.approx([1 / 0.25 + 1, 1 / 4 + 1])
    assert weighting("truncated-snr", t).tolist() == pytest.approx([4.0, 1.0])
    scale = RHO * (HI ** (1 / RHO) - LO ** (1 / RHO))
    expected = [s ** (1 / RHO - 1) / scale for s in (0.5, 2.0)]
    assert weighting("uniform-u", t, LO, HI, RHO).tolist() == pytest.approx(expected, rel=1e-12)
    default = [s ** (1 / 7 - 1) / (7 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) for s in (0.5, 2.0)]
    assert weighting("uniform-u", t).tolist() == pytest.approx(default, rel=1e-12)
    for unknown in ("snr", "vp"):  # names sorting before and after the valid ones
        with pytest.raises(ValueError, match=f"unknown weighting '{unknown}'; valid: "):
            weighting(unknown, t)


@pytest.mark.parametrize("u", [0.1, 0.5, 0.9])
def test_inverse_time_derivative_times_the_time_derivative_is_one(u):
    """(τ⁻¹)′(τ(u))·τ′(u) = 1, τ′ a central difference of τ written out here."""
    tau = lambda v: (LO ** (1 / RHO) + v * (HI ** (1 / RHO) - LO ** (1 / RHO))) ** RHO
    t = torch.tensor([tau(u)], dtype=torch.float64)
    fd = (tau(u + 1e-6) - tau(u - 1e-6)) / 2e-6
    assert inverse_karras_time_derivative(t, LO, HI, RHO).item() * fd == pytest.approx(1, rel=1e-6)
    t_u, dt_du = karras_time(torch.tensor([u], dtype=torch.float64), LO, HI, RHO)
    assert t_u.item() == pytest.approx(tau(u), rel=1e-12)
    assert dt_du.item() == pytest.approx(fd, rel=1e-6)


def test_distances_per_sample_mean_over_dimensions():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[1.0, 0.0], [0.0, 4.0]], [[1.0, -1.0], [1.0, -1.0]]])
    assert l2_distance(a, b).tolist() == [(0 + 4 + 9 + 0) / 4, 1.0]
    assert l1_distance(a, b).tolist() == [(0 + 2 + 3 + 0) / 4, 1.0]


def test_metric_hessian_of_l2_is_two_over_the_dimension():
    """d(x, y) = ‖x − y‖²/D: G = 2I/D, so G·v = 2v/D."""
    y, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(metric_hvp(l2_distance, y, v), 2 * v / 4)


def test_ct_schedules_by_hand():
    """N(k) = ⌈√(k/K·((s1+1)² − s0²) + s0²) − 1⌉ + 1 and μ(k) = exp(s0·ln μ0 / N(k)) (paper) or
    / (N(k) − 1) (code), Appendix C, at K = 100, s0 = 3, s1 = 12, μ0 = 0.8."""
    K, s0, s1, mu0 = 100, 3, 12, 0.8
    assert ct_num_scales(0, K, s0, s1) == 3 and ct_num_scales(K, K, s0, s1) == 13
    n_half = math.ceil(math.sqrt(0.5 * (13**2 - 9) + 9) - 1) + 1  # √89.0 = 9.43 → 10
    assert ct_num_scales(50, K, s0, s1) == n_half == 10
    assert ct_target_ema(0, K, s0, s1, mu0) == pytest.approx(mu0)
    assert ct_target_ema(50, K, s0, s1, mu0) == pytest.approx(math.exp(3 * math.log(0.8) / 10))
    assert ct_target_ema(50, K, s0, s1, mu0, "code") == pytest.approx(0.8 ** (3 / 9))
    with pytest.raises(ValueError, match="ct_mu_form='ema' is not one of paper, code"):
        ct_target_ema(0, K, s0, s1, mu0, "ema")


def test_continuous_loss_value_is_half_lambda_tau_prime_squared_tangent_norm():
    """CT∞'s logged value: ½·λ(t)·τ′(u)²·(df/dt)ᵀ·G·(df/dt), with df/dt along (z, 1) from a
    central difference of f and G = 2I/D (l2); its gradient: λ·τ′·∇f_θᵀ·G·df/dt."""
    f = consistency_fn(torch.float64)
    x = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = torch.tensor([0.3, 0.7], dtype=torch.float64)
    config = cm_config(sigma_min=LO, sigma_max=HI, rho=RHO, weighting="snrp1")
    task = ContinuousConsistency(f, config, l2_distance)
    value = task.loss(f, x, None, FixedNoise(u=u, z=z))
    t, dt_du = karras_time(u, LO, HI, RHO)
    h = 1e-6
    with torch.no_grad():
        x_t = x + t[:, None] * z
        df = (f(x_t + h * z, t + h) - f(x_t - h * z, t - h)) / (2 * h)
    lam = 1 / t**2 + 1
    expected = 0.5 * lam * dt_du**2 * (df * (2 / 2) * df).sum(1)
    torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=0)


def test_discrete_pairs_are_adjacent_grid_points_and_cover_every_interval():
    """n ~ U{1, …, N−1} (Algorithm 3): with the trainer's own noise, the online network sees
    t_{n+1} and the target t_n, always neighbours on the Karras grid (written out here), and
    every one of the N − 1 intervals is drawn."""
    from zoo.training import BatchNoise

    f = consistency_fn(torch.float64)
    config = cm_config(mode="ct", init="random", iterations=10, s0=5, s1=5)
    task = ConsistencyTraining(f, config, l2_distance)
    seen = {}
    task.net.register_forward_hook(lambda m, args, out: seen.__setitem__("online", args[1]))
    task.target.register_forward_hook(lambda m, args, out: seen.__setitem__("target", args[1]))
    x = torch.zeros(256, 2, dtype=torch.float64)
    task.loss(task.net, x, None, BatchNoise(seed=0, step=0, global_batch=256))
    grid = [(80 ** (1 / 7) + i / 4 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(5)]
    pairs = set()
    for t_next, t in zip(seen["online"].tolist(), seen["target"].tolist()):
        i = min(range(5), key=lambda j: abs(grid[j] - t_next))
        assert t_next == pytest.approx(grid[i], rel=1e-9) and t == pytest.approx(grid[i + 1])
        pairs.add(i)
    assert pairs == {0, 1, 2, 3}
