"""Easy consistency tuning (Geng, Pokle, Luo, Lin & Kolter 2024, "Consistency Models Made Easy",
arXiv 2406.14548, ICLR 2025), as the official code (locuslab/ect, training/loss.py) computes it.

Consistency training in continuous time from a pretrained diffusion model: with x_t = x + t·z and
x_r = x + r·z (the same z), the loss is w(t, r)·d(f_θ(x_t, t), f_sg(θ)(x_r, r)), where

- t ~ p(t): ln t ~ N(P_mean, P_std²), EDM's training distribution;
- r = max(t·(1 − n(t)/q^a), 0), the mapping p(r | t, iteration): n(t) = 1 + k·sigmoid(−b·t), and
  a = ⌊step/d⌋ + 1 grows by one every d iterations, so Δt = t − r shrinks by q each stage;
  where r reaches 0 the target is the data x itself (the boundary condition f(x, 0) = x) and the
  loss is the diffusion model's denoising loss;
- d(a, b) = √(‖a − b‖² + c²) − c, the pseudo-Huber distance (c = 0: the L2 norm ‖a − b‖), and
  w(t, r) = 1/(t − r) = 1/Δt.

The target f_sg(θ) is the online network itself under stop-gradient (no target EMA), evaluated
with the online pass's dropout masks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.diffusion import expand_sigma
from zoo.training import TrainingTask


def ect_stage(step: int, stage_iterations: int) -> int:
    """a = ⌊step/d⌋ + 1 for the 0-based ``step`` (d = ``stage_iterations``): the official
    code's ``stage + 1`` (training/loss.py:47), the paper's ⌈iteration/d⌉ counted from 1."""
    return step // stage_iterations + 1


def mapping_n(t: torch.Tensor, k: float, b: float) -> torch.Tensor:
    """n(t) = 1 + k·sigmoid(−b·t): Δt/t is n(t)/q^a, larger at small t (k = 0: the official
    "const" mapping, Δt = t/q^a)."""
    return 1 + k * torch.sigmoid(-b * t)


def ect_dt(t: torch.Tensor, step: int, *, q: float, stage_iterations: int, k: float,
           b: float) -> torch.Tensor:
    """Δt = t − r = min(t·n(t)/q^a, t) with a = :func:`ect_stage`: r = max(t·(1 − n(t)/q^a), 0)
    (training/loss.py:45-50). Computed as Δt, not as t − r, so that w = 1/Δt stays finite
    where float rounding would make r = t."""
    decay = q ** -ect_stage(step, stage_iterations)
    return torch.minimum(t * decay * mapping_n(t, k, b), t)


def pseudo_huber(delta: torch.Tensor, c: float) -> torch.Tensor:
    """√(‖Δ‖² + c²) − c per sample, the norm over all of a sample's dimensions (c = 0: ‖Δ‖, whose
    gradient torch defines as 0 at Δ = 0). As a weight on the squared L2 loss it is the adaptive
    weighting 1/√(‖Δ‖² + c²) (training/loss.py:81-89)."""
    delta = delta.flatten(1)
    if c == 0:
        return torch.linalg.vector_norm(delta, dim=1)
    return (delta.square().sum(1) + c * c).sqrt() - c


class EasyConsistencyTuning(TrainingTask):
    """The ECT objective (the module docstring) for the consistency function ``student``, which
    starts from the teacher's weights. ``teacher_record`` (the teacher's run directory, step and
    dataset checksum) goes into the checkpoint, and resuming with another teacher is refused;
    ``k``, the iteration the schedule has reached, travels with it.
    """

    def __init__(self, student: nn.Module, config, teacher_record: dict):
        super().__init__(student)
        self.config, self.teacher_record = config, teacher_record
        self.k = 0

    def passes_per_sample(self) -> dict[str, int]:
        """The online forward and backward pass and the target's forward pass."""
        return {"forward": 2, "backward": 1}

    def times(self, noise, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, Δt) per sample at iteration ``self.k``."""
        c = self.config
        t = (c.p_mean + c.p_std * noise.randn()).exp().to(dtype)
        return t, ect_dt(t, self.k, q=c.q, stage_iterations=c.stage_iterations,
                         k=c.mapping_k, b=c.mapping_b)

    def loss(self, net, x, labels, noise):
        c = self.config
        t, dt = self.times(noise, x.dtype)
        r = t - dt  # exactly 0 where Δt = t
        z = noise.randn_like(x)
        x_t, x_r = x + expand_sigma(t, x) * z, x + expand_sigma(r, x) * z
        at_zero = (r == 0).reshape(-1, *[1] * (x.ndim - 1))
        seed = int(torch.randint(2**62, ()))
        with torch.no_grad():
            torch.manual_seed(seed)  # the online pass's dropout masks
            # where r = 0 the target is x; there f is evaluated at t instead (ln 0 = −∞) and unused
            target = torch.where(at_zero, x, self.net(x_r, torch.where(r > 0, r, t), labels))
        torch.manual_seed(seed)
        online = net(x_t, t, labels)
        return pseudo_huber(online - target, c.huber_c) / dt

    def after_step(self, step: int) -> None:
        self.k = step + 1

    def metrics(self, step: int) -> dict[str, float]:
        """The stage a of iteration ``step`` and Δt/t = 1/q^a at large t (where n(t) → 1)."""
        a = ect_stage(step, self.config.stage_iterations)
        return {"ect_stage": a, "ect_dt_over_t": math.pow(self.config.q, -a)}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher_record, "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        if state["teacher"] != self.teacher_record:
            raise ValueError(f"the checkpoint was tuned from teacher {state['teacher']}, "
                             f"not {self.teacher_record}")
        self.k = state["k"]
