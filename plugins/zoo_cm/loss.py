"""Consistency-model objectives (Song et al. 2023): CD, CT and their continuous-time limits.

Notation of the paper: ε = t_1 < t_2 < … < t_N = T; the online network f_θ sees the larger time
t_{n+1}, the target f_θ⁻ = stopgrad(EMA_μ(θ)) the smaller one t_n. The core's ``karras_sigmas``
grid is *descending*, so its index i gives t_{n+1} = σ_i and t_n = σ_{i+1}.
"""

from __future__ import annotations

import abc
import copy
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, jvp

from zoo.diffusion import karras_sigmas
from zoo.diffusion.precond import expand_sigma, ode_derivative
from zoo.diffusion.samplers import euler_step, heun_step
from zoo.training import TrainingTask

SOLVERS = {"heun": heun_step, "euler": euler_step}
#: Teacher evaluations of one step of each solver (Heun's second-order correction: two).
SOLVER_NFE = {"heun": 2, "euler": 1}
DISTANCES = ("l2", "l1", "lpips")
WEIGHTINGS = ("uniform", "snrp1", "truncated-snr", "uniform-u")
CT_MU_FORMS = ("paper", "code")


# ------------------------------------------------------------------ schedules (Appendix C)

def ct_num_scales(k: int, K: int, s0: int, s1: int) -> int:
    """N(k) = ⌈√(k/K·((s1+1)² − s0²) + s0²) − 1⌉ + 1: s0 at k = 0, s1 + 1 at k = K."""
    return math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1


def ct_target_ema(k: int, K: int, s0: int, s1: int, mu0: float, form: str = "paper") -> float:
    """μ(k), growing towards 1 as N(k) grows. ``form="paper"``: exp(s0·log μ0 / N(k)) (the
    paper's Appendix C; μ(0) = μ0); ``form="code"``: exp(s0·log μ0 / (N(k) − 1)), what the
    official code computes (consistency_models_cifar10 jcm/losses.py:916-926, the number of
    grid intervals in the denominator; μ(0) = μ0² for s0 = 2)."""
    if form not in CT_MU_FORMS:
        raise ValueError(f"ct_mu_form={form!r} is not one of {', '.join(CT_MU_FORMS)}")
    scales = ct_num_scales(k, K, s0, s1)
    return math.exp(s0 * math.log(mu0) / (scales if form == "paper" else scales - 1))


def karras_time(u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float):
    """τ(u) = (ε^{1/ρ} + u·(T^{1/ρ} − ε^{1/ρ}))^ρ for u in [0, 1] and its derivative τ'(u).

    The continuous version of the Karras grid (t_n = τ((n−1)/(N−1))); τ'(u) = 1/(τ⁻¹)'(t).
    """
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    base = lo + u * (hi - lo)
    return base**rho, rho * (hi - lo) * base ** (rho - 1)


def inverse_karras_time_derivative(t: torch.Tensor, sigma_min: float, sigma_max: float,
                                   rho: float) -> torch.Tensor:
    """(τ⁻¹)′(t) = t^{1/ρ − 1} / (ρ·(T^{1/ρ} − ε^{1/ρ})), the derivative of
    τ⁻¹(t) = (t^{1/ρ} − ε^{1/ρ}) / (T^{1/ρ} − ε^{1/ρ}) (:func:`karras_time`'s inverse)."""
    return t.pow(1 / rho - 1) / (rho * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho)))


def weighting(name: str, t: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0,
              rho: float = 7.0) -> torch.Tensor:
    """λ(t): ``uniform`` (λ ≡ 1, the paper's choice), ``snrp1`` (1/t² + 1), ``truncated-snr``
    (max(1/t², 1)) or ``uniform-u`` (λ = (τ⁻¹)′(t), so that the continuous-time loss weighs
    every u ~ U[0, 1] of t = τ(u) by 1, as the official CD∞ code does: consistency_models_cifar10
    jcm/losses.py:516-525)."""
    if name == "uniform":
        return torch.ones_like(t)
    if name == "uniform-u":
        return inverse_karras_time_derivative(t, sigma_min, sigma_max, rho)
    if name == "snrp1":
        return t.pow(-2) + 1
    if name == "truncated-snr":
        return t.pow(-2).clamp(min=1)
    raise ValueError(f"unknown weighting {name!r}; valid: {', '.join(WEIGHTINGS)}")


# ------------------------------------------------------------------ distances d(x, y)

def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance ‖a − b‖², divided by the number of dimensions (per sample)."""
    return (a - b).square().flatten(1).mean(1)


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a − b‖₁ divided by the number of dimensions (per sample)."""
    return (a - b).abs().flatten(1).mean(1)


