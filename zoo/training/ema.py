"""Evaluation EMA of the weights (separate from any EMA an algorithm uses, e.g. CM's θ⁻)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def ema_halflife_nimg(halflife_kimg: float, rampup: float, nimg: int) -> float:
    """EDM's half-life in samples with ramp-up (Karras et al. 2022, training_loop.py):
    min(half-life, rampup · samples seen so far); ``rampup`` = 0 keeps the plain half-life."""
    halflife = halflife_kimg * 1000
    return min(halflife, nimg * rampup) if rampup else halflife


def ema_beta(rate: float, halflife_kimg: float, batch_size: int, rampup: float = 0.0,
             nimg: int = 0, num_updates: int = 0) -> float:
    """β of the update after ``nimg`` samples: a fixed per-step ``rate`` when given, else
    0.5^(batch / half-life) from :func:`ema_halflife_nimg` (β = 0 while the half-life is 0).

    With ``num_updates`` > 0 (the 1-based index of this update), a fixed rate warms up as
    score_sde's ``ExponentialMovingAverage(use_num_updates=True)`` (Song et al. 2021,
    models/ema.py), the EMA of every score_sde-derived codebase (rectified flow's included):
    β = min(rate, (1 + n) / (10 + n)).
    """
    if rate:
        return min(rate, (1 + num_updates) / (10 + num_updates)) if num_updates else rate
    if halflife_kimg:
        halflife = ema_halflife_nimg(halflife_kimg, rampup, nimg)
        return 0.5 ** (batch_size / halflife) if halflife > 0 else 0.0
    return 0.0


def initialisation_weight(betas) -> float:
    """The weight the initial weights keep in the EMA after updates with ``betas``: Πβ_k."""
    betas = np.asarray(betas, dtype=np.float64)
    if (betas <= 0).any():
        return 0.0
    return float(np.exp(np.log(betas).sum()))


class EMA:
    """θ_ema ← β·θ_ema + (1 − β)·θ after every step; β = 0 keeps a copy of the weights."""

    def __init__(self, net: nn.Module):
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, beta: float) -> None:
        for p_ema, p in zip(self.module.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1 - beta)
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
