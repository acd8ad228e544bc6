"""Evaluation EMA of the weights (separate from any EMA an algorithm uses, e.g. CM's θ⁻)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(rate: float, halflife_kimg: float, batch_size: int) -> float:
    """β per step, from a rate or from a half-life in thousands of samples (EDM's convention)."""
    if rate:
        return rate
    if halflife_kimg:
        return 0.5 ** (batch_size / (halflife_kimg * 1000))
    return 0.0


class EMA:
    """θ_ema ← β·θ_ema + (1 − β)·θ after every step; β = 0 keeps a copy of the weights."""

    def __init__(self, net: nn.Module, beta: float):
        self.beta = beta
        self.module = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for p_ema, p in zip(self.module.parameters(), net.parameters()):
            p_ema.lerp_(p.detach(), 1 - self.beta)
        for b_ema, b in zip(self.module.buffers(), net.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
