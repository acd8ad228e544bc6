"""Preconditioning of a raw network F into a denoiser D(x, σ) (EDM, Table 1; CM, Appendix C).

D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ))
"""

from __future__ import annotations

import torch
from torch import nn

SIGMA_DATA = 0.5  # σ_d: standard deviation of the data
SIGMA_MIN = 0.002  # ε: smallest noise level, where the consistency boundary condition holds
SIGMA_MAX = 80.0  # T: largest noise level


def edm_scalings(sigma, sigma_data: float = SIGMA_DATA):
    """EDM preconditioning (Karras et al. 2022, Table 1): (c_skip, c_out, c_in, c_noise).

    c_skip = σ_d²/(σ²+σ_d²), c_out = σ·σ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ln(σ)/4.
    """
    sigma = torch.as_tensor(sigma)
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1 / var.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def consistency_scalings(sigma, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
    """Consistency-model parameterisation (Song et al. 2023, Eq. 7 and Appendix C).

    c_skip = σ_d²/((σ−ε)²+σ_d²), c_out = (σ−ε)·σ_d/√(σ²+σ_d²), so that c_skip(ε) = 1 and
    c_out(ε) = 0: the boundary condition f(x, ε) = x holds by construction.
    c_in and c_noise are EDM's.
    """
    sigma = torch.as_tensor(sigma)
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


SCALINGS = {"edm": edm_scalings, "consistency": consistency_scalings}


def expand_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """σ broadcastable against x: a scalar or one value per sample, as shape [B, 1, ...]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape [{x.shape[0]}], got {tuple(sigma.shape)}"
        )
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Denoiser(nn.Module):
    """A raw network F with its preconditioning: D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise).

    ``parameterization`` is ``"edm"`` (a diffusion denoiser) or ``"consistency"`` (a consistency
    function f(x, σ) with f(x, σ_min) = x).
    """

    def __init__(
        self,
        net: nn.Module,
        parameterization: str = "edm",
        sigma_data: float = SIGMA_DATA,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
    ):
        super().__init__()
        if parameterization not in SCALINGS:
            raise ValueError(
                f"unknown parameterization {parameterization!r}; valid: {', '.join(SCALINGS)}"
            )
        self.net = net
        self.parameterization = parameterization
        self.sigma_data = sigma_data
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def scalings(self, sigma):
        if self.parameterization == "consistency":
            return consistency_scalings(sigma, self.sigma_data, self.sigma_min)
        return edm_scalings(sigma, self.sigma_data)

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        sigma = expand_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F = self.net(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * F.to(x.dtype)


def ode_derivative(denoised: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE with σ(t) = t (EDM Eq. 4): (x − D(x, σ)) / σ."""
    return (x - denoised) / expand_sigma(sigma, x)