def vgg16_weights_file() -> Path:
    """Where torchvision looks for the ImageNet VGG16 weights that LPIPS(net="vgg") uses."""
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


class LPIPSDistance(nn.Module):
    """LPIPS with the VGG trunk (Zhang et al. 2018) as in the paper: images in [−1, 1], grey
    images repeated to 3 channels, bilinearly resized to 224×224 when smaller than 256 px.

    The linear calibration layers ship with the ``lpips`` package; the VGG16 ImageNet weights
    come from torch's hub cache and are never downloaded here. ``pnet_rand=True`` uses a random
    trunk (tests only: it is a distance, but not a perceptual one).
    """

    def __init__(self, pnet_rand: bool = False):
        super().__init__()
        import lpips

        if not pnet_rand and not vgg16_weights_file().exists():
            raise FileNotFoundError(
                f"LPIPS needs the VGG16 ImageNet weights at {vgg16_weights_file()} (torchvision's "
                f"{vgg16_weights_file().name}); copy the file there (or set TORCH_HOME), or "
                "choose --distance l2"
            )
        self.lpips = lpips.LPIPS(net="vgg", pnet_rand=pnet_rand, verbose=False)
        self.lpips.eval().requires_grad_(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] < 256:
            x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lpips(self.prepare(a), self.prepare(b)).flatten()


def make_distance(name: str, kind: str):
    """The distance ``name`` for data of ``kind`` ("points" or "image")."""
    if name == "l2":
        return l2_distance
    if name == "l1":
        return l1_distance
    if name == "lpips":
        if kind != "image":
            raise ValueError("--distance lpips compares images; for 2D points use l2 or l1")
        return LPIPSDistance()
    raise ValueError(f"unknown distance {name!r}; valid: {', '.join(DISTANCES)}")


