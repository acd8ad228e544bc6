"""The sCM objective (Lu & Song 2024, Sec. 4.2, Eq. 8 and Algorithm 1): continuous-time
consistency training (sCT) and distillation (sCD) in TrigFlow.

With t from the log-normal proposal, x_t = cos(t)·x_0 + sin(t)·z and dx_t/dt from the data
(sCT: cos(t)·z − sin(t)·x_0) or from a teacher's PF-ODE (sCD), the tangent of f_θ⁻ (Eq. 6)
weighted by cos(t) (the prior weighting w(t) = 1/(σ_d·tan t) times σ_d·sin t), with the warm-up
factor r on its second term, is

    g = −cos²(t)·(σ_d·F_θ⁻ − dx_t/dt) − r·cos(t)·sin(t)·(x_t + σ_d·dF_θ⁻/dt),

normalised to g/(‖g‖ + c), and the loss is e^{w_φ(t)}/D·‖F_θ − F_θ⁻ − g‖² − w_φ(t). At θ⁻ = θ
its gradient in θ is −2·e^{w_φ}/D·gᵀ∂F_θ/∂θ: Eq. (2)'s consistency gradient ∇E[w(t)·f_θᵀ·df_θ⁻/dt]
up to the adaptive weight; in φ it drives e^{w_φ(t)} to D/E[‖F_θ − F_θ⁻ − g‖² | t] (App. D).
"""

from __future__ import annotations

import torch
from torch.func import jvp

from zoo.diffusion import expand_sigma
from zoo.training import TrainingTask
from zoo_scm.trigflow import edm_from_trigflow, sample_times, teacher_velocity


def scm_tangent(velocity_field, x_t, t, dxt_dt, sigma_data: float, r: float):
    """(F_θ⁻, g) with g = −cos²t·(σ_d·F_θ⁻ − dx_t/dt) − r·cos t·sin t·(x_t + σ_d·dF_θ⁻/dt)
    (Algorithm 1). cos t·sin t·dF_θ⁻/dt is one ``torch.func.jvp`` of
    ``velocity_field(x_t, t)`` along (cos t·sin t·dx_t/dt, cos t·sin t): the paper's JVP
    rearrangement (Sec. 5.1), which keeps the tangent bounded as t → 0 or π/2."""
    cs = t.cos() * t.sin()
    F, cs_dF = jvp(velocity_field, (x_t, t), (expand_sigma(cs, x_t) * dxt_dt, cs))
    cos = expand_sigma(t.cos(), x_t)
    g = -cos**2 * (sigma_data * F - dxt_dt) - r * (expand_sigma(cs, x_t) * x_t + sigma_data * cs_dF)
    return F, g


def normalize_tangent(g: torch.Tensor, c: float) -> torch.Tensor:
    """g/(‖g‖ + c), ‖g‖ the Euclidean norm of each sample (tangent normalisation, Sec. 4.2);
    c = 0 leaves g as it is."""
    if not c:
        return g
    return g / expand_sigma(g.flatten(1).norm(dim=1) + c, g)


def tangent_warmup(step: int, iterations: int) -> float:
    """r = min(1, step/H) (tangent warm-up, Sec. 4.2); H = 0: r = 1 from the start."""
    return min(1.0, step / iterations) if iterations else 1.0


def adaptive_weighted_loss(F_diff: torch.Tensor, g: torch.Tensor, w: torch.Tensor):
    """e^w/D·‖F_θ − F_θ⁻ − g‖² − w per sample (Eq. 8), ``F_diff`` = F_θ − F_θ⁻."""
    return w.exp() * (F_diff - g).square().flatten(1).mean(1) - w


class SCMLoss(TrainingTask):
    """sCT (``teacher`` None) or sCD (``teacher``: an EDM denoiser, frozen, kept out of the
    trained module and its checkpoint; ``teacher_record`` goes into the checkpoint and a resume
    with another teacher is refused).

    As ``cm``'s CD∞/CT∞ keep DDP safe: the JVP of F_θ⁻ runs without a graph on the unwrapped
    module ``self.net``, and the online pass goes through the ``net`` the trainer passes (the
    DDP wrapper), one call returning f_θ and w_φ(t); both passes draw the same dropout masks.
    F_θ − F_θ⁻ comes from f_θ = cos t·x_t − σ_d·sin t·F_θ at fixed x_t: (f_θ⁻ − f_θ)/(σ_d·sin t),
    zero in value, ∂F_θ/∂θ in gradient (t > 0 always: t = arctan(e^τ/σ_d)).
    """

    def __init__(self, model, config, teacher=None, teacher_record=None):
        super().__init__(model)
        self.config, self.teacher, self.teacher_record = config, teacher, teacher_record
        self.k = 0  # training iteration, for the tangent warm-up

    def to(self, device):
        self.net.to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def passes_per_sample(self) -> dict[str, int]:
        """The JVP (two forward passes), the online forward and backward pass and, for sCD, the
        teacher's forward pass."""
        return {"forward": 3 + (self.teacher is not None), "backward": 1}

    def velocity(self, x, z, x_t, t, labels):
        """dx_t/dt: cos t·z − sin t·x_0 (sCT) or the teacher's PF-ODE (sCD)."""
        if self.teacher is None:
            return expand_sigma(t.cos(), x) * z - expand_sigma(t.sin(), x) * x
        return teacher_velocity(self.teacher, x_t, t, self.config.sigma_data, labels)

    def loss(self, net, x, labels, noise):
        c = self.config
        t = sample_times(noise, c.p_mean, c.p_std, c.sigma_data, c.proposal_range).to(x.dtype)
        z = noise.randn_like(x) * c.sigma_data
        x_t = expand_sigma(t.cos(), x) * x + expand_sigma(t.sin(), x) * z
        r = tangent_warmup(self.k, c.tangent_warmup)
        seed = int(torch.randint(2**62, ()))
        with torch.no_grad():
            dxt_dt = self.velocity(x, z, x_t, t, labels)
            torch.manual_seed(seed)
            _, g = scm_tangent(lambda y, s: self.net.velocity_field(y, s, labels), x_t, t,
                               dxt_dt, c.sigma_data, r)
            g = normalize_tangent(g, c.tangent_norm)
        torch.manual_seed(seed)
        f, w = net(*edm_from_trigflow(x_t, t, c.sigma_data), labels, return_logvar=True)
        F_diff = (f.detach() - f) / (c.sigma_data * expand_sigma(t.sin(), x))
        return adaptive_weighted_loss(F_diff, g, w)

    def after_step(self, step: int) -> None:
        self.k = step + 1

    def metrics(self, step: int) -> dict[str, float]:
        """r, the tangent warm-up factor of iteration ``step``."""
        return {"tangent_warmup": tangent_warmup(step, self.config.tangent_warmup)}

    def state_dict(self) -> dict:
        return {"teacher": self.teacher_record, "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        if state["teacher"] != self.teacher_record:
            raise ValueError(f"the checkpoint was trained with teacher {state['teacher']}, "
                             f"not {self.teacher_record}")
        self.k = state["k"]
