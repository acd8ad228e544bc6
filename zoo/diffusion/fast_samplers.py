"""Fast deterministic PF-ODE samplers: the CM paper's low-NFE baselines for the teacher.

Song et al. (2023, Tables 1–2) compare consistency models with DDIM, DPM-Solver and 3-DEIS at
10–50 NFE. Each solver here integrates EDM's probability-flow ODE (Karras et al. 2022, Eq. 4 with
σ(t) = t, s(t) = 1) for any diffusion denoiser D(x, σ)::

    dx/dσ = ε(x, σ) = (x − D(x, σ)) / σ.

With α = 1 the papers' exponential integrators become, with λ = −ln σ and h = λ_t − λ_s,

    x_t = x_s + ∫_{σ_s}^{σ_t} ε dσ  =  (σ_t/σ_s)·x_s + σ_t ∫_{λ_s}^{λ_t} e^λ D dλ

(Lu et al. 2022, Eq. 3.4, with noise prediction; Lu et al. 2022b, its data-prediction form;
Zhang & Chen 2023's exponential integrator with Ψ = 1).

**DDIM** (Song et al. 2021, Eq. 12 with σ_t = 0) is x_t = x_s + (σ_t − σ_s)·ε in σ = √(1−ᾱ)/√ᾱ and
x/√ᾱ: exactly the Euler step of this ODE (Song et al. 2021, Eq. 14; Karras et al. 2022,
Table 1), so ``ddim`` is registered as :func:`~zoo.diffusion.samplers.sample_euler`.

Every sampler has the house signature ``sample(denoiser, x, sigmas, *, generator=None,
class_labels=None) -> x0`` and takes the grid it is given: a decreasing list of σ ending at 0
(EDM's plugin passes N Karras points with ρ = 7, then 0, for all of them). They draw no noise.
Single-step solvers cannot reach λ = ∞: their last step to σ = 0 is first order, x_0 = D(x, σ),
as in EDM's Heun sampler. The multistep ones evaluate nothing at σ = 0 and take their usual step
there. NFE with N positive σ's: DPM-Solver-2 2N−1, DPM-Solver-3 3N−2, the others N.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated

import numpy as np
import torch

from zoo.diffusion.precond import ode_derivative
from zoo.diffusion.samplers import check_sigmas, sample_euler
from zoo.hookspecs import hookimpl


def _eps(denoiser, x, sigma, class_labels):
    """ε(x, σ) = (x − D(x, σ))/σ: noise prediction, the ODE's right-hand side (1 NFE)."""
    return ode_derivative(denoiser(x, sigma, class_labels), x, sigma)


def dpm_solver_2_step(denoiser, x, sigma, sigma_next, class_labels=None):
    """One DPM-Solver-2 step (Lu et al. 2022, Algorithm 1 with r₁ = ½), 2 NFE; σ_next > 0.

    h = ln(σ/σ_next), s₁ at λ + h/2 (σ_{s₁} = √(σ·σ_next)):
    u = x − σ_{s₁}(e^{h/2} − 1)·ε(x, σ);  x_next = x − σ_next(e^h − 1)·ε(u, σ_{s₁}).
    """
    h = math.log(sigma / sigma_next)
    sigma_1 = sigma * math.exp(-h / 2)
    u = x - sigma_1 * math.expm1(h / 2) * _eps(denoiser, x, sigma, class_labels)
    return x - sigma_next * math.expm1(h) * _eps(denoiser, u, sigma_1, class_labels)


def dpm_solver_3_step(denoiser, x, sigma, sigma_next, class_labels=None):
    """One DPM-Solver-3 step (Lu et al. 2022, Algorithm 2 with r₁ = ⅓, r₂ = ⅔), 3 NFE; σ_next > 0.

    With h = ln(σ/σ_next), s_k at λ + r_k·h, ε₀ = ε(x, σ) and φ(z) = (e^z − 1)/z − 1:
    u₁ = x − σ_{s₁}(e^{r₁h} − 1)ε₀,  D₁ = ε(u₁, s₁) − ε₀,
    u₂ = x − σ_{s₂}(e^{r₂h} − 1)ε₀ − σ_{s₂}(r₂/r₁)φ(r₂h)·D₁,  D₂ = ε(u₂, s₂) − ε₀,
    x_next = x − σ_next(e^h − 1)ε₀ − (σ_next/r₂)φ(h)·D₂.
    """
    r1, r2 = 1 / 3, 2 / 3
    h = math.log(sigma / sigma_next)
    sigma_1, sigma_2 = sigma * math.exp(-r1 * h), sigma * math.exp(-r2 * h)

    def phi(z):
        return math.expm1(z) / z - 1

    eps_0 = _eps(denoiser, x, sigma, class_labels)
    u1 = x - sigma_1 * math.expm1(r1 * h) * eps_0
    d1 = _eps(denoiser, u1, sigma_1, class_labels) - eps_0
    u2 = x - sigma_2 * math.expm1(r2 * h) * eps_0 - sigma_2 * (r2 / r1) * phi(r2 * h) * d1
    d2 = _eps(denoiser, u2, sigma_2, class_labels) - eps_0
    return x - sigma_next * math.expm1(h) * eps_0 - sigma_next / r2 * phi(h) * d2