def metric_hvp(distance, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """G(y)·v with G(y) = ∂²d(x, y)/∂x² at x = y (the metric's Hessian in the paper's
    continuous-time analysis), by forward-over-reverse differentiation."""
    return jvp(grad(lambda x: distance(x, y).sum()), (y,), (v,))[1]


# ------------------------------------------------------------------ training tasks

class CMTask(TrainingTask):
    """What every consistency objective holds: the online consistency function f_θ (``net``, a
    :class:`zoo.diffusion.Denoiser` with the "consistency" parameterisation), the distance d,
    and the frozen teacher denoiser D_φ (CD), kept outside the trained module so it is not
    saved in the checkpoint's ``net``. ``teacher_record`` (its run directory, step and dataset
    checksum) goes into the checkpoint, and resuming with another teacher is refused.
    """

    def __init__(self, student: nn.Module, config, distance, teacher=None, teacher_record=None):
        super().__init__(student)
        self.config, self.distance, self.teacher = config, distance, teacher
        self.teacher_record = teacher_record

    def to(self, device):
        for module in vars(self).values():
            if isinstance(module, nn.Module):
                module.to(device)
        return self

    def state_dict(self) -> dict:
        return {"teacher": self.teacher_record}

    def load_state_dict(self, state: dict) -> None:
        if state["teacher"] != self.teacher_record:
            raise ValueError(f"the checkpoint was trained with teacher {state['teacher']}, "
                             f"not {self.teacher_record}")


class ConsistencyLoss(CMTask):
    """The discrete objectives: CD and CT share the target network θ⁻, updated after every step
    as θ⁻ ← μ·θ⁻ + (1 − μ)·θ (μ = 0: θ⁻ = θ), and the weighting λ(t_n).

    θ⁻ is part of the algorithm and travels through checkpoints with the iteration count k, so
    a resumed run continues exactly; the evaluation EMA is the trainer's own, separate one.
    Online and target evaluations draw the same dropout masks, as in the paper's code.
    """

    def __init__(self, student: nn.Module, config, distance, teacher=None, teacher_record=None):
        super().__init__(student, config, distance, teacher, teacher_record)
        self.target = copy.deepcopy(student).requires_grad_(False)
        self.k = 0  # training iteration, for the CT schedules

    def num_scales(self, k: int) -> int:
        return self.config.num_scales

    def passes_per_sample(self) -> dict[str, int]:
        """The online pass (forward and backward), the target's forward pass and, for CD, the
        teacher solver's step (Heun 2, Euler 1)."""
        teacher = 0 if self.teacher is None else SOLVER_NFE[self.config.solver]
        return {"forward": 2 + teacher, "backward": 1}

    def target_ema(self, k: int) -> float:
        return self.config.target_ema

    @abc.abstractmethod
    def x_smaller(self, x, z, x_next, t_next, t, labels) -> torch.Tensor:
        """x̂_{t_n}, the point paired with x_{t_{n+1}} = x + t_{n+1}·z (class ``labels``)."""

    def loss(self, net, x, labels, noise):
        """λ(t_n)·d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)), n ~ U{1, …, N−1} (Eq. 7 and
        Algorithm 2 for CD, Eq. 10 and Algorithm 3 for CT). Only the online branch has a graph;
        the class labels condition the online and target networks and the teacher alike."""
        c = self.config
        sigmas = karras_sigmas(self.num_scales(self.k), c.sigma_min, c.sigma_max, c.rho)
        sigmas = sigmas.to(x.device, x.dtype)
        i = noise.randint(0, len(sigmas) - 1)
        t_next, t = sigmas[i], sigmas[i + 1]  # t_{n+1} > t_n
        z = noise.randn_like(x)
        x_next = x + expand_sigma(t_next, x) * z
        seed = int(torch.randint(2**62, ()))
        with torch.no_grad():
            x_hat = self.x_smaller(x, z, x_next, t_next, t, labels)
            self.target.train(net.training)
            torch.manual_seed(seed)
            target = self.target(x_hat, t, labels)
        torch.manual_seed(seed)
        online = net(x_next, t_next, labels)
        lam = weighting(c.weighting, t, c.sigma_min, c.sigma_max, c.rho)
        return lam * self.distance(online, target)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        mu = self.target_ema(self.k)
        for p_target, p in zip(self.target.parameters(), self.net.parameters()):
            p_target.lerp_(p.detach(), 1 - mu)
        for b_target, b in zip(self.target.buffers(), self.net.buffers()):
            b_target.copy_(b)
        self.k = step + 1

    def metrics(self, step: int) -> dict[str, float]:
        """N and μ of iteration k = ``step`` (CT: the schedules N(k), μ(k); CD: constants)."""
        return {"num_scales": self.num_scales(step), "target_ema": self.target_ema(step)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "target": self.target.state_dict(), "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.target.load_state_dict(state["target"])
        self.k = state["k"]


class ConsistencyDistillation(ConsistencyLoss):
    """CD (Algorithm 2): x̂_{t_n} is one step of the teacher's probability-flow ODE solver (the
    core's Heun or Euler step) from t_{n+1} to t_n; N and μ are fixed."""

    def x_smaller(self, x, z, x_next, t_next, t, labels):
        return SOLVERS[self.config.solver](self.teacher, x_next, t_next, t, labels)


class ConsistencyTraining(ConsistencyLoss):
    """CT (Algorithm 3): no teacher; both points share z, x̂_{t_n} = x + t_n·z; N and μ follow
    the schedules N(k) and μ(k) over K = ``config.iterations``."""

    def num_scales(self, k: int) -> int:
        c = self.config
        return ct_num_scales(k, c.iterations, c.s0, c.s1)

    def target_ema(self, k: int) -> float:
        c = self.config
        return ct_target_ema(k, c.iterations, c.s0, c.s1, c.mu0, c.ct_mu_form)

    def x_smaller(self, x, z, x_next, t_next, t, labels):
        return x + expand_sigma(t, x) * z


class ContinuousConsistency(CMTask):
    """CD∞ and CT∞ (the paper's Appendix B): the N → ∞ limit with θ⁻ = stopgrad(θ).

    With t = τ(u), u ~ U[0, 1] and x_t = x + t·z, the per-sample objective is
    λ(t)·τ'(u)·f_θ(x_t, t)ᵀ·sg(G(f_θ⁻)·df_θ⁻/dt), where G is the Hessian of d at x = y
    (:func:`metric_hvp`; d = l2: G = 2I/D) and df_θ⁻/dt = ∂f_θ⁻/∂t + ∂f_θ⁻/∂x·dx/dt is the
    tangent along the probability-flow ODE: dx/dt = (x_t − D_φ(x_t, t))/t from the teacher
    (CD∞), or its unbiased estimate (x_t − x)/t = z (CT∞). τ'(u) = 1/(τ⁻¹)'(t) makes its
    gradient the limit of (N−1)·∇L^N for the λ-weighted discrete loss on the Karras grid.

    The tangent is one forward-mode Jacobian-vector product (``torch.func.jvp``) of the
    unwrapped module along (dx/dt, 1), without a graph; the online branch goes through the
    ``net`` the trainer passes (under DDP the wrapper, which synchronises the gradients).
    The returned value has that gradient and the value ½·λ(t)·τ'(u)²·(df/dt)ᵀ·G·(df/dt), the
    continuous-time loss without stop-gradient (the limit of (N−1)²·L^N): what the log shows.

    ``continuous_loss="norm"`` is instead the objective of the official code's CIFAR-10 run
    (``stopgrad = False``): λ(t)·τ'(u) times the size of df_θ/dt (:meth:`tangent_norm`), with
    the gradient taken through the JVP of the online network itself. Networks with
    ``nn.LayerNorm`` are refused in that form: torch's layer_norm gives wrong parameter gradients
    through a JVP (forward mode or double backward alike; measured 2.25 against 3.09 by central
    differences in float64), while GroupNorm, as in the SongUNet, is exact.
    """

    def __init__(self, student: nn.Module, config, distance, teacher=None, teacher_record=None):
        super().__init__(student, config, distance, teacher, teacher_record)
        if config.continuous_loss == "norm" and any(
                isinstance(m, nn.LayerNorm) for m in student.modules()):
            raise ValueError(
                "continuous_loss=norm differentiates through a JVP, and torch's LayerNorm gives "
                f"wrong gradients there; network {config.network!r} has LayerNorm layers: use "
                "--continuous-loss stopgrad, or a network with GroupNorm (ddpmpp, ncsnpp)")

    def velocity(self, x, z, x_t, t, labels) -> torch.Tensor:
        """dx/dt of the probability-flow ODE at (x_t, t) (the teacher sees the class labels)."""
        if self.teacher is None:
            return z
        return ode_derivative(self.teacher(x_t, t, labels), x_t, t)

    def passes_per_sample(self) -> dict[str, int]:
        """Stop-gradient form: the online pass (forward and backward), the target's JVP (two
        forward passes). Norm form: the online JVP (two forward passes) and the backward
        through it (counted as two). CD∞ adds the teacher's forward pass."""
        teacher = self.teacher is not None
        if self.config.continuous_loss == "norm":
            return {"forward": 2 + teacher, "backward": 2}
        return {"forward": 3 + teacher, "backward": 1}

    def tangent(self, x_t, t, v, labels=None):
        """(f_θ⁻(x_t, t), ∂f_θ⁻/∂t + ∂f_θ⁻/∂x·v) by one JVP along (v, 1), at fixed labels."""
        return jvp(lambda x, s: self.net(x, s, labels), (x_t, t), (v, torch.ones_like(t)))

    def tangent_norm(self, f: torch.Tensor, df_dt: torch.Tensor) -> torch.Tensor:
        """The official code's per-sample size of df/dt for ``continuous_loss="norm"``
        (openai/consistency_models_cifar10, jcm/losses.py, get_continuous_consistency_loss_fn):
        l2 ‖df/dt‖₂ (unsquared), l1 the mean of |df/dt|, lpips (df/dt)ᵀ·G(f)·(df/dt)."""
        name = self.config.distance
        if name == "l2":
            return df_dt.flatten(1).square().sum(1).sqrt()
        if name == "l1":
            return df_dt.abs().flatten(1).mean(1)
        return (metric_hvp(self.distance, f, df_dt) * df_dt).flatten(1).sum(1)

    def loss(self, net, x, labels, noise):
        c = self.config
        t, dt_du = karras_time(noise.rand().to(x.dtype), c.sigma_min, c.sigma_max, c.rho)
        z = noise.randn_like(x)
        x_t = x + expand_sigma(t, x) * z
        seed = int(torch.randint(2**62, ()))
        lam = weighting(c.weighting, t, c.sigma_min, c.sigma_max, c.rho)
        if c.continuous_loss == "norm":
            # the official objective (stopgrad=False): the size of df_θ/dt itself, differentiated
            # through the JVP (tangent and point alike); no target network
            with torch.no_grad():
                v = self.velocity(x, z, x_t, t, labels)
            torch.manual_seed(seed)
            f, df_dt = jvp(lambda y, s: net(y, s, labels), (x_t, t), (v, torch.ones_like(t)))
            return lam * dt_du * self.tangent_norm(f, df_dt)
        with torch.no_grad():
            v = self.velocity(x, z, x_t, t, labels)
            torch.manual_seed(seed)
            f_target, df_dt = self.tangent(x_t, t, v, labels)
            g_df = metric_hvp(self.distance, f_target, df_dt)
        torch.manual_seed(seed)
        online = net(x_t, t, labels)
        surrogate = ((online - online.detach()) * g_df).flatten(1).sum(1)
        value = 0.5 * dt_du * (df_dt * g_df).flatten(1).sum(1)
        return lam * dt_du * (surrogate + value)
