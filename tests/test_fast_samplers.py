"""The fast PF-ODE samplers (zoo.diffusion.fast_samplers) against the papers: order of convergence
on the closed-form PF-ODE of Gaussian data, exact NFE counts, batch independence, and the guard
that keeps them to diffusion models."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from zoo.cli import main
from zoo.diffusion import SIGMA_MAX, Denoiser, append_zero, karras_sigmas
from zoo.diffusion.fast_samplers import (
    FAST_SAMPLERS,
    deis_vp_time,
    lagrange_integrals,
    sample_deis,
    sample_dpm_solver_pp_2m,
    sample_ipndm,
    sample_rhoab_deis,
)
from zoo.diffusion.samplers import generate, get_sampler, run_sampler, sample_euler
from zoo.plugins import get

S = 0.5  # data ~ N(0, S²)


def gaussian_denoiser(x, sigma, class_labels=None):
    """The ideal denoiser of data ~ N(0, S²): D(x, σ) = S²/(S² + σ²)·x."""
    return S**2 / (S**2 + sigma**2) * x


def karras(n):
    """EDM's grid (ρ = 7) down to σ_min = 1e-5, then 0: the first-order step to 0 of the
    single-step solvers then errs by σ_min²/(2S²) = 2e-10, below every error measured here."""
    return append_zero(karras_sigmas(n, sigma_min=1e-5))


def logsnr(n):
    """n σ's equally spaced in λ = −ln σ from σ_max to 1e-5, then 0 (DPM-Solver's own grid)."""
    return append_zero(torch.logspace(math.log10(SIGMA_MAX), -5, n, dtype=torch.float64))


def ode_error(sampler, sigmas):
    """Relative error at σ = 0 against the exact PF-ODE solution x(σ) ∝ √(S² + σ²) (float64)."""
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_T = x_T * SIGMA_MAX
    exact = x_T * S / math.sqrt(S**2 + SIGMA_MAX**2)
    out = sampler(gaussian_denoiser, x_T, sigmas)
    return ((out - exact).abs() / exact.abs()).max().item()


def deis(degree, sampler=sample_deis):
    return lambda denoiser, x, sigmas: sampler(denoiser, x, sigmas, degree=degree)


# (sampler, grid, steps, order). DPM-Solver-3's h³ terms change sign along EDM's grid here and
# nearly cancel (it measures 4–5 there), so both single-step solvers use their paper's grid.
# iPNDM's equal-step coefficients make it 2nd order on an uneven grid (4th on equal steps, where
# it is ρAB-DEIS-3: test_ipndm_is_rhoab_deis_3_on_equal_steps).
ORDERS = [
    ("ddim", karras, (16, 32, 64, 128), 1),
    ("dpm-solver-2", logsnr, (16, 32, 64, 128), 2),
    ("dpm-solver-3", logsnr, (32, 64, 128, 256), 3),
    ("dpm-solver++2m", karras, (32, 64, 128, 256), 2),
    ("ipndm", karras, (32, 64, 128, 256), 2),
    ("deis-3", karras, (64, 128, 256, 512), 4),
    ("rhoab-deis-3", karras, (64, 128, 256, 512), 4),
]


@pytest.mark.parametrize("name, grid, steps, order", ORDERS, ids=[o[0] for o in ORDERS])
def test_order_of_convergence_on_the_closed_form_ode(name, grid, steps, order):
    errors = [ode_error(FAST_SAMPLERS[name], grid(n)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (slope, errors)


@pytest.mark.parametrize("sampler", [sample_deis, sample_rhoab_deis])
@pytest.mark.parametrize("degree", [1, 2])
def test_deis_order_is_its_degree_plus_one(degree, sampler):
    steps = (64, 128, 256, 512)
    errors = [ode_error(deis(degree, sampler), karras(n)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - (degree + 1)) < 0.3, (slope, errors)


@pytest.mark.parametrize("sampler", [sample_deis, sample_rhoab_deis])
def test_deis_degree_0_is_ddim_and_ddim_is_euler(sampler):
    x = torch.randn(8, 2, dtype=torch.float64) * SIGMA_MAX
    sigmas = append_zero(karras_sigmas(7))
    torch.testing.assert_close(deis(0, sampler)(gaussian_denoiser, x, sigmas),
                               sample_euler(gaussian_denoiser, x, sigmas))
    assert get("samplers", "ddim") is sample_euler


def test_ipndm_is_rhoab_deis_3_on_equal_steps():
    x = torch.randn(8, 2, dtype=torch.float64) * 3
    sigmas = torch.linspace(3, 0, 13, dtype=torch.float64)
    torch.testing.assert_close(sample_ipndm(gaussian_denoiser, x, sigmas),
                               sample_rhoab_deis(gaussian_denoiser, x, sigmas),
                               rtol=1e-12, atol=1e-12)


# diff-sampler's DEIS coefficients (zju-pi/diff-sampler, diff-solvers-main/solver_utils.py,
# get_deis_coeff_list), written out here from its formulas as an independent computation.
def reference_vp_parameters(sigma_min, sigma_max, eps=1e-3):
    """edm2t: β_d and β_min of the VP-SDE through (ε, σ_min) and (1, σ_max); β₀, β₁."""
    beta_d = 2 * (math.log(sigma_min**2 + 1) / eps - math.log(sigma_max**2 + 1)) / (eps - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return beta_min, beta_d + beta_min


def reference_tab_coefficients(t_prev, t_cur, t_next, beta_0, beta_1, n=400_000):
    """∫_{t_cur}^{t_next} ℓ_j(τ)·(−½ d ln ᾱ/dτ / √(ᾱ(1 − ᾱ))) dτ, ᾱ = exp(−½τ²(β₁−β₀) − τβ₀),
    the reference's integrand (its dσ/dτ) on a fine midpoint grid (its own sum is left-point)."""
    tau = t_cur + (np.arange(n) + 0.5) * (t_next - t_cur) / n
    alpha = np.exp(-0.5 * tau**2 * (beta_1 - beta_0) - tau * beta_0)
    d_log_alpha = -tau * (beta_1 - beta_0) - beta_0
    integrand = -0.5 * d_log_alpha / np.sqrt(alpha * (1 - alpha))
    out = []
    for j, t_j in enumerate(t_prev):
        poly = np.prod([(tau - t_k) / (t_j - t_k) for k, t_k in enumerate(t_prev) if k != j],
                       axis=0)
        out.append(float(np.sum(integrand * poly) * (t_next - t_cur) / n))
    return out


