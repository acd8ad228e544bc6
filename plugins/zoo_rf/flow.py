"""Rectified flow (Liu, Gong & Liu 2022, "Flow Straight and Fast"), equivalently flow matching
with the linear path (Lipman et al. 2022): the math, as pure functions and one training task.

Convention (the paper's and its official code's): t runs from noise to data,

    X_t = t·X_1 + (1 − t)·X_0,   X_0 ~ N(0, I) (noise),  X_1 ~ data,   t ∈ [0, 1],

so X_0 is noise at t = 0 and X_1 data at t = 1. The velocity field v minimises Eq. (1),

    min_v ∫_0^1 E‖(X_1 − X_0) − v(X_t, t)‖² dt,

whose minimiser is v*(x, t) = E[X_1 − X_0 | X_t = x]. Sampling solves dZ_t = v(Z_t, t) dt from
Z_0 = z ~ N(0, I) to t = 1 with Euler steps (1 NFE each). Reflow (Section 2.3, Algorithm 1
with the coupling (Z_0, Z_1) of a trained flow) retrains v on pairs from the flow's own ODE; the
k-rectified flow's paths get straighter, and one Euler step of a straight flow is exact.

The core's samplers walk a decreasing noise grid that ends at 0 and start from x = grid[0]·z;
here the grid is s = 1 − t (the weight of the noise in X_t), from 1 to 0, so ``generate`` starts
from z itself and the rf sampler steps t = 1 − s forward.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.diffusion import StackedGenerator, expand_sigma
from zoo.methods import draw_labels
from zoo.training import TrainingTask, load_checkpoint, save_checkpoint


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t) -> torch.Tensor:
    """X_t = t·X_1 + (1 − t)·X_0 (Liu et al. Eq. 1): X_0 at t = 0, X_1 at t = 1."""
    t = expand_sigma(t, x1)
    return t * x1 + (1 - t) * x0


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The regression target of Eq. (1): dX_t/dt = X_1 − X_0."""
    return x1 - x0


def euler_grid(steps: int) -> torch.Tensor:
    """The noise weights s_i = 1 − i/k, i = 0..k, of k uniform Euler steps from t = 0 to 1."""
    if steps < 1:
        raise ValueError(f"Euler sampling needs >= 1 step, got {steps}")
    return 1 - torch.arange(steps + 1, dtype=torch.float64) / steps


class VelocityField(nn.Module):
    """v(x, t) = F(x, time_scale·t, class): a registered network F, no preconditioning (the
    official code's ``scale_by_sigma = False``); its noise label is 999·t by default, the
    DDPM timestep range that the official code feeds its positional embedding (``t*999``)."""

    parameterization = "velocity"

    def __init__(self, net: nn.Module, time_scale: float = 999.0):
        super().__init__()
        self.net = net
        self.time_scale = time_scale

    def forward(self, x: torch.Tensor, t, class_labels=None) -> torch.Tensor:
        labels = self.time_scale * expand_sigma(t, x).flatten()
        return self.net(x, labels, class_labels).to(x.dtype)


@torch.no_grad()
def sample_rf_euler(velocity, x, sigmas, *, generator=None, class_labels=None):
    """Euler steps of dZ_t = v(Z_t, t) dt along the noise weights ``sigmas`` (s = 1 − t, from 1
    down to 0; :func:`euler_grid`): Z_{t'} = Z_t + (t' − t)·v(Z_t, t), 1 NFE per step."""
    sigmas = [float(s) for s in sigmas]
    decreasing = all(b < a for a, b in zip(sigmas, sigmas[1:]))
    if len(sigmas) < 2 or sigmas[0] > 1 or sigmas[-1] != 0 or not decreasing:
        raise ValueError(f"need noise weights decreasing from <= 1 to 0, got {sigmas}")
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s - s_next) * velocity(x, 1 - s, class_labels)
    return x


