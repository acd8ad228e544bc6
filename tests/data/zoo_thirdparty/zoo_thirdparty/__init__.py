"""zoo-thirdparty: one of each thing a plugin can register, through zoo's public API only.

- dataset ``annulus``: points near the circle of radius √2 (unit variance per coordinate), so it
  declares σ_data = 1 and the toy presets;
- network ``ring-net``: a small MLP F(x, noise label, class);
- sampler ``tp-midpoint``: explicit midpoint steps of the probability-flow ODE with an option,
  ``clip``;
- metric ``radius-error``: |mean ‖x‖ − √2|, the distance of the samples' mean radius from the
  true one;
- method ``tp-diffusion``: EDM's denoising loss on ``ring-net``, sampled with any diffusion
  sampler (default ``tp-midpoint``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

import zoo
from zoo.data import Dataset, dataset_sigma_data
from zoo.diffusion import SIGMA_DATA, Denoiser, append_zero, expand_sigma, karras_sigmas
from zoo.diffusion.samplers import generate
from zoo.methods import BenchRow, Method, Samples, preset_scale
from zoo.training import TrainConfig, TrainingTask, setting

ZOO_API_VERSION = 2
RADIUS = math.sqrt(2)


def annulus_points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = RADIUS + 0.05 * torch.randn(n, generator=g)
    return torch.stack([angle.cos(), angle.sin()], 1) * radius[:, None]


def annulus(n: int = 4000, seed: int = 0) -> Dataset:
    x = annulus_points(n, seed)
    checksum = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    return Dataset("annulus", x, None, checksum, "points", sample_true=annulus_points)


annulus.scale = "toy"
annulus.sigma_data = 1.0


class RingNet(nn.Module):
    def __init__(self, dim: int, label_dim: int = 0, hidden: int = 32):
        super().__init__()
        self.label = nn.Embedding(label_dim, hidden) if label_dim else None
        self.inp = nn.Linear(dim + 1, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x, noise_labels, class_labels=None):
        h = self.inp(torch.cat([x, noise_labels[:, None].to(x.dtype)], 1))
        if self.label is not None:
            h = h + self.label(class_labels)
        return self.out(h)


def ring_net(data_shape, label_dim=0, hidden=32):
    (dim,) = data_shape
    return RingNet(dim, label_dim, hidden)


@torch.no_grad()
def sample_midpoint(denoiser, x, sigmas, *, generator=None, class_labels=None,
                    clip: Annotated[float | None, "Clamp the result to [-clip, clip]."] = None):
    """Explicit midpoint steps of dx/dσ = (x − D(x, σ))/σ, Euler into σ = 0: 2N − 1 NFE for N
    positive σ's."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, s, class_labels)) / s
        if s_next == 0:
            x = x - s * d
            continue
        mid = (s * s_next) ** 0.5
        x_mid = x + (mid - s) * d
        x = x + (s_next - s) * (x_mid - denoiser(x_mid, mid, class_labels)) / mid
    return x if clip is None else x.clamp(-clip, clip)


sample_midpoint.parameterization = "edm"  # it consumes a diffusion denoiser D(x, σ)


class RadiusError:
    name, kinds, lower_is_better = "radius-error", ("points",), {"radius error": True}

    def compute(self, samples, dataset, *, seed=0):
        return {"radius error": abs(float(samples.norm(dim=1).mean()) - RADIUS)}


@dataclass
class TPConfig(TrainConfig):
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the preconditioning.")


PRESETS = {"toy": {"network": "ring-net", "batch_size": 256, "iterations": 150, "lr": 3e-3,
                   "lr_warmup": 0, "checkpoint_every": 1000}}


class DenoisingLoss(TrainingTask):
    def __init__(self, denoiser, sigma_data: float):
        super().__init__(denoiser)
        self.sigma_data = sigma_data

    def loss(self, net, x, labels, noise):
        sigma = (noise.randn() * 1.2 - 1.2).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noisy = x + expand_sigma(sigma, x) * noise.randn(*x.shape[1:])
        return weight * (net(noisy, sigma, labels) - x).square().flatten(1).mean(1)


class TPDiffusion(Method):
    name = "tp-diffusion"
    description = "A third party's diffusion model (test data)."
    config_class = TPConfig
    parameterization = "edm"
    default_sampler = "tp-midpoint"

    def preset(self, dataset):
        return TPConfig(method=self.name, dataset=dataset, sigma_data=dataset_sigma_data(dataset),
                        **PRESETS[preset_scale(dataset, PRESETS)])

    def build_denoiser(self, config, data_shape):
        return Denoiser(self.build_net(config, data_shape), "edm", sigma_data=config.sigma_data)

    def make_task(self, config, dataset):
        return DenoisingLoss(self.build_denoiser(config, dataset.shape), config.sigma_data)

    def sample(self, run, n, *, seed=0, batch_size=256, steps=4, sampler=None,
               sampler_options=None, device="cpu", progress=False, **unused):
        fn, options = self.resolve_sampler(sampler, sampler_options)
        x, nfe = generate(run.denoiser, fn, append_zero(karras_sigmas(steps)),
                          run.dataset["shape"], range(seed, seed + n), batch_size=batch_size,
                          device=device, progress=progress, **options)
        return Samples(x, nfe, {"method": self.name, "sampler": sampler or self.default_sampler,
                                "steps": steps, **options})

    def bench_rows(self, run_dir):
        return [BenchRow("TP (tp-midpoint)", 2 * k - 1, Path(run_dir), {"steps": k})
                for k in (2, 4)]


@zoo.hookimpl
def register_datasets(register):
    register("annulus", annulus)


@zoo.hookimpl
def register_networks(register):
    register("ring-net", ring_net)


@zoo.hookimpl
def register_samplers(register):
    register("tp-midpoint", sample_midpoint)


@zoo.hookimpl
def register_metrics(register):
    register("radius-error", RadiusError())


@zoo.hookimpl
def register_methods(register):
    register("tp-diffusion", TPDiffusion())