def reference_rhoab_coefficients(prev, start, end):
    """The reference's closed forms of ∫ ℓ_j over [start, end] for 2, 3 and 4 nodes."""
    def integral_2(a, b, c):
        return ((end**3 - start**3) / 3 - (end**2 - start**2) * (a + b) / 2
                + (end - start) * a * b) / ((c - a) * (c - b))

    def integral_3(a, b, c, d):
        return ((end**4 - start**4) / 4 - (end**3 - start**3) * (a + b + c) / 3
                + (end**2 - start**2) * (a * b + a * c + b * c) / 2
                - (end - start) * a * b * c) / ((d - a) * (d - b) * (d - c))
    if len(prev) == 2:
        return [((end - prev[1])**2 - (start - prev[1])**2) / (2 * (start - prev[1])),
                (end - start)**2 / (2 * (prev[1] - start))]
    if len(prev) == 3:
        return [integral_2(prev[1], prev[2], prev[0]), integral_2(prev[0], prev[2], prev[1]),
                integral_2(prev[0], prev[1], prev[2])]
    return [integral_3(prev[1], prev[2], prev[3], prev[0]),
            integral_3(prev[0], prev[2], prev[3], prev[1]),
            integral_3(prev[0], prev[1], prev[3], prev[2]),
            integral_3(prev[0], prev[1], prev[2], prev[3])]


