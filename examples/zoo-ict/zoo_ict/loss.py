"""The iCT objective (Song & Dhariwal 2023, "Improved Techniques for Training Consistency
Models", Section 3), built from zoo's public API only.

Notation of the paper: σ_min = σ_1 < σ_2 < … < σ_N = σ_max is the Karras grid (ρ = 7) of N = N(k)
points at iteration k; the online network sees the larger level σ_{i+1}, the target the smaller
σ_i, both from the same data point x and the same z (consistency training):

    L = λ(σ_i) · d(f_θ(x + σ_{i+1}·z, σ_{i+1}), f_θ⁻(x + σ_i·z, σ_i)),   θ⁻ = stopgrad(θ).
"""

from __future__ import annotations

import math

import torch
from zoo.diffusion import expand_sigma, karras_sigmas
from zoo.training import TrainingTask

HUBER_C_PER_DIM = 0.00054  # c = 0.00054·√d (Section 3.3), tuned on CIFAR-10 in [−1, 1]


def pseudo_huber_c(dim: int, c_per_dim: float = HUBER_C_PER_DIM) -> float:
    """c = 0.00054·√d for data of d dimensions (Section 3.3)."""
    return c_per_dim * math.sqrt(dim)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """d(x, y) = √(‖x − y‖² + c²) − c per sample (Section 3.3): ≈ ‖x − y‖²/(2c) for small
    errors, ≈ ‖x − y‖ − c for large ones."""
    return ((a - b).square().flatten(1).sum(1) + c**2).sqrt() - c


def ict_num_scales(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋ (Section 3.4):
    the number of discretisation steps doubles every K' iterations, from s0 to s1."""
    stage = K // (math.floor(math.log2(s1 // s0)) + 1)
    return min(s0 * 2 ** (k // stage), s1) + 1


def ascending_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The paper's σ_1 < … < σ_n: the core's (descending) Karras grid, reversed (float64)."""
    return karras_sigmas(n, sigma_min, sigma_max, rho).flip(0)


def lognormal_level_probs(sigmas: torch.Tensor, p_mean: float = -1.1,
                          p_std: float = 2.0) -> torch.Tensor:
    """p(σ_i) ∝ erf((ln σ_{i+1} − P_mean)/(√2·P_std)) − erf((ln σ_i − P_mean)/(√2·P_std)),
    i = 1 … N−1 (Section 3.5): the mass a lognormal puts between neighbouring levels."""
    cdf = torch.erf((sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
    probs = cdf[1:] - cdf[:-1]
    return probs / probs.sum()


def level_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """λ(σ_i) = 1/(σ_{i+1} − σ_i), i = 1 … N−1 (Section 3.1)."""
    return 1 / (sigmas[1:] - sigmas[:-1])


class ImprovedConsistencyTraining(TrainingTask):
    """iCT as a :class:`zoo.training.TrainingTask`: the online consistency function f_θ (a
    :class:`zoo.diffusion.Denoiser` with the "consistency" parameterisation) is the only network.

    The target f_θ⁻ is the same module under ``torch.no_grad`` (θ⁻ = stopgrad θ, no EMA: Section
    3.2), drawing the same dropout masks as the online pass (Section 3.1). N(k) follows the
    doubling curriculum; its iteration k is the trainer's step, kept through checkpoints.
    """

    def __init__(self, net, config, data_dim: int):
        super().__init__(net)
        self.config = config
        self.c = pseudo_huber_c(data_dim, config.huber_c_per_dim)
        self.k = 0

    def levels(self, k: int):
        """(σ_1 … σ_N, p(σ_i), λ(σ_i)) at iteration k."""
        c = self.config
        n = ict_num_scales(k, c.iterations, c.s0, c.s1)
        sigmas = ascending_sigmas(n, c.sigma_min, c.sigma_max, c.rho)
        return sigmas, lognormal_level_probs(sigmas, c.p_mean, c.p_std), level_weights(sigmas)

    def loss(self, net, x, labels, noise):
        sigmas, probs, weights = self.levels(self.k)
        u = noise.rand().to(torch.float64).cpu()
        i = torch.searchsorted(probs.cumsum(0), u, right=True).clamp(max=len(probs) - 1)
        sigma, sigma_next = (s.to(x.device, x.dtype) for s in (sigmas[i], sigmas[i + 1]))
        z = noise.randn_like(x)
        seed = int(torch.randint(2**62, ()))
        with torch.no_grad():
            torch.manual_seed(seed)
            target = self.net(x + expand_sigma(sigma, x) * z, sigma)
        torch.manual_seed(seed)
        online = net(x + expand_sigma(sigma_next, x) * z, sigma_next)
        return weights[i].to(x.device, x.dtype) * pseudo_huber(online, target, self.c)

    def after_step(self, step: int) -> None:
        self.k = step + 1

    def passes_per_sample(self) -> dict[str, int]:
        """The target's forward pass (no graph) and the online forward and backward pass."""
        return {"forward": 2, "backward": 1}

    def state_dict(self) -> dict:
        return {"k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = state["k"]
