"""The ``meanflow`` method: settings, presets per dataset, sampling, bench rows."""

from __future__ import annotations

from dataclasses import dataclass

from zoo.augment import AUGMENT_DIM, ORIENTATION_FREE_LABELS
from zoo.families import FlowSampling, nfe_option
from zoo.methods import preset_scale
from zoo.search_space import Float
from zoo.training.config import TrainConfig, setting
from zoo.training.cost import BUDGETS, budget_iterations
from zoo.tuned import Tuned
from zoo_meanflow.loss import MeanFlowLoss
from zoo_meanflow.net import MeanFlowNet


@dataclass
class MeanFlowConfig(TrainConfig):
    p_mean: float = setting(-0.4, "Mean of the logit-normal time sampler of (r, t).")
    p_std: float = setting(1.0, "Standard deviation of the logit-normal time sampler.")
    ratio: float = setting(0.25, "Share of samples with r ≠ t (the rest: r = t, flow matching).")
    norm_p: float = setting(1.0, "p of the adaptive weight 1/(‖Δ‖² + c)^p; 0: squared L2.")
    norm_eps: float = setting(1e-3, "c of the adaptive weight 1/(‖Δ‖² + c)^p.")
    time_scale: float = setting(1.0, "s: the network sees (s·t, s·(t − r)).")
    augment_p: float = setting(
        0.0, "EDM's non-leaking augmentation probability (zoo.augment); > 0 needs a network "
        f'with network_kwargs {{"augment_dim": N}}, N = {AUGMENT_DIM} (edm pipeline) or '
        f"{len(ORIENTATION_FREE_LABELS)} (meanflow).")
    augment_pipe: str = setting(
        "edm", "edm (EDM's nine transforms and labels) or meanflow (the official MeanFlow "
        "code's: no y-flips or rotations, six labels).", choices=("edm", "meanflow"))

    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "time_scale")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.ratio <= 1 or not 0 <= self.augment_p <= 1:
            raise ValueError(f"ratio and augment_p must be in [0, 1], got {self.ratio}, "
                             f"{self.augment_p}")
        if self.p_std <= 0 or self.norm_p < 0 or self.norm_eps <= 0 or self.time_scale <= 0:
            raise ValueError(f"need p_std > 0, norm_p >= 0, norm_eps > 0 and time_scale > 0, got "
                             f"{self.p_std}, {self.norm_p}, {self.norm_eps}, {self.time_scale}")
        if self.augment_p and self.network_kwargs.get("augment_dim") != self.augment_dim:
            raise ValueError(f"augment_p={self.augment_p} with augment_pipe={self.augment_pipe} "
                             f"needs network_kwargs augment_dim={self.augment_dim}, got "
                             f"{self.network_kwargs.get('augment_dim')}")

    @property
    def augment_dim(self) -> int:
        """The number of augmentation labels of ``augment_pipe``."""
        return AUGMENT_DIM if self.augment_pipe == "edm" else len(ORIENTATION_FREE_LABELS)