def test_deis_coefficients_equal_the_reference_implementations():
    """tAB-DEIS (``deis-3``) and ρAB-DEIS (``rhoab-deis-3``) take diff-sampler's coefficients on
    EDM's 18-point grid (1 to 4 nodes: the warm start and the cubic)."""
    sigmas = karras_sigmas(18).tolist()
    beta_0, beta_1 = reference_vp_parameters(0.002, 80.0)
    time = deis_vp_time(0.002, 80.0)
    t = time(np.array(sigmas))
    assert t[0] == pytest.approx(1.0, rel=1e-12) and t[-1] == pytest.approx(1e-3, rel=1e-9)
    for i in range(1, len(sigmas) - 1):
        nodes = sigmas[i::-1][:4]
        ours = lagrange_integrals(nodes, sigmas[i], sigmas[i + 1], time)
        theirs = reference_tab_coefficients(t[i::-1][:4], t[i], t[i + 1], beta_0, beta_1)
        assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-9), i
        assert sum(ours) == pytest.approx(sigmas[i + 1] - sigmas[i], rel=1e-12)  # ε constant
        ours = lagrange_integrals(nodes, sigmas[i], sigmas[i + 1])
        theirs = reference_rhoab_coefficients(nodes, sigmas[i], sigmas[i + 1])
        assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12), i


def test_tab_deis_is_the_more_accurate_at_ten_steps():
    """The DEIS paper's default (polynomial in VP time) beats the σ-polynomial variant at the
    CM paper's 10 NFE on the closed-form ODE of EDM's grid (0.073 against 0.17)."""
    grid = append_zero(karras_sigmas(10))
    tab, rhoab = ode_error(sample_deis, grid), ode_error(sample_rhoab_deis, grid)
    assert tab < 0.5 * rhoab, (tab, rhoab)


def test_lagrange_integrals_are_adams_bashforth_on_equal_steps():
    # ∫ over the next step of the cubic through the last 4 equally spaced points: AB4 (×h)
    assert lagrange_integrals([3.0, 2.0, 1.0, 0.0], 3.0, 4.0) == pytest.approx(
        [55 / 24, -59 / 24, 37 / 24, -9 / 24], rel=1e-12)
    # they integrate any cubic exactly on uneven nodes
    nodes, a, b = [2.0, 1.5, 0.7, 0.2], 2.0, 3.1
    poly = np.polynomial.Polynomial([0.3, -1.0, 2.0, 0.5])
    exact = poly.integ()(b) - poly.integ()(a)
    assert np.dot(lagrange_integrals(nodes, a, b), poly(np.array(nodes))) == pytest.approx(exact)


def test_dpm_solver_pp_2m_ends_on_the_last_denoised_value():
    calls = []

    def spy(x, sigma, class_labels=None):
        calls.append((x, sigma))
        return gaussian_denoiser(x, sigma)

    x = torch.randn(4, 2, dtype=torch.float64) * SIGMA_MAX
    out = sample_dpm_solver_pp_2m(spy, x, append_zero(karras_sigmas(5)))
    last_x, last_sigma = calls[-1]
    assert last_sigma == pytest.approx(0.002) and torch.equal(out, gaussian_denoiser(last_x, 0.002))


NFE = {
    "ddim": lambda n: n,
    "dpm-solver-2": lambda n: 2 * n - 1,
    "dpm-solver-3": lambda n: 3 * n - 2,
    "dpm-solver++2m": lambda n: n,
    "ipndm": lambda n: n,
    "deis-3": lambda n: n,
    "rhoab-deis-3": lambda n: n,
}


@pytest.mark.parametrize("name", NFE)
def test_nfe_counted_exactly_and_nothing_evaluated_at_zero(name):
    sigmas_seen = []

    def spy(x, sigma, class_labels=None):
        sigmas_seen.append(float(sigma))
        return gaussian_denoiser(x, sigma)

    for n in range(1, 8):
        sigmas_seen.clear()
        sigmas = append_zero(karras_sigmas(n))
        _, nfe = run_sampler(name, spy, torch.randn(3, 2) * SIGMA_MAX, sigmas)
        assert nfe == len(sigmas_seen) == NFE[name](n), (n, nfe)
        assert min(sigmas_seen) > 0


def small_denoiser(parameterization="edm"):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def F(x, c_noise, labels=None):
        return net(torch.cat([x, c_noise[:, None]], 1))

    return Denoiser(F, parameterization)


