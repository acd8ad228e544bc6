"""The diffusion math against the papers: scalings, grids, NFE counts, closed-form ODE solutions."""

import math

import pytest
import torch

from zoo.diffusion import (
    SIGMA_DATA,
    SIGMA_MAX,
    SIGMA_MIN,
    Denoiser,
    StackedGenerator,
    append_zero,
    consistency_scalings,
    edm_scalings,
    karras_sigmas,
    lognormal_sigmas,
)
from zoo.diffusion.samplers import (
    NFECounter,
    generate,
    run_sampler,
    sample_consistency,
    sample_edm_stochastic,
    sample_euler,
    sample_heun,
)


def test_edm_scalings_match_table_1():
    sigma = torch.tensor([0.002, 0.5, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma)
    sd = 0.5
    for i, s in enumerate(sigma.tolist()):
        assert c_skip[i] == pytest.approx(sd**2 / (s**2 + sd**2))
        assert c_out[i] == pytest.approx(s * sd / math.sqrt(s**2 + sd**2))
        assert c_in[i] == pytest.approx(1 / math.sqrt(s**2 + sd**2))
        assert c_noise[i] == pytest.approx(math.log(s) / 4)
    # At σ = σ_d the skip and output paths weigh the same: c_skip = 1/2, c_out = σ_d/√2.
    assert c_skip[1] == pytest.approx(0.5) and c_out[1] == pytest.approx(0.5 / math.sqrt(2))


def test_consistency_scalings_boundary_condition():
    c_skip, c_out, c_in, c_noise = consistency_scalings(
        torch.tensor(SIGMA_MIN, dtype=torch.float64)
    )
    assert c_skip.item() == 1.0 and c_out.item() == 0.0
    c_skip, c_out, _, _ = consistency_scalings(torch.tensor(80.0, dtype=torch.float64))
    assert c_skip.item() == pytest.approx(0.25 / ((80 - 0.002) ** 2 + 0.25))
    assert c_out.item() == pytest.approx((80 - 0.002) * 0.5 / math.sqrt(80**2 + 0.25))


def test_consistency_denoiser_is_identity_at_sigma_min():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    f = Denoiser(lambda x, c_noise, labels: net(x) * 100, "consistency")
    x = torch.randn(16, 2)
    assert torch.equal(f(x, SIGMA_MIN), x)


def test_karras_grid_end_points_length_and_formula():
    s = karras_sigmas(18)
    assert len(s) == 18 and s.dtype == torch.float64
    assert s[0].item() == pytest.approx(SIGMA_MAX) and s[-1].item() == pytest.approx(SIGMA_MIN)
    assert torch.all(s[1:] < s[:-1])
    i, n, rho = 5, 18, 7
    expected = (80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    assert s[i].item() == pytest.approx(expected)
    assert karras_sigmas(1).tolist() == [SIGMA_MAX]
    assert append_zero(s)[-1].item() == 0 and len(append_zero(s)) == 19
    with pytest.raises(ValueError, match="at least 1"):
        karras_sigmas(0)


def test_lognormal_sigmas_moments():
    g = torch.Generator().manual_seed(0)
    log_s = lognormal_sigmas(200_000, -1.2, 1.2, generator=g).log()
    assert log_s.mean().item() == pytest.approx(-1.2, abs=0.02)
    assert log_s.std().item() == pytest.approx(1.2, abs=0.02)


def gaussian_denoiser(s):
    """The ideal denoiser of data ~ N(0, s²): D(x, σ) = s²/(s² + σ²)·x."""

    def D(x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=x.dtype)
        return s**2 / (s**2 + sigma**2) * x

    return D


def test_nfe_counts():
    D = gaussian_denoiser(0.5)
    x = torch.randn(4, 3) * 80
    sigmas = append_zero(karras_sigmas(18))
    assert run_sampler(sample_heun, D, x, sigmas)[1] == 35  # EDM: 18 steps = 35 NFE
    assert run_sampler(sample_euler, D, x, sigmas)[1] == 18
    gen = StackedGenerator(range(4))
    assert run_sampler(sample_edm_stochastic, D, x, sigmas, generator=gen, S_churn=10)[1] == 35
    assert run_sampler("consistency", D, x, [80.0, 0.8], generator=gen)[1] == 2


def _ode_errors(n, s=0.5):
    """Relative error of Heun and Euler on n Karras points vs the exact PF-ODE solution."""
    from zoo.diffusion.samplers import euler_step, heun_step

    D = gaussian_denoiser(s)
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_T = x_T * SIGMA_MAX
    # For N(0, s²) data the PF-ODE dx/dσ = σx/(s²+σ²) gives x(σ) ∝ √(s²+σ²).
    exact = x_T * math.sqrt(s**2 + SIGMA_MIN**2) / math.sqrt(s**2 + SIGMA_MAX**2)
    sigmas = karras_sigmas(n).tolist()
    heun, euler = x_T.clone(), x_T.clone()
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        heun = heun_step(D, heun, a, b)
        euler = euler_step(D, euler, a, b)
    rel = lambda y: ((y - exact).abs() / exact.abs()).max().item()
    return rel(heun), rel(euler)


def test_heun_matches_closed_form_ode_solution_at_second_order():
    heun_18, euler_18 = _ode_errors(18)
    heun_36, euler_36 = _ode_errors(36)
    heun_144, _ = _ode_errors(144)
    assert heun_18 < 0.06 and heun_144 < 1e-3
    assert 3.5 < heun_18 / heun_36 < 5.5  # halving the step divides the error by ~4: 2nd order
    assert 1.7 < euler_18 / euler_36 < 2.3  # Euler: by ~2, 1st order
    assert euler_18 > 2 * heun_18


def test_heun_sampler_lands_on_the_exact_solution():
    s = 0.5
    x_T = torch.randn(64, 2, dtype=torch.float64) * SIGMA_MAX
    out = sample_heun(gaussian_denoiser(s), x_T, append_zero(karras_sigmas(256)))
    target = x_T * s / math.sqrt(s**2 + SIGMA_MAX**2)
    assert ((out - target).abs() / target.abs()).max().item() < 1e-3


def test_stochastic_sampler_without_churn_is_heun():
    D = gaussian_denoiser(0.5)
    x = torch.randn(8, 2) * 80
    sigmas = append_zero(karras_sigmas(10))
    a = sample_heun(D, x, sigmas)
    b = sample_edm_stochastic(D, x, sigmas, generator=StackedGenerator(range(8)))
    assert torch.equal(a, b)


def test_stochastic_churn_changes_samples_and_respects_tmin_tmax():
    D = gaussian_denoiser(0.5)
    x = torch.randn(8, 2) * 80
    sigmas = append_zero(karras_sigmas(10))
    heun = sample_heun(D, x, sigmas)
    churn = sample_edm_stochastic(D, x, sigmas, generator=StackedGenerator(range(8)), S_churn=40)
    assert not torch.allclose(heun, churn)
    # A window that contains no grid point means γ = 0 everywhere: back to Heun.
    off = sample_edm_stochastic(
        D, x, sigmas, generator=StackedGenerator(range(8)), S_churn=40, S_tmin=1000, S_tmax=2000
    )
    assert torch.equal(off, heun)


def small_denoiser():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def F(x, c_noise, labels=None):
        return net(torch.cat([x, c_noise[:, None]], 1))

    return Denoiser(F, "edm")


@pytest.mark.parametrize(
    "sampler,opts", [("heun", {}), ("edm-stochastic", {"S_churn": 20}), ("euler", {})]
)
def test_sample_does_not_depend_on_batch(sampler, opts):
    D = small_denoiser()
    sigmas = append_zero(karras_sigmas(6))
    together, _ = generate(D, sampler, sigmas, (2,), range(10, 18), batch_size=8, **opts)
    alone, _ = generate(D, sampler, sigmas, (2,), [15], batch_size=1, **opts)
    split, _ = generate(D, sampler, sigmas, (2,), range(10, 18), batch_size=3, **opts)
    torch.testing.assert_close(alone[0], together[5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split, together, rtol=1e-5, atol=1e-6)


def test_consistency_sampling_one_sigma_is_one_step_and_clips():
    f = Denoiser(lambda x, c, l=None: x * 3, "consistency")
    x = torch.randn(5, 2) * 80
    one = sample_consistency(f, x, [80.0])
    assert torch.equal(one, f(x, 80.0))
    clipped = sample_consistency(
        f, x, [80.0, 1.0], generator=StackedGenerator(range(5)), clip=(-1, 1)
    )
    assert clipped.abs().max() <= 1


def test_sampler_grid_errors():
    D = gaussian_denoiser(0.5)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="end at sigma=0"):
        sample_heun(D, x, karras_sigmas(4))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_euler(D, x, [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="sigma_min"):
        sample_consistency(D, x, [80.0, 0.001], generator=StackedGenerator(range(2)))


def test_stacked_generator_is_per_sample():
    a = StackedGenerator([3, 4, 5]).randn([2])
    b = StackedGenerator([4]).randn([2])
    assert torch.equal(a[1], b[0])


def test_counter_counts_calls():
    c = NFECounter(gaussian_denoiser(0.5))
    c(torch.zeros(3, 2), 1.0)
    c(torch.zeros(1, 2), 1.0)
    assert c.nfe == 2


def test_denoiser_rejects_bad_sigma_shape_and_parameterization():
    D = small_denoiser()
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        D(torch.zeros(4, 2), torch.ones(3))
    with pytest.raises(ValueError, match="unknown parameterization"):
        Denoiser(torch.nn.Identity(), "vp")
    assert SIGMA_DATA == 0.5
