"""EDM training (Karras et al. 2022, Table 1 and Section 5) and sampling with the core samplers."""

from __future__ import annotations

from dataclasses import dataclass

import click

from zoo.diffusion import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, Denoiser, append_zero, karras_sigmas
from zoo.diffusion.precond import expand_sigma
from zoo.diffusion.samplers import generate
from zoo.methods import BenchRow, Method, Samples, preset_scale
from zoo.plugins import get
from zoo.training import TrainingTask
from zoo.training.config import TrainConfig, setting


@dataclass
class EDMConfig(TrainConfig):
    p_mean: float = setting(-1.2, "Training noise: ln σ ~ N(P_mean, P_std²).")
    p_std: float = setting(1.2, "Training noise: P_std.")
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the preconditioning.")
    sigma_min: float = setting(SIGMA_MIN, "Smallest σ of the sampling grid.")
    sigma_max: float = setting(SIGMA_MAX, "Largest σ of the sampling grid.")
    rho: float = setting(7.0, "ρ of the Karras grid.")


PRESETS = {
    # 2D toy data: an MLP, a few minutes on two CPU cores.
    "toy": dict(
        network="mlp",
        batch_size=512,
        iterations=12_000,
        lr=2e-3,
        lr_warmup=500,
        lr_decay="linear",
        ema_halflife_kimg=50.0,
        checkpoint_every=2000,
    ),
    # 8×8 digits: the small SongUNet.
    "digits": dict(
        network="ddpmpp-small",
        batch_size=128,
        iterations=6_000,
        lr=1e-3,
        lr_warmup=1000,
        ema_halflife_kimg=50.0,
        checkpoint_every=2000,
    ),
    # EDM's CIFAR-10 DDPM++ settings (Table 7): 200 Mimg at batch 512, lr 1e-3, 10 Mimg warm-up,
    # EMA half-life 500 kimg, dropout 0.13.
    "cifar10": dict(
        network="ddpmpp",
        batch_size=512,
        iterations=390_625,
        lr=1e-3,
        lr_warmup=19_531,
        ema_halflife_kimg=500.0,
        hflip=True,
        network_kwargs={"dropout": 0.13},
        checkpoint_every=5000,
        device="cuda",
    ),
}


class EDMLoss(TrainingTask):
    """EDM's loss: σ = exp(N(P_mean, P_std²)), λ(σ) = (σ² + σ_d²)/(σ·σ_d)², error ‖D(x+σn, σ) − x‖²
    averaged over the data dimensions."""

    def __init__(self, denoiser: Denoiser, config: EDMConfig):
        super().__init__(denoiser)
        self.p_mean, self.p_std, self.sigma_data = config.p_mean, config.p_std, config.sigma_data

    def loss(self, net, x, labels, noise):
        sigma = (self.p_mean + self.p_std * noise.randn()).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = net(x + expand_sigma(sigma, x) * noise.randn_like(x), sigma)
        return weight * (denoised - x).square().flatten(1).mean(1)


class EDM(Method):
    name = "edm"
    description = (
        "EDM diffusion model (Karras et al. 2022): the teacher; Heun/Euler/stochastic sampling"
    )
    config_class = EDMConfig
    sample_options = (
        click.Option(
            ["--steps"],
            type=int,
            default=18,
            show_default=True,
            help="Sampler steps N on the Karras grid (Heun: 2N-1 NFE).",
        ),
        click.Option(
            ["--sampler"],
            default="heun",
            show_default=True,
            help="A registered sampler: heun, euler, edm-stochastic.",
        ),
        click.Option(
            ["--s-churn", "S_churn"],
            type=float,
            default=0.0,
            show_default=True,
            help="edm-stochastic: S_churn.",
        ),
        click.Option(["--s-tmin", "S_tmin"], type=float, default=0.0, show_default=True),
        click.Option(["--s-tmax", "S_tmax"], type=float, default=float("inf"), show_default=True),
        click.Option(["--s-noise", "S_noise"], type=float, default=1.0, show_default=True),
    )

    def preset(self, dataset: str) -> EDMConfig:
        return EDMConfig(method=self.name, dataset=dataset, **PRESETS[preset_scale(dataset)])

    def build_denoiser(self, config: EDMConfig, data_shape) -> Denoiser:
        return Denoiser(
            self.build_net(config, data_shape),
            "edm",
            sigma_data=config.sigma_data,
            sigma_min=config.sigma_min,
            sigma_max=config.sigma_max,
        )

    def make_task(self, config: EDMConfig, dataset) -> EDMLoss:
        return EDMLoss(self.build_denoiser(config, dataset.shape), config)

    def sigmas(self, config: EDMConfig, steps: int):
        """EDM's sampling grid: ``steps`` Karras points, then σ = 0."""
        return append_zero(karras_sigmas(steps, config.sigma_min, config.sigma_max, config.rho))

    def sample(
        self,
        run,
        n,
        *,
        seed=0,
        batch_size=256,
        steps=18,
        sampler="heun",
        device="cpu",
        progress=False,
        **sampler_opts,
    ):
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        fn = get("samplers", sampler)
        opts = {}
        if sampler == "edm-stochastic":
            opts = {k: v for k, v in sampler_opts.items() if k.startswith("S_")}
        sigmas = self.sigmas(run.config, steps)
        x, nfe = generate(
            run.denoiser,
            fn,
            sigmas,
            run.dataset["shape"],
            range(seed, seed + n),
            batch_size=batch_size,
            device=device,
            progress=progress,
            **opts,
        )
        info = {
            "method": self.name,
            "sampler": sampler,
            "steps": steps,
            "nfe": nfe,
            "sigmas": [float(s) for s in sigmas],
            **opts,
        }
        return Samples(x, nfe, info)

    #: Heun steps in the bench table: NFE 2N-1 = 1, 3, 5, 9, 19, 35 (one step is Euler).
    bench_steps = (1, 2, 3, 5, 10, 18)

    def bench_rows(self, run_dir):
        return [
            BenchRow("EDM (Heun)", 2 * n - 1, run_dir, {"steps": n, "sampler": "heun"})
            for n in self.bench_steps
        ]
