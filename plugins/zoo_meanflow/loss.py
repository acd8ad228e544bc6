"""The MeanFlow objective (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step
Generative Modeling"; equation numbers of the arXiv version 2505.13447).

Linear path z_t = (1 − t)·x + t·ε, t = 0 data, t = 1 noise, conditional velocity v_t = ε − x.
The average velocity u(z_t, r, t) = 1/(t − r)·∫_r^t v(z_τ, τ) dτ (Eq. 3) obeys the MeanFlow
identity u = v − (t − r)·du/dt (Eq. 6) with du/dt = v·∂_z u + ∂_t u (Eq. 8), a Jacobian-vector
product along the tangent (v, 0, 1) of (z, r, t). Sampling: z_r = z_t − (t − r)·u(z_t, r, t)
(Eq. 12); one step x = ε − u(ε, 0, 1).
"""

from __future__ import annotations

import torch
from torch.func import jvp

from zoo.augment import augment
from zoo.diffusion import expand_sigma
from zoo.training import TrainingTask


def sample_times(noise, mean: float, std: float, ratio: float):
    """(r, t) per sample: two logit-normal draws sigmoid(N(mean, std²)), the larger being t; with
    probability 1 − ``ratio`` r = t (the paper's Sec. 4.3 and Table 1a, "ratio of r ≠ t")."""
    a, b = (torch.sigmoid(mean + std * noise.randn()) for _ in range(2))
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    return torch.where(noise.rand() < ratio, r, t), t


def meanflow_target(u_fn, z, r, t, v):
    """(u_θ(z, r, t), u_tgt) with u_tgt = v − (t − r)·(v·∂_z u_θ + ∂_t u_θ) (Eq. 10): one
    ``torch.func.jvp`` of ``u_fn(z, (r, t))`` along (v, 0, 1) (r is held fixed)."""
    u, du_dt = jvp(lambda z, t: u_fn(z, (r, t)), (z, t), (v, torch.ones_like(t)))
    return u, v - expand_sigma(t - r, z) * du_dt


def adaptive_loss(delta: torch.Tensor, p: float, c: float) -> torch.Tensor:
    """sg(w)·‖Δ‖² with w = 1/(‖Δ‖² + c)^p (the paper's adaptive loss weighting, Sec. 4.3; p = 0:
    the squared L2 loss), per sample. The value is ‖Δ‖² itself (what the log shows), the
    gradient that of the weighted loss."""
    square = delta.square().flatten(1).sum(1)
    weighted = (square.detach() + c).pow(-p) * square
    return weighted + (square - weighted).detach()


class MeanFlowLoss(TrainingTask):
    """‖u_θ(z_t, r, t) − sg(u_tgt)‖² adaptively weighted (Eq. 9, Algorithm 1), (r, t) from
    :func:`sample_times`; r = t gives flow matching's ‖u_θ(z_t, t, t) − v_t‖².

    As the continuous-time consistency objectives do (``cm``'s CD∞/CT∞), the target's JVP runs
    on the unwrapped module ``self.net`` without a graph, and the online u_θ goes through the
    ``net`` the trainer passes (under DDP the wrapper, which synchronises the gradients); both
    passes draw the same dropout masks. With ``augment_p`` > 0 the data are first augmented
    (EDM's pipeline, ``zoo.augment``) and the network told how.
    """

    def __init__(self, net, config):
        super().__init__(net)
        self.config = config

    def passes_per_sample(self) -> dict[str, int]:
        """The target's JVP (two forward passes) and the online forward and backward pass."""
        return {"forward": 3, "backward": 1}

    def loss(self, net, x, labels, noise):
        c = self.config
        r, t = sample_times(noise, c.p_mean, c.p_std, c.ratio)
        r, t = r.to(x.dtype), t.to(x.dtype)
        options = {}
        if c.augment_p:
            x, options["augment_labels"] = augment(x, c.augment_p, noise,
                                                   orientation=c.augment_pipe == "edm")
        eps = noise.randn_like(x)
        z = x + expand_sigma(t, x) * (eps - x)
        seed = int(torch.randint(2**62, ()))
        with torch.no_grad():
            torch.manual_seed(seed)
            _, u_tgt = meanflow_target(
                lambda z, times: self.net(z, times, labels, **options), z, r, t, eps - x)
        torch.manual_seed(seed)
        u = net(z, (r, t), labels, **options)
        return adaptive_loss(u - u_tgt, c.norm_p, c.norm_eps)


@torch.no_grad()
def sample_meanflow(net, x, times, *, generator=None, class_labels=None):
    """z_r = z_t − (t − r)·u_θ(z_t, r, t) over the descending ``times`` 1 = t_0 > … > t_k = 0
    (Eq. 12), k NFE; ``x`` is ε (``generate`` scales it by t_0 = 1)."""
    for t, r in zip(times[:-1], times[1:]):
        x = x - (t - r) * net(x, (r, t), class_labels)
    return x
