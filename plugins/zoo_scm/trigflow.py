"""TrigFlow (Lu & Song 2024, "Simplifying, Stabilizing and Scaling Continuous-Time Consistency
Models", arXiv 2410.11081; equation numbers of that version) and the sCM consistency function.

Diffusion process (Sec. 3): x_t = cos(t)·x_0 + sin(t)·z, z ~ N(0, σ_d²·I), t ∈ [0, π/2]. EDM's
x_σ = x_0 + σ·ε is the same process under t = arctan(σ/σ_d), x_t = cos(t)·x_σ (Eq. 30), so an
EDM denoiser D(x_σ, σ) gives the TrigFlow PF-ODE (Eqs. 3 and 24, E[v_t | x_t] with
v_t = cos(t)·z − sin(t)·x_0):

    dx_t/dt = (cos(t)·x_t − D(x_t/cos(t), σ_d·tan(t))) / sin(t).

Consistency function (Eq. 5): f_θ(x_t, t) = cos(t)·x_t − sin(t)·σ_d·F_θ(x_t/σ_d, c_noise(t)),
with f_θ(x, 0) = x. EDM's preconditioning at σ = σ_d·tan(t) is this form exactly: c_in·x_σ =
x_t/σ_d, c_skip·x_σ = cos(t)·x_t and c_out = σ_d·sin(t), so D_EDM(x_σ, σ) = f_θ(x_t, t) with
F_θ = −F_EDM and c_noise(t) = ln(σ_d·tan t)/4. The zoo's networks are EDM's F (an ``edm`` run's
weights load unchanged): :class:`TrigFlowConsistency` uses F_θ = −net.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.diffusion import expand_sigma

#: c_noise(t): ``edm``: ln(σ_d·tan t)/4, EDM's label, which lets a student start from an edm
#: teacher's weights; ``trigflow``: s·t, the paper's identity time transformation (Sec. 4.1)
#: scaled by ``time_scale`` s.
TIME_LABELS = ("edm", "trigflow")


def trigflow_from_edm(x_sigma: torch.Tensor, sigma, sigma_data: float):
    """(x_t, t) of the EDM point (x_σ, σ): t = arctan(σ/σ_d), x_t = cos(t)·x_σ (Eq. 30)."""
    t = torch.atan(expand_sigma(sigma, x_sigma) / sigma_data)
    return t.cos() * x_sigma, t.flatten()


def edm_from_trigflow(x_t: torch.Tensor, t, sigma_data: float):
    """(x_σ, σ) of the TrigFlow point (x_t, t): σ = σ_d·tan(t), x_σ = x_t/cos(t) (Eq. 30)."""
    t = expand_sigma(t, x_t)
    return x_t / t.cos(), (sigma_data * t.tan()).flatten()


def teacher_velocity(denoiser, x_t: torch.Tensor, t: torch.Tensor, sigma_data: float,
                     class_labels=None) -> torch.Tensor:
    """dx_t/dt = (cos(t)·x_t − D(x_t/cos t, σ_d·tan t))/sin(t): an EDM denoiser's PF-ODE in
    TrigFlow time (sCD's dx_t/dt, Algorithm 1), for 0 < t < π/2."""
    x_sigma, sigma = edm_from_trigflow(x_t, t, sigma_data)
    t = expand_sigma(t, x_t)
    return (t.cos() * x_t - denoiser(x_sigma, sigma, class_labels)) / t.sin()


def sample_times(noise, p_mean: float, p_std: float, sigma_data: float,
                 sigma_range: tuple[float, float] | None = None) -> torch.Tensor:
    """t = arctan(σ/σ_d), σ = e^τ with τ ~ N(P_mean, P_std²) (Algorithm 1): EDM's log-normal σ,
    clamped to ``sigma_range`` = (σ_min, σ_max) first when given (the reference
    implementation's truncation to [0.002, 80])."""
    sigma = (noise.randn() * p_std + p_mean).exp()
    if sigma_range is not None:
        sigma = sigma.clamp(*sigma_range)
    return torch.atan(sigma / sigma_data)


class AdaptiveWeight(nn.Module):
    """w_φ(t): a linear layer on cos/sin features of ln(σ_d·tan t)/4 (EDM2's uncertainty head,
    Karras et al. 2024, as the paper's Appendix D uses it), zero at initialisation."""

    def __init__(self, sigma_data: float, channels: int = 64):
        super().__init__()
        self.sigma_data = sigma_data
        # Frequencies 1/2 … 32, geometric: the label spans about [−3, 2] on the σ range.
        self.register_buffer("freqs", torch.logspace(-1, 5, channels // 2, base=2.0))
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        label = edm_label(t, self.sigma_data)
        angle = torch.outer(label, self.freqs.to(label.dtype))
        return self.linear(torch.cat([angle.cos(), angle.sin()], 1)).flatten()


def edm_label(t: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """ln(σ_d·tan t)/4, finite at t = 0 (tan t floored at the dtype's smallest normal number)."""
    return (sigma_data * t.tan().clamp(min=torch.finfo(t.dtype).tiny)).log() / 4


class TrigFlowConsistency(nn.Module):
    """The sCM model: F_θ (a registered network ``net``, see the module docstring for its sign)
    and the adaptive weight w_φ.

    ``forward(x, sigma, class_labels)`` is the consistency function in the core's σ convention,
    f(x_σ, σ) = f_θ(cos(t)·x_σ, t) at t = arctan(σ/σ_d) (Eq. 30), with f(x, 0) = x: the core's
    ``sample_consistency`` and ``zoo edit`` drive it as they drive a ``cm`` run. With
    ``return_logvar`` it also returns w_φ(t), so that the training pass through a DDP wrapper
    reaches both (as EDM2's ``return_logvar``). :meth:`velocity_field` is F_θ in TrigFlow
    coordinates (x_t, t), the function whose JVP sCM takes.
    """

    parameterization = "consistency"

    def __init__(self, net: nn.Module, sigma_data: float, time_label: str = "trigflow",
                 time_scale: float = 1.0, sigma_max: float = 80.0):
        super().__init__()
        if time_label not in TIME_LABELS:
            raise ValueError(f"time_label={time_label!r} is not one of {', '.join(TIME_LABELS)}")
        self.net, self.adaptive_weight = net, AdaptiveWeight(sigma_data)
        self.sigma_data, self.time_label, self.time_scale = sigma_data, time_label, time_scale
        self.sigma_min, self.sigma_max = 0.0, sigma_max  # f(x, 0) = x; sampling starts at σ_max

    def noise_label(self, t: torch.Tensor) -> torch.Tensor:
        """c_noise(t): :data:`TIME_LABELS`."""
        if self.time_label == "edm":
            return edm_label(t, self.sigma_data)
        return self.time_scale * t

    def velocity_field(self, x_t: torch.Tensor, t: torch.Tensor, class_labels=None):
        """F_θ(x_t/σ_d, c_noise(t)) = −net(x_t/σ_d, c_noise(t)); σ_d·F_θ is the PF-ODE's
        dx_t/dt of a TrigFlow diffusion model (Eq. 3)."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return -self.net(x_t / self.sigma_data, self.noise_label(t), class_labels).to(x_t.dtype)

    def consistency(self, x_t: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        """f_θ(x_t, t) = cos(t)·x_t − sin(t)·σ_d·F_θ(x_t/σ_d, c_noise(t)) (Eq. 5)."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        te = expand_sigma(t, x_t)
        F = self.velocity_field(x_t, t, class_labels)
        return te.cos() * x_t - te.sin() * self.sigma_data * F

    def forward(self, x: torch.Tensor, sigma, class_labels=None, *, return_logvar=False):
        x_t, t = trigflow_from_edm(x, sigma, self.sigma_data)
        f = self.consistency(x_t, t, class_labels)
        return (f, self.adaptive_weight(t)) if return_logvar else f


#: t_mid of the paper's 2-step sampling (Sec. 5.2 and App. G.2).
PAPER_MID_TIME = 1.1


def time_to_sigma(t: float, sigma_data: float) -> float:
    """σ = σ_d·tan(t) (Eq. 30) of a TrigFlow time in [0, π/2)."""
    if not 0 <= t < math.pi / 2:
        raise ValueError(f"a TrigFlow time must lie in [0, π/2), got {t}")
    return sigma_data * math.tan(t)
