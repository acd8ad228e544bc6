"""zoo.diffusion against hand computations, written against cosmic-ray's survivors (issue 16).

Preconditioning through a spy network, grids and steps written out from EDM's equations, the
stochastic samplers' noise rebuilt from the per-sample seeds. docs/testing.md lists the mutants.
"""

import math

import pytest
import torch

from zoo.diffusion import (
    Denoiser,
    StackedGenerator,
    append_zero,
    consistency_scalings,
    expand_sigma,
    karras_sigmas,
    lognormal_sigmas,
)
from zoo.diffusion.precond import ode_derivative
from zoo.diffusion.random import PhiloxGenerator
from zoo.diffusion.samplers import (
    check_sigmas,
    euler_step,
    generate,
    heun_step,
    sample_consistency,
    sample_edm_stochastic,
    sample_heun,
)

SD, EPS = 0.7, 0.01  # σ_d and ε other than the defaults, so a default used in their place shows


class SpyNet:
    """A raw network F(x, c_noise) = 2·x + c_noise that records its inputs."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, c_noise, labels=None):
        self.calls.append((x.clone(), c_noise.clone(), labels))
        return 2 * x + c_noise.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("parameterization", ["edm", "consistency"])
def test_denoiser_feeds_and_combines_the_network_as_the_papers_write_it(parameterization):
    """D = c_skip·x + c_out·F(c_in·x, ln σ/4) with EDM Table 1 / CM Appendix C written out."""
    x = torch.randn(3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)
    labels = torch.tensor([1, 0, 2])
    net = SpyNet()
    out = Denoiser(net, parameterization, sigma_data=SD, sigma_min=EPS)(x, sigma, labels)
    (x_in, c_noise, seen_labels), = net.calls
    assert seen_labels is labels and c_noise.shape == (3,)
    for b, s in enumerate(sigma.tolist()):
        c_in = 1 / math.sqrt(s**2 + SD**2)
        if parameterization == "edm":
            c_skip, c_out = SD**2 / (s**2 + SD**2), s * SD / math.sqrt(s**2 + SD**2)
        else:
            c_skip = SD**2 / ((s - EPS) ** 2 + SD**2)
            c_out = (s - EPS) * SD / math.sqrt(s**2 + SD**2)
        assert c_noise[b].item() == pytest.approx(math.log(s) / 4, rel=1e-12)
        torch.testing.assert_close(x_in[b], c_in * x[b], rtol=1e-12, atol=0)
        F = 2 * c_in * x[b] + math.log(s) / 4
        torch.testing.assert_close(out[b], c_skip * x[b] + c_out * F, rtol=1e-12, atol=1e-15)


def test_consistency_scalings_hold_the_boundary_at_the_given_epsilon():
    c_skip, c_out, c_in, c_noise = consistency_scalings(torch.tensor(EPS, dtype=torch.float64),
                                                        SD, EPS)
    assert (c_skip.item(), c_out.item()) == (1.0, 0.0)
    assert c_in.item() == pytest.approx(1 / math.sqrt(EPS**2 + SD**2), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(EPS) / 4, rel=1e-12)


def test_expand_sigma_gives_one_value_per_sample_broadcast_over_the_rest():
    x = torch.zeros(4, 3, 2)
    assert torch.equal(expand_sigma(2.5, x), torch.full((4, 1, 1), 2.5))
    per_sample = expand_sigma(torch.tensor([1.0, 2.0, 3.0, 4.0]), x)
    assert per_sample.shape == (4, 1, 1) and per_sample.flatten().tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"scalar or have shape \[4\], got \(4, 1\)"):
        expand_sigma(torch.ones(4, 1), x)


def test_ode_derivative_is_x_minus_d_over_sigma():
    x, d = torch.tensor([[3.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    assert ode_derivative(d, x, 4.0).tolist() == [[0.5, -0.5]]


def hand_karras(n, lo, hi, rho):
    return [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
            for i in range(n)]


def test_karras_grid_with_other_settings_and_its_limits():
    grid = karras_sigmas(5, 0.1, 10.0, rho=3.0)
    assert grid.tolist() == pytest.approx(hand_karras(5, 0.1, 10.0, 3.0), rel=1e-12)
    assert karras_sigmas(4).tolist() == pytest.approx(hand_karras(4, 0.002, 80.0, 7.0), rel=1e-12)
    assert karras_sigmas(2, 0.1, 10.0).tolist() == pytest.approx([10.0, 0.1], rel=1e-12)
    assert karras_sigmas(1, 0.1, 10.0).tolist() == [10.0]
    assert karras_sigmas(3, 2.0, 2.0).tolist() == pytest.approx([2.0] * 3)  # σ_min = σ_max
    for lo, hi in ((0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError, match="0 < sigma_min <= sigma_max"):
            karras_sigmas(4, lo, hi)
    assert append_zero(torch.tensor([3.0, 1.0])).tolist() == [3.0, 1.0, 0.0]


def test_lognormal_defaults_are_edms_training_distribution():
    """σ = exp(−1.2 + 1.2·ξ) with ξ the generator's standard normals (EDM Table 1)."""
    xi = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    sigmas = lognormal_sigmas(1000, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sigmas, (-1.2 + 1.2 * xi).exp())