@pytest.mark.parametrize("name", FAST_SAMPLERS)
def test_sample_does_not_depend_on_batch(name):
    D = small_denoiser()
    sigmas = append_zero(karras_sigmas(6))
    together, _ = generate(D, name, sigmas, (2,), range(10, 18), batch_size=8)
    alone, _ = generate(D, name, sigmas, (2,), [15], batch_size=1)
    split, _ = generate(D, name, sigmas, (2,), range(10, 18), batch_size=3)
    torch.testing.assert_close(alone[0], together[5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split, together, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", FAST_SAMPLERS)
def test_a_consistency_model_is_refused_with_the_samplers_that_fit(name):
    with pytest.raises(ValueError) as info:
        get_sampler(name, small_denoiser("consistency"))
    assert str(info.value) == (
        f"sampler {name!r} needs a diffusion model, but this run is a consistency model; "
        "valid samplers for it: consistency")
    assert get_sampler(name, small_denoiser()) is FAST_SAMPLERS[name]


def test_deis_degree_must_be_a_natural_number():
    with pytest.raises(ValueError, match="degree must be an integer >= 0, got -1"):
        sample_deis(gaussian_denoiser, torch.zeros(1, 2), [1.0, 0.0], degree=-1)


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A 6-iteration EDM on 500 toy points."""
    edm = get("methods", "edm")
    config = edm.configure("toy", iterations=6, batch_size=32,
                           network_kwargs={"hidden": 16, "num_layers": 1},
                           dataset_options={"n": 500})
    return edm.train(config, tmp_path_factory.mktemp("edm") / "run", progress=False)


@pytest.mark.parametrize("name", NFE)
def test_zoo_sample_edm_accepts_the_fast_samplers(edm_run, tmp_path, name):
    out = tmp_path / "s.png"
    result = CliRunner().invoke(main, ["sample", "edm", "--run", str(edm_run), "--n", "4",
                                       "--steps", "3", "--sampler", name, "--out", str(out)])
    assert result.exit_code == 0, result.output
    samples = np.load(out.with_suffix(".npz"))["samples"]
    assert samples.shape == (4, 2) and np.isfinite(samples).all()
    assert f"4 samples, NFE {NFE[name](3)}:" in result.output


def test_edm_bench_rows_promise_the_samplers_nfe(edm_run):
    edm = get("methods", "edm")
    rows = [r for r in edm.bench_rows(edm_run) if r.options["sampler"] != "heun"]
    assert [(r.label, r.nfe) for r in rows] == [
        ("EDM (DDIM)", 10), ("EDM (DDIM)", 20), ("EDM (DPM-Solver-3)", 10),
        ("EDM (DPM-Solver-3)", 19), ("EDM (DPM-Solver++(2M))", 10), ("EDM (DPM-Solver++(2M))", 20),
        ("EDM (3-DEIS)", 10), ("EDM (3-DEIS)", 20)]
    run = edm.load(edm_run)
    for row in rows:
        assert edm.sample(run, 2, **row.options).nfe == row.nfe


def reference_dpmpp_2m(denoiser, x, sigmas):
    """DPM-Solver++(2M) written out as k-diffusion's sample_dpmpp_2m computes it: with t = −ln σ,
    h = t_{i+1} − t_i and r = h_{i−1}/h, x ← (σ_{i+1}/σ_i)·x − expm1(−h)·D', where
    D' = (1 + 1/(2r))·D_i − D_{i−1}/(2r) after the first step (D' = D_i there and at σ = 0)."""
    old = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, s)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            d = denoised
            if old is not None:
                r = math.log(float(sigmas[i - 1]) / s) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s_next / s) * x - math.expm1(-h) * d
        old = denoised
    return x


def test_dpm_solver_pp_2m_is_the_reference_update_on_an_uneven_grid():
    """Step for step the reference's update (its step ratio r = h_{i−1}/h_i, not the inverse), on
    a non-Gaussian denoiser where the ratio's direction changes the result."""
    def two_modes(x, sigma, class_labels=None):
        w = torch.sigmoid(2 * x.sum(1, keepdim=True) / (0.25 + sigma**2))
        return (2 * w - 1) * 1.0 / (1 + sigma**2)
    x = torch.randn(8, 2, dtype=torch.float64) * SIGMA_MAX
    sigmas = append_zero(karras_sigmas(7)).tolist()
    torch.testing.assert_close(sample_dpm_solver_pp_2m(two_modes, x, sigmas),
                               reference_dpmpp_2m(two_modes, x, sigmas), rtol=1e-12, atol=1e-12)