def _singlestep(step, denoiser, x, sigmas, class_labels):
    """``step`` on every interval with σ_next > 0; the last one, to σ = 0, is x_0 = D(x, σ)."""
    sigmas = check_sigmas(sigmas, final_zero=True)
    for s, s_next in zip(sigmas[:-2], sigmas[1:-1]):
        x = step(denoiser, x, s, s_next, class_labels)
    return denoiser(x, sigmas[-2], class_labels)


@torch.no_grad()
def sample_dpm_solver_2(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """DPM-Solver-2 (Lu et al. 2022): :func:`dpm_solver_2_step` per interval, the last one to
    σ = 0 first order. N positive σ's cost 2N−1 NFE."""
    return _singlestep(dpm_solver_2_step, denoiser, x, sigmas, class_labels)


@torch.no_grad()
def sample_dpm_solver_3(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """DPM-Solver-3 (Lu et al. 2022): :func:`dpm_solver_3_step` per interval, the last one to
    σ = 0 first order. N positive σ's cost 3N−2 NFE."""
    return _singlestep(dpm_solver_3_step, denoiser, x, sigmas, class_labels)


@torch.no_grad()
def sample_dpm_solver_pp_2m(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, data prediction, 1 NFE/step.

    With D_i = D(x_i, σ_i), h_i = ln(σ_i/σ_{i+1}) and r_i = h_{i−1}/h_i:
    x_{i+1} = (σ_{i+1}/σ_i)·x_i − (e^{−h_i} − 1)·((1 + 1/(2r_i))·D_i − D_{i−1}/(2r_i));
    the first step uses D_i alone (DPM-Solver++(1) = DDIM), and the step to σ = 0 (h = ∞) is
    its first-order limit: the sample is the last denoised value D_{N−1}.
    """
    sigmas = check_sigmas(sigmas, final_zero=True)
    denoised_prev = h_prev = None
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        denoised = denoiser(x, s, class_labels)
        if s_next == 0:
            return denoised
        h = math.log(s / s_next)
        d = denoised
        if denoised_prev is not None:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * denoised - denoised_prev / (2 * r)
        x = (s_next / s) * x - math.expm1(-h) * d
        denoised_prev, h_prev = denoised, h


#: Adams–Bashforth coefficients of orders 1–4 on equal steps, newest derivative first.
ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
                   (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _linear_multistep(denoiser, x, sigmas, points, weights, class_labels):
    """x_{i+1} = x_i + Σ_j w_j·ε(x_{i−j}, σ_{i−j}), 1 NFE per step, with the last ``points``
    derivatives (fewer at the start: the lower-order warm start). ``weights(nodes, σ_next)``
    gives w for the nodes σ_i, σ_{i−1}, … (newest first); nothing is evaluated at σ = 0."""
    sigmas = check_sigmas(sigmas, final_zero=True)
    history = []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        history = [_eps(denoiser, x, s, class_labels), *history][:points]
        nodes = sigmas[i::-1][: len(history)]
        x = x + sum(w * eps for w, eps in zip(weights(nodes, s_next), history))
    return x


def _ipndm_weights(nodes, sigma_next):
    return [(sigma_next - nodes[0]) * b for b in ADAMS_BASHFORTH[len(nodes) - 1]]


@torch.no_grad()
def sample_ipndm(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """iPNDM (Zhang & Chen 2023: PNDM's linear multistep, Liu et al. 2022, with a lower-order
    multistep warm start instead of Runge–Kutta steps), 1 NFE per step:
    x_{i+1} = x_i + (σ_{i+1} − σ_i)·Σ_j b_j ε_{i−j}, with the equal-step Adams–Bashforth b_j
    of order min(i+1, 4) (:data:`ADAMS_BASHFORTH`), whatever the grid's spacing: 4th order on
    equal steps (where it is :func:`sample_rhoab_deis` with r = 3), 2nd on an uneven grid such as
    Karras's (the O(h) mismatch of the weights cancels, Σ_j b_j·(j + ½) = 0, the next does not)."""
    return _linear_multistep(denoiser, x, sigmas, 4, _ipndm_weights, class_labels)


@functools.cache
def _gauss_legendre(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [−1, 1] (an eigenproblem: 1 ms for 64 points, so
    computed once per size, not per sampling step)."""
    return np.polynomial.legendre.leggauss(points)


def lagrange_integrals(nodes, a: float, b: float, time=None, points: int = 0) -> list[float]:
    """C_j = ∫_a^b ℓ_j(τ(s)) ds for the Lagrange basis ℓ_j(τ) = Π_{k≠j} (τ − τ_k)/(τ_j − τ_k) on
    the nodes' times τ_k = τ(t_k) (τ the identity by default), by Gauss–Legendre quadrature in s:
    with the identity, r+1 points integrate the degree-r basis exactly; another ``time`` takes
    ``points`` (default 64) points, exact to float rounding for the smooth maps used here."""
    nodes = np.asarray(nodes, dtype=np.float64)
    z, w = _gauss_legendre(points or (len(nodes) if time is None else 64))
    time = time or (lambda s: s)
    s = (b - a) / 2 * z + (a + b) / 2
    tau, tau_nodes = time(s), time(nodes)
    out = []
    for j, t_j in enumerate(tau_nodes):
        others = np.delete(tau_nodes, j)
        basis = np.prod((tau[:, None] - others) / (t_j - others), axis=1)
        out.append(float((b - a) / 2 * np.dot(w, basis)))
    return out


def deis_vp_time(sigma_min: float, sigma_max: float, eps: float = 1e-3):
    """The time t of DEIS's VP-SDE for EDM's σ (diff-sampler's ``edm2t``, Zhang & Chen 2023 in
    EDM's variables): σ(t)² = exp(½β_d t² + β_min t) − 1 with β_d, β_min chosen so that
    σ(ε) = σ_min and σ(1) = σ_max; returns t(σ) = (√(β_min² + 2β_d ln(1 + σ²)) − β_min)/β_d."""
    log_min, log_max = math.log1p(sigma_min**2), math.log1p(sigma_max**2)
    beta_d = 2 * (log_min / eps - log_max) / (eps - 1)
    beta_min = log_max - beta_d / 2
    return lambda sigma: (np.sqrt(beta_min**2 + 2 * beta_d * np.log1p(np.square(sigma)))
                          - beta_min) / beta_d


def _check_degree(degree):
    if not (isinstance(degree, int) and degree >= 0):
        raise ValueError(f"degree must be an integer >= 0, got {degree!r}")


@torch.no_grad()
def sample_deis(denoiser, x, sigmas, *, generator=None, class_labels=None,
                degree: Annotated[int, "DEIS's r: degree of the ε polynomial in VP time "
                                  "(0 = DDIM)."] = 3):
    """tAB-DEIS (Zhang & Chen 2023, the paper's default and its code's ``tab``), 1 NFE per step:
    ε extrapolated by the degree-r polynomial in the VP-SDE's time t (:func:`deis_vp_time` of
    the grid's σ_max and smallest positive σ) through the last r+1 points and integrated
    exactly along the ODE, x_{i+1} = x_i + Σ_j C_ij·ε_{i−j},
    C_ij = ∫_{σ_i}^{σ_{i+1}} ℓ_j(t(σ)) dσ  (= ∫ ℓ_j(t) dσ/dt dt, diff-sampler's integrand),
    lower degrees while fewer points exist. ``degree`` is DEIS's r (its code's ``ab_order``):
    r = 0 is DDIM, and the CM paper's 3-DEIS is r = 3, a cubic through 4 points."""
    _check_degree(degree)
    positive = [float(s) for s in sigmas if s > 0]
    time = deis_vp_time(min(positive), max(positive)) if positive else None
    return _linear_multistep(
        denoiser, x, sigmas, degree + 1,
        lambda nodes, s_next: lagrange_integrals(nodes, nodes[0], s_next, time), class_labels)


@torch.no_grad()
def sample_rhoab_deis(denoiser, x, sigmas, *, generator=None, class_labels=None,
                      degree: Annotated[int, "r: degree of the ε polynomial in σ "
                                        "(0 = DDIM)."] = 3):
    """ρAB-DEIS (Zhang & Chen 2023's ρ-space variant; diff-sampler's ``rhoab``), 1 NFE per
    step: ε extrapolated in ρ = σ by the degree-r polynomial through the last r+1 points and
    integrated exactly, x_{i+1} = x_i + Σ_j C_ij·ε_{i−j},  C_ij = ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ
    (:func:`lagrange_integrals`), lower degrees while fewer points exist; r = 0 is DDIM.
    Of order r+1 on any smooth grid; on equal steps with r = 3 it is iPNDM."""
    _check_degree(degree)
    return _linear_multistep(denoiser, x, sigmas, degree + 1,
                             lambda nodes, s_next: lagrange_integrals(nodes, nodes[0], s_next),
                             class_labels)


FAST_SAMPLERS = {
    "ddim": sample_euler,
    "dpm-solver-2": sample_dpm_solver_2,
    "dpm-solver-3": sample_dpm_solver_3,
    "dpm-solver++2m": sample_dpm_solver_pp_2m,
    "ipndm": sample_ipndm,
    "deis-3": sample_deis,
    "rhoab-deis-3": sample_rhoab_deis,
}
# Diffusion samplers: they need a diffusion denoiser (see zoo.diffusion.samplers.get_sampler).
for _sampler in FAST_SAMPLERS.values():
    _sampler.parameterization = "edm"


@hookimpl
def register_samplers(register):
    for name, fn in FAST_SAMPLERS.items():
        register(name, fn)
