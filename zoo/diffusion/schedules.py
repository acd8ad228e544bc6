"""Noise-level grids and distributions."""

from __future__ import annotations

import torch

from zoo.diffusion.precond import SIGMA_MAX, SIGMA_MIN


def karras_sigmas(
    n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0
) -> torch.Tensor:
    """The ρ-spaced grid of EDM Eq. 5, n points from σ_max down to σ_min (float64).

    σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..n−1. With n = 1 the grid
    is just [σ_max].
    """
    if n < 1:
        raise ValueError(f"a sigma grid needs at least 1 point, got n={n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + i / (n - 1) * (lo - hi)) ** rho


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Append σ = 0: the last step of a diffusion sampler lands on the data."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def lognormal_sigmas(
    n: int, p_mean: float = -1.2, p_std: float = 1.2, *, generator=None, device=None
) -> torch.Tensor:
    """σ = exp(P_mean + P_std·ξ), ξ ~ N(0, 1): EDM's training distribution (Table 1)."""
    xi = torch.randn(n, generator=generator, device=device)
    return (p_mean + p_std * xi).exp()