@torch.no_grad()
def make_pairs(velocity, shape, seeds, steps: int, *, labels=None, batch_size: int = 1000,
               device="cpu"):
    """The reflow coupling (Z_0, Z_1) of a trained flow: Z_0 = z from each seed's own
    ``torch.Generator`` (the per-sample torch stream, whatever stream the bench samples with, so
    that a run's training data never depends on a sampling flag), Z_1 its ``steps``-step Euler
    solution.
    Returns float32 CPU tensors (z, x1); a pair does not depend on ``batch_size``."""
    seeds = list(seeds)
    zs, xs = [], []
    for start in range(0, len(seeds), batch_size):
        z = StackedGenerator(seeds[start:start + batch_size], device).randn(shape).to(device)
        cond = None if labels is None else labels[start:start + batch_size].to(device)
        xs.append(sample_rf_euler(velocity, z, euler_grid(steps), class_labels=cond).cpu())
        zs.append(z.cpu())
    return torch.cat(zs).float(), torch.cat(xs).float()


class ReflowPairs:
    """The fixed set of (Z_0, Z_1) pairs a reflow run trains on, kept in its run directory
    (``path``) so that a resumed run reads exactly the pairs it started with: made from the
    ``teacher`` run on first use (written atomically), loaded afterwards. ``spec`` records what
    made them (teacher, count, steps, seed); a file made otherwise is refused."""

    def __init__(self, teacher, spec: dict, *, batch_size: int, device="cpu", echo=print):
        self.teacher, self.spec = teacher, spec
        self.batch_size, self.device, self.echo = batch_size, device, echo
        self.path = None
        self.z = self.x1 = self.labels = None

    def load(self) -> None:
        if self.path is not None and self.path.exists():
            state = load_checkpoint(self.path)
            if state["spec"] != self.spec:
                raise ValueError(f"{self.path} holds reflow pairs made with {state['spec']}, "
                                 f"not {self.spec}; move it away to make new ones")
            self.z, self.x1, self.labels = state["z"], state["x1"], state["labels"]
            return
        s = self.spec
        seeds = range(s["seed"], s["seed"] + s["pairs"])
        self.echo(f"reflow: {s['pairs']} pairs from {s['teacher']} with {s['steps']} Euler steps")
        self.labels = draw_labels(seeds, self.teacher.config.num_classes)
        self.z, self.x1 = make_pairs(self.teacher.denoiser, self.teacher.dataset["shape"], seeds,
                                     s["steps"], labels=self.labels, batch_size=self.batch_size,
                                     device=self.device)
        if self.path is not None:
            save_checkpoint({"spec": self.spec, "z": self.z, "x1": self.x1,
                             "labels": self.labels}, self.path)

    def draw(self, noise, device):
        """The pairs of this step: indices uniform over the set from the step's ``BatchNoise``
        (with replacement, like the official code's random batches), so resume is exact."""
        if self.z is None:
            self.load()
        i = noise.randint(0, len(self.z)).cpu()
        labels = None if self.labels is None else self.labels[i].to(device)
        return self.z[i].to(device), self.x1[i].to(device), labels


class RectifiedFlowLoss(TrainingTask):
    """Eq. (1) per sample, averaged over dimensions (the official ``reduce_mean``):
    ‖v(X_t, t) − (X_1 − X_0)‖² with t ~ U[t_eps, 1] (the official code's eps = 1e-3; 0 gives the
    paper's U[0, 1]). The coupling is independent (X_0 = fresh noise, X_1 = the data batch) for
    1-rectified flow, or the fixed ``pairs`` of a trained flow for reflow (the batch's data and
    labels are then unused)."""

    def __init__(self, velocity: VelocityField, t_eps: float = 1e-3,
                 pairs: ReflowPairs | None = None):
        super().__init__(velocity)
        self.t_eps, self.pairs = t_eps, pairs

    def setup_passes(self) -> dict[str, int]:
        """Reflow: the teacher's ODE solves that make the pairs (pairs × Euler steps)."""
        spec = {"pairs": 0, "steps": 0} if self.pairs is None else self.pairs.spec
        return {"forward": spec["pairs"] * spec["steps"], "backward": 0}

    def loss(self, net, x, labels, noise):
        t = self.t_eps + (1 - self.t_eps) * noise.rand().to(x.dtype)
        if self.pairs is None:
            x0, x1 = noise.randn_like(x), x
        else:
            x0, x1, labels = self.pairs.draw(noise, x.device)
            x0, x1 = x0.to(x.dtype), x1.to(x.dtype)
        error = net(interpolate(x0, x1, t), t, labels) - velocity_target(x0, x1)
        return error.square().flatten(1).mean(1)