PRESETS = {
    # 2D toy data: the registry's MLP (as edm's toy preset), about 4 minutes alone on one core.
    # time_scale 20: one-step W2 0.284 (2 steps 0.172) against 0.378 (0.327) with 1, on 2000
    # samples (docs/methods/meanflow.md).
    "toy": dict(network="mlp", batch_size=512, iterations=1500, lr=2e-3, lr_warmup=200,
                lr_decay="linear", ema_halflife_kimg=50.0, checkpoint_every=1000,
                p_mean=-0.4, p_std=1.0, ratio=0.25, norm_p=1.0, time_scale=20.0),
    # 8×8 digits: the small SongUNet of the other methods' digits presets; not yet tuned.
    # Trained from nothing, it gets the digits teacher's and student's budgets
    # (zoo.training.cost.BUDGETS) at a JVP, a forward and a backward pass per sample.
    "digits": dict(network="ddpmpp-small", batch_size=128, lr=1e-3,
                   iterations=budget_iterations(sum(BUDGETS["digits"].values()), 128,
                                                {"forward": 3, "backward": 1}),
                   lr_warmup=200, lr_decay="linear", ema_halflife_kimg=10.0,
                   checkpoint_every=500, p_mean=-0.4, p_std=1.0, ratio=0.25, norm_p=1.0,
                   time_scale=20.0),
    # The paper's CIFAR-10 run (Table 3; App. A's CIFAR-10 configuration, as released in the
    # authors' PyTorch code, py-meanflow scripts/cifar10_v0.sh): unconditional, batch 1024,
    # 800k iterations (16,000 epochs), Adam lr 6e-4 with a 10k-iteration warm-up (200 epochs),
    # lognorm(−2, 2) for both times, 75 % r ≠ t, p = 0.75, dropout 0.2; the evaluation EMA
    # 0.9999 per step (train_arg_parser.py --ema_decay); its augmentation (--use_edm_aug):
    # EDM's pipe without y-flips and rotations (6 labels), plus plain horizontal flips.
    # Deviations (docs/methods/meanflow.md): the zoo's DDPM++ SongUNet stands in for the
    # paper's 55M U-Net; the augmentation probability is EDM's 0.12 (not checked there).
    "cifar10": dict(
        network="ddpmpp", network_kwargs={"dropout": 0.2,
                                          "augment_dim": len(ORIENTATION_FREE_LABELS)},
        batch_size=1024, iterations=800_000, optimizer="adam", lr=6e-4, lr_warmup=10_000,
        p_mean=-2.0, p_std=2.0, ratio=0.75, norm_p=0.75, norm_eps=1e-3, augment_p=0.12,
        augment_pipe="meanflow", hflip=True, ema_rate=0.9999, checkpoint_every=5000,
        snapshot_every_kimg=2500.0),
}


class MeanFlow(FlowSampling):
    name = "meanflow"
    description = ("MeanFlow (Geng et al. 2025): average-velocity flow trained through the "
                   "MeanFlow identity (JVP); 1- and few-step sampling")
    config_class = MeanFlowConfig
    parameterization = "average-velocity"
    default_sampler = "meanflow"
    sample_options = (nfe_option("Steps (= NFE) on the uniform time grid 1, 1 − 1/NFE, …, 0."),)
    tuned = {
        "digits": {
            "meanflow": Tuned(
                params={"ema_halflife_kimg": 29.63068549960925, "lr": 0.0008718525936398465,
                        "norm_p": 0.7933423796293567, "p_mean": -0.49324678493937785,
                        "p_std": 1.2333800304661318, "ratio": 0.7227470703757719},
                study="tune/digits/meanflow", trial=1,
                validation={"FD-digits": 2.8604182366097177},
                tuning_cost_fwd=12480000.0),
        },
    }

    def preset(self, dataset: str) -> MeanFlowConfig:
        return MeanFlowConfig(method=self.name, dataset=dataset,
                              **PRESETS[preset_scale(dataset, PRESETS)])

    def search_space(self, config) -> dict:
        """lr and EMA, and MeanFlow's ablations (Geng et al. 2025, Table 1): the share of
        r ≠ t (1a: 0–100 %, best 25 %), the logit-normal time sampler (1d: best (−0.4, 1.0))
        and the adaptive weight's power p (1e: 0–1.5, best 1.0)."""
        return {**super().search_space(config), "ratio": Float(0.0, 0.75),
                "p_mean": Float(-0.8, 0.0), "p_std": Float(0.6, 1.4),
                "norm_p": Float(0.0, 1.5)}

    def build_denoiser(self, config: MeanFlowConfig, data_shape) -> MeanFlowNet:
        return MeanFlowNet(self.build_net(config, data_shape), config.time_scale)

    def make_task(self, config: MeanFlowConfig, dataset) -> MeanFlowLoss:
        return MeanFlowLoss(self.build_denoiser(config, dataset.shape), config)

    def time_grid(self, steps: int) -> list[float]:
        """The uniform grid 1, 1 − 1/NFE, …, 0; the default sampler is Eq. 12,
        z_r = z_t − (t − r)·u_θ(z_t, r, t) (:func:`zoo_meanflow.loss.sample_meanflow`; one step:
        x = ε − u_θ(ε, 0, 1))."""
        return [1 - i / steps for i in range(steps + 1)]

    def bench_label(self, config: MeanFlowConfig) -> str:
        return "MeanFlow"