def test_stacked_generator_rows_are_each_seeds_own_stream():
    gen = StackedGenerator([7, 11])
    assert len(gen) == 2
    draws = gen.randn([3], dtype=torch.float64)
    for row, seed in zip(draws, [7, 11]):
        own = torch.Generator().manual_seed(seed)
        assert torch.equal(row, torch.randn(3, generator=own, dtype=torch.float64))
    like = StackedGenerator([7, 11]).randn_like(torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(like, draws)
    for batch in (1, 3):
        with pytest.raises(ValueError, match=f"batch of {batch} but 2 per-sample generators"):
            gen.randn_like(torch.zeros(batch, 4))


# ------------------------------------------------------------------ steps and samplers


def gaussian_denoiser(s):
    """The ideal denoiser of data ~ N(0, s²): D(x, σ) = s²/(s² + σ²)·x."""
    return lambda x, sigma, labels=None: s**2 / (s**2 + torch.as_tensor(sigma).to(x) ** 2) * x


def test_euler_and_heun_steps_written_out():
    """EDM Algorithm 1 lines 4-8 by hand on D(x, σ) = x/(1+σ²): d = σx/(1+σ²)."""
    D, x = gaussian_denoiser(1.0), torch.tensor([[2.0]], dtype=torch.float64)
    s, t = 2.0, 0.5
    d = s / (1 + s**2) * 2.0
    assert euler_step(D, x, s, t).item() == pytest.approx(2.0 + (t - s) * d, rel=1e-12)
    x_e = 2.0 + (t - s) * d
    d_next = t / (1 + t**2) * x_e
    heun = 2.0 + (t - s) * (d + d_next) / 2
    assert heun_step(D, x, s, t).item() == pytest.approx(heun, rel=1e-12)


class SpyDenoiser:
    """Records (x, σ) of every call and returns 0: x never mixes with the model's output."""

    def __init__(self):
        self.calls, self.labels = [], []

    def __call__(self, x, sigma, labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)[0].item()
        self.calls.append((x.clone(), sigma))
        self.labels.append(labels)
        return torch.zeros_like(x)


@pytest.mark.parametrize("S_churn,gamma", [(0.3, 0.1), (50.0, math.sqrt(2) - 1)])
def test_stochastic_sampler_raises_sigma_by_gamma_with_the_seeds_noise(S_churn, gamma):
    """EDM Algorithm 2 lines 5-6: γ = min(S_churn/N, √2−1), σ̂ = σ(1+γ), x̂ = x + √(σ̂²−σ²)·S_noise·z,
    z drawn from each sample's own seed; churn only where S_tmin <= σ_i <= S_tmax (inclusive)."""
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigmas = [4.0, 2.0, 1.0, 0.0]  # N = 3
    spy = SpyDenoiser()
    sample_edm_stochastic(spy, x, sigmas, generator=StackedGenerator([5, 6]), S_churn=S_churn,
                          S_tmin=2.0, S_tmax=4.0, S_noise=0.5)
    z = StackedGenerator([5, 6]).randn([3], dtype=torch.float64)
    s_hat = 4.0 * (1 + gamma)
    first_x, first_sigma = spy.calls[0]
    assert first_sigma == pytest.approx(s_hat, rel=1e-12)
    torch.testing.assert_close(first_x, x + math.sqrt(s_hat**2 - 16.0) * 0.5 * z)
    # with D = 0 a step from σ̂ scales x by σ_next/σ̂ (Heun is exact on this linear ODE)
    second_x, second_sigma = spy.calls[2]  # after Heun's 2 NFE; σ = 2 = S_tmin churns too
    assert second_sigma == pytest.approx(2.0 * (1 + gamma), rel=1e-12)
    assert spy.calls[4][1] == 1.0  # σ = 1 < S_tmin: no churn


def test_stochastic_sampler_refuses_bad_settings():
    D, x, sigmas = gaussian_denoiser(0.5), torch.zeros(1, 1), [1.0, 0.0]
    gen = StackedGenerator([0])
    for opts in ({"S_churn": -1.0}, {"S_noise": -0.5}, {"S_tmin": -1.0}, {"S_churn": math.inf}):
        with pytest.raises(ValueError, match="must be a finite number >= 0"):
            sample_edm_stochastic(D, x, sigmas, generator=gen, **opts)
    with pytest.raises(ValueError, match="S_tmax"):
        sample_edm_stochastic(D, x, sigmas, generator=gen, S_tmin=2.0, S_tmax=1.0)
    sample_edm_stochastic(D, x, sigmas, generator=gen, S_tmin=1.0, S_tmax=1.0)  # equal: allowed


def test_heun_sampler_ends_with_one_euler_step_to_zero():
    spy = SpyDenoiser()
    sample_heun(spy, torch.ones(1, 1), [3.0, 1.0, 0.0])
    assert [s for _, s in spy.calls] == [3.0, 1.0, 1.0]  # Heun 3→1 (2 NFE), Euler 1→0 (1 NFE)


def test_multistep_consistency_renoises_with_the_given_epsilon_and_clips_every_step():
    """CM Algorithm 1: x ← f(x, σ_0); x ← f(x + √(σ²−ε²)·z, σ); each output clipped."""
    x = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 5
    calls = []

    def f(x, sigma, labels=None):
        calls.append(x.clone())
        return 3 * x

    out = sample_consistency(f, x, [5.0, 2.0], generator=StackedGenerator([8, 9]), sigma_min=0.5,
                             clip=(-1.0, 1.0))
    z = StackedGenerator([8, 9]).randn([3], dtype=torch.float64)
    first = (3 * x).clamp(-1, 1)
    torch.testing.assert_close(calls[1], first + math.sqrt(4.0 - 0.25) * z)
    torch.testing.assert_close(out, (3 * calls[1]).clamp(-1, 1))


def test_check_sigmas_limits():
    assert check_sigmas([2, 1]) == [2.0, 1.0]
    assert check_sigmas([2.0, 0.5], sigma_min=0.5, sigma_max=2.0) == [2.0, 0.5]  # ends included
    assert check_sigmas([1.0, 0.0], final_zero=True) == [1.0, 0.0]
    assert check_sigmas([3.0, 0.0], sigma_min=1.0, final_zero=True) == [3.0, 0.0]  # 0 not checked
    bad = [([], {}, "too short"), ([0.0], {"final_zero": True}, "too short"),
           ([1.0, math.nan], {}, "finite"), ([1.0, 1.0], {}, "strictly decreasing"),
           ([1.0, 0.5], {"final_zero": True}, "end at sigma=0"),
           ([3.0, 0.4], {"sigma_min": 0.5}, r"out of range: 0\.4"),
           ([3.0, 1.0], {"sigma_max": 2.0}, r"out of range: 3$")]
    for values, kw, message in bad:
        with pytest.raises(ValueError, match=message):
            check_sigmas(values, **kw)


def test_generate_starts_each_sample_at_sigma_0_times_its_seeds_noise():
    spy = SpyDenoiser()
    labels = torch.tensor([4, 2, 7])
    _, nfe = generate(spy, "euler", [3.0, 0.0], (2,), [10, 11, 12], labels=labels, batch_size=2,
                      distributed=False)
    assert nfe == 1 and len(spy.calls) == 2
    assert spy.labels[0].tolist() == [4, 2] and spy.labels[1].tolist() == [7]
    x_start = torch.cat([spy.calls[0][0], spy.calls[1][0]])
    torch.testing.assert_close(x_start, 3.0 * PhiloxGenerator([10, 11, 12]).randn([2]))
    with pytest.raises(ValueError, match="2 class labels for 3 seeds"):
        generate(spy, "euler", [3.0, 0.0], (2,), [10, 11, 12], labels=labels[:2])


def test_stochastic_sampler_defaults_churn_at_every_sigma_with_unit_noise():
    """S_tmin = 0, S_tmax = ∞, S_noise = 1 (EDM Algorithm 2's defaults): σ = 0.5 and σ = 100 both
    churn, γ = S_churn/N = 0.1, and the added noise is √(σ̂² − σ²)·z."""
    x = torch.zeros(1, 2, dtype=torch.float64)
    spy = SpyDenoiser()
    sample_edm_stochastic(spy, x, [100.0, 0.5, 0.0], generator=StackedGenerator([3]), S_churn=0.2)
    assert [s for _, s in spy.calls] == pytest.approx([110.0, 0.5, 0.55])  # Heun 2 NFE, Euler 1
    z = StackedGenerator([3]).randn([2], dtype=torch.float64)
    torch.testing.assert_close(spy.calls[0][0], math.sqrt(110.0**2 - 100.0**2) * z)


def test_stochastic_sampler_draws_noise_only_where_it_churns():
    """Outside [S_tmin, S_tmax] nothing is drawn: the first churned step (σ = 2, after σ = 4 above
    S_tmax) adds each seed's first normal draws."""
    x = torch.zeros(1, 2, dtype=torch.float64)
    spy = SpyDenoiser()
    sample_edm_stochastic(spy, x, [4.0, 2.0, 0.0], generator=StackedGenerator([3]), S_churn=0.2,
                          S_tmax=3.0)
    assert [s for _, s in spy.calls] == pytest.approx([4.0, 2.0, 2.2])
    z = StackedGenerator([3]).randn([2], dtype=torch.float64)
    # x stays 0 up to σ = 2 (x = 0, D = 0): what σ = 2 sees is the churn noise alone
    torch.testing.assert_close(spy.calls[2][0], math.sqrt(2.2**2 - 4.0) * z)
