"""The ``ict`` method: settings, presets per dataset scale, sampling and bench rows."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import click
from zoo.data import dataset_sigma_data
from zoo.diffusion import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, Denoiser
from zoo.diffusion.samplers import generate
from zoo.methods import BenchRow, Method, Samples, preset_scale
from zoo.training import TrainConfig, config_from_dict, config_to_dict, setting

from zoo_ict.loss import HUBER_C_PER_DIM, ImprovedConsistencyTraining


@dataclass
class ICTConfig(TrainConfig):
    s0: int = setting(10, "N(0) − 1: initial number of discretisation steps (Section 3.4).")
    s1: int = setting(1280, "N(K) − 1: final number of discretisation steps.")
    p_mean: float = setting(-1.1, "P_mean of the lognormal over noise levels (Section 3.5).")
    p_std: float = setting(2.0, "P_std of the lognormal over noise levels.")
    huber_c_per_dim: float = setting(HUBER_C_PER_DIM, "Pseudo-Huber c = this·√d (Section 3.3).")
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the parameterisation.")
    sigma_min: float = setting(SIGMA_MIN, "ε: where the boundary condition f(x, ε) = x holds.")
    sigma_max: float = setting(SIGMA_MAX, "T: the largest noise level.")
    rho: float = setting(7.0, "ρ of the Karras grid.")
    sample_sigmas: str = setting("80,0.8", "Default σ of multistep sampling, comma-separated: "
                                           "--nfe k uses the first k.")

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.s0 <= self.s1:
            raise ValueError(f"need 1 <= s0 <= s1, got s0={self.s0}, s1={self.s1}")
        if self.p_std <= 0 or self.huber_c_per_dim <= 0:
            raise ValueError(f"p_std and huber_c_per_dim must be positive, got {self.p_std}, "
                             f"{self.huber_c_per_dim}")
        sigmas = parse_sigmas(self.sample_sigmas)
        if sigmas[0] != self.sigma_max or sigmas[-1] < self.sigma_min:
            raise ValueError(f"sample_sigmas must start at sigma_max={self.sigma_max} and stay "
                             f">= sigma_min={self.sigma_min}: {self.sample_sigmas}")


def parse_sigmas(text: str) -> list[float]:
    """"80,0.8" as a strictly decreasing list of floats."""
    try:
        sigmas = [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"sigmas must be comma-separated numbers, e.g. 80,0.8: {text!r}") from None
    if any(b >= a for a, b in pairwise(sigmas)):
        raise ValueError(f"sigmas must be strictly decreasing, got {text!r}")
    return sigmas


PRESETS = {
    # 2D points: the registry's "mlp", as the first-party toy presets use; ~4 min on 2 CPU cores.
    "toy": dict(network="mlp", batch_size=512, iterations=2400, lr=1e-3, ema_halflife_kimg=50.0,
                checkpoint_every=800),
    "digits": dict(network="ddpmpp-small", batch_size=128, iterations=3000, lr=4e-4,
                   ema_halflife_kimg=10.0, checkpoint_every=500),
    # The paper's CIFAR-10 setting (Section 3.6, Table 4): NCSN++, batch 1024, Adam lr 1e-4,
    # 400k iterations, dropout 0.3, evaluation EMA 0.99993 (its Fourier scale 0.02 is not an
    # option of the core's SongUNet, which keeps EDM's 16).
    "cifar10": dict(network="ncsnpp", network_kwargs={"dropout": 0.3}, batch_size=1024,
                    iterations=400_000, lr=1e-4, ema_rate=0.99993, device="cuda",
                    checkpoint_every=5000, sample_sigmas="80,0.821"),
}


class ImprovedConsistencyTrainingMethod(Method):
    name = "ict"
    description = ("Improved consistency training (Song & Dhariwal 2023): pseudo-Huber, no target "
                   "EMA, lognormal levels, doubling N(k); 1- and few-step sampling")
    config_class = ICTConfig
    parameterization = "consistency"  # its runs give f(x, σ): consistency samplers fit
    default_sampler = "consistency"  # zoo sample ict --sampler NAME --sampler-options JSON
    sample_options = (
        click.Option(["--nfe"], type=click.IntRange(min=1), default=1, show_default=True,
                     help="Steps (= NFE): the first NFE of the run's default sample σ."),
        click.Option(["--sigmas"], default=None, help="Explicit σ list, e.g. 80,0.8."),
    )

    def preset(self, dataset: str) -> ICTConfig:
        config = ICTConfig(method=self.name, dataset=dataset,
                           sigma_data=dataset_sigma_data(dataset))
        return config_from_dict(ICTConfig, {**config_to_dict(config),
                                            **PRESETS[preset_scale(dataset)]})

    def build_denoiser(self, config: ICTConfig, data_shape) -> Denoiser:
        return Denoiser(self.build_net(config, data_shape), "consistency",
                        sigma_data=config.sigma_data, sigma_min=config.sigma_min,
                        sigma_max=config.sigma_max)

    def make_task(self, config: ICTConfig, dataset) -> ImprovedConsistencyTraining:
        net = self.build_denoiser(config, dataset.shape).to(config.device)
        return ImprovedConsistencyTraining(net, config, data_dim=math.prod(dataset.shape))

    def sample(self, run, n, *, seed=0, batch_size=256, nfe=1, sigmas=None, device="cpu",
               progress=False, sampler="consistency", sampler_options=None) -> Samples:
        """Multistep consistency sampling (the registered ``consistency`` sampler by default):
        f(σ_0·z, σ_0), then re-noise to each further σ; images are clipped to [−1, 1] after
        every step. The run's ε and that range go to a sampler that takes ``sigma_min`` and
        ``clip``; ``sampler_options`` override them."""
        c = run.config
        clip = (-1.0, 1.0) if run.dataset["kind"] == "image" else None
        fn, opts = self.resolve_sampler(sampler, sampler_options, sigma_min=c.sigma_min,
                                        clip=clip)
        if sigmas:
            sigmas = parse_sigmas(sigmas)
        else:
            default = parse_sigmas(c.sample_sigmas)
            if nfe > len(default):
                raise ValueError(f"this run has default σ for up to {len(default)} steps "
                                 f"({c.sample_sigmas}); pass --sigmas for NFE={nfe}")
            sigmas = default[:nfe]
        x, used = generate(run.denoiser, fn, sigmas, run.dataset["shape"],
                           range(seed, seed + n), batch_size=batch_size, device=device,
                           progress=progress, **opts)
        return Samples(x, used, {"method": self.name, "sampler": sampler, "nfe": used,
                                 "sigmas": sigmas})

    def bench_rows(self, run_dir) -> list[BenchRow]:
        """"iCT" at NFE 1 and 2 (the run's default σ)."""
        config = json.loads((Path(run_dir) / "config.json").read_text())
        steps = len(parse_sigmas(config["sample_sigmas"]))
        return [BenchRow("iCT", k, Path(run_dir), {"nfe": k}) for k in (1, 2) if k <= steps]
