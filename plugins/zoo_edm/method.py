"""EDM training (Karras et al. 2022, Table 1 and Section 5) and sampling with the core samplers."""

from __future__ import annotations

from dataclasses import dataclass

import click

from zoo.augment import AUGMENT_DIM, augment
from zoo.data import dataset_sigma_data
from zoo.data.images import IMAGENET64_CLASSES
from zoo.diffusion import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, Denoiser, append_zero, karras_sigmas
from zoo.diffusion.precond import expand_sigma
from zoo.diffusion.samplers import (
    count_nfe,
    generate,
    parse_sampler_options,
    sample_edm_stochastic,
    sampler_options,
)
from zoo.importers import ADM_IMAGENET64
from zoo.methods import (
    DEFAULT_RUNS_ROOT,
    BenchRow,
    Method,
    Samples,
    draw_labels,
    preset_scale,
    sampler_label,
)
from zoo.search_space import Float
from zoo.training import TrainingTask
from zoo.training.config import TrainConfig, load_config, setting
from zoo.tuned import Tuned


@dataclass
class EDMConfig(TrainConfig):
    p_mean: float = setting(-1.2, "Training noise: ln σ ~ N(P_mean, P_std²).")
    p_std: float = setting(1.2, "Training noise: P_std.")
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the preconditioning.")
    sigma_min: float = setting(SIGMA_MIN, "Smallest σ of the sampling grid.")
    sigma_max: float = setting(SIGMA_MAX, "Largest σ of the sampling grid.")
    rho: float = setting(7.0, "ρ of the Karras grid.")
    augment_p: float = setting(
        0.0, "EDM's non-leaking augmentation probability (zoo.augment; CIFAR-10: 0.12); > 0 "
        f"needs a network with augment_dim={AUGMENT_DIM}, e.g. network_kwargs "
        f'{{"augment_dim": {AUGMENT_DIM}}}.')

    #: σ_data sets the preconditioning: a resumed run cannot change it (as ECT's cannot)
    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "sigma_data")

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.augment_p <= 1:
            raise ValueError(f"augment_p must be in [0, 1], got {self.augment_p}")
        if self.augment_p and self.network_kwargs.get("augment_dim") != AUGMENT_DIM:
            raise ValueError(
                f"augment_p={self.augment_p} feeds {AUGMENT_DIM} augmentation labels to the "
                f"network: set network_kwargs augment_dim={AUGMENT_DIM} (a SongUNet option), "
                f"got {self.network_kwargs.get('augment_dim')}")


PRESETS = {
    # 2D toy data: an MLP of 3 blocks of width 64 (47k parameters), about half a minute on one
    # core. The registry's default MLP (4 blocks of 256, 0.88M) trained for 12,000 steps reached
    # the same W2 (Heun, 35 NFE: 0.083 there, 0.085 here) at 6× the CPU time per step; 4000
    # steps here give that too, but a coarser 64-step Euler sampler (0.073 against 0.068),
    # which PD distils (benchmarks/first_five_minutes.py times the README's first command).
    "toy": dict(
        network="mlp",
        network_kwargs={"hidden": 64, "num_layers": 3},
        batch_size=512,
        iterations=8000,
        lr=2e-3,
        lr_warmup=200,
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
    # EDM's unconditional CIFAR-10 run, `torchrun ... train.py --data=cifar10-32x32.zip
    # --arch=ncsnpp` (NVlabs/edm train.py defaults; docs/reproduction.md has every setting with
    # its source). NCSN++ ("VE" column of EDM's Table 2, the CM paper's teacher architecture);
    # --network ddpmpp gives the VP column with otherwise identical settings (train.py:116-121).
    "cifar10": dict(
        network="ncsnpp",  # train.py:119-121 (--arch=ncsnpp)
        batch_size=512,  # train.py:52 --batch 512
        iterations=390_625,  # train.py:51 --duration 200 Mimg = 390,625 steps of 512
        optimizer="adam",  # train.py:101 Adam, betas (0.9, 0.999), eps 1e-8
        lr=1e-3,  # train.py:56 --lr 10e-4
        lr_warmup=19_531,  # training_loop.py:39 lr_rampup_kimg 10,000 = 19,531 steps of 512
        ema_halflife_kimg=500.0,  # train.py:57 --ema 0.5 Mimg
        ema_rampup=0.05,  # training_loop.py:38 ema_rampup_ratio 0.05
        hflip=False,  # train.py:60 --xflip False (the augmentation flips instead)
        augment_p=0.12,  # train.py:59 --augment 0.12; pipeline train.py:143-146
        # train.py:58 --dropout 0.13; train.py:146 augment_dim 9
        network_kwargs={"dropout": 0.13, "augment_dim": 9},
        checkpoint_every=5000,
        snapshot_every_kimg=2500.0,  # training_loop.py: snapshot_ticks 50 × kimg_per_tick 50
    ),
    # The class-conditional EDM teacher of openai/consistency_models' ImageNet-64 runs,
    # scripts/launch.sh:5 (edm_train.py): the ADM U-Net of its released files, dropout 0.1,
    # batch 4096, lr 1e-4 constant (lr_anneal_steps 0), RAdam (cm/train_util.py:82), weight
    # decay 0, EMA 0.9999432189950708 (the last of its --ema_rate list; the zoo keeps one).
    # Its fp16 mixed precision is bf16 autocast here (fp32 weights). The script sets no length
    # (it trains until stopped): 600k iterations as its CD runs.
    "imagenet64": dict(
        network="adm",
        network_kwargs={**ADM_IMAGENET64, "dropout": 0.1, "use_fp16": False},
        num_classes=IMAGENET64_CLASSES,
        batch_size=4096,
        iterations=600_000,
        optimizer="radam",
        lr=1e-4,
        ema_rate=0.9999432189950708,
        precision="bf16",
        checkpoint_every=5000,
    ),
}


class AugmentedDenoiser(Denoiser):
    """EDM's denoiser whose network also sees the augmentation labels (EDMPrecond's
    ``augment_labels``): D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise, labels, augment_labels).
    Without labels (sampling) it is the plain :class:`~zoo.diffusion.Denoiser`."""

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        if augment_labels is None:
            return super().forward(x, sigma, class_labels)
        sigma = expand_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        F = self.net(c_in * x, c_noise.flatten(), class_labels, augment_labels)
        return c_skip * x + c_out * F.to(x.dtype)


class EDMLoss(TrainingTask):
    """EDM's loss: σ = exp(N(P_mean, P_std²)), λ(σ) = (σ² + σ_d²)/(σ·σ_d)², error ‖D(x+σn, σ) − x‖²
    averaged over the data dimensions; with ``augment_p`` > 0, x is first augmented
    (:func:`zoo.augment.augment`) and the network told how (EDM's training/loss.py). The class
    labels go to the network as ``class_labels`` (EDM's ``EDMLoss``: ``net(y + n, sigma,
    labels, augment_labels=...)``)."""

    def __init__(self, denoiser: Denoiser, config: EDMConfig):
        super().__init__(denoiser)
        self.p_mean, self.p_std, self.sigma_data = config.p_mean, config.p_std, config.sigma_data
        self.augment_p = config.augment_p

    def loss(self, net, x, labels, noise):
        sigma = (self.p_mean + self.p_std * noise.randn()).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        options = {}
        if self.augment_p:
            x, options["augment_labels"] = augment(x, self.augment_p, noise)
        denoised = net(x + expand_sigma(sigma, x) * noise.randn_like(x), sigma, labels,
                       **options)
        return weight * (denoised - x).square().flatten(1).mean(1)


class EDM(Method):
    name = "edm"
    description = (
        "EDM diffusion model (Karras et al. 2022): the teacher; Heun/Euler/stochastic sampling"
    )
    config_class = EDMConfig
    #: The digits study's winners (docs/tuning.md; provenance in docs/methods/edm.md).
    tuned = {
        "digits": {
            "edm": Tuned(
                params={"lr": 0.00184, "ema_halflife_kimg": 24.2, "p_mean": -0.94, "p_std": 1.57},
                study="tune/digits/edm", trial=13,
                validation={"FD-digits": 0.32},
                tuning_cost_fwd=7300000.0),
        },
    }
    parameterization = "edm"
    default_sampler = "heun"
    #: ``--steps`` and the stochastic sampler's options as flags (``--sampler`` and
    #: ``--sampler-options`` come from the registry with every method's ``default_sampler``).
    sample_options = (
        click.Option(
            ["--steps"],
            type=int,
            default=18,
            show_default=True,
            help="Sampler steps N on the Karras grid (N points, then 0): heun and "
            "dpm-solver-2 2N-1 NFE, dpm-solver-3 3N-2, the others N.",
        ),
        *(click.Option(
            ["--" + o.name.lower().replace("_", "-"), o.name],
            type=float,
            default=None,
            help=f"edm-stochastic: {o.help} Short for --sampler-options "
            f"'{{\"{o.name}\": VALUE}}' [default: {o.default}].",
        ) for o in sampler_options(sample_edm_stochastic).values()),
    )

    def preset(self, dataset: str) -> EDMConfig:
        return EDMConfig(method=self.name, dataset=dataset, sigma_data=dataset_sigma_data(dataset),
                         **PRESETS[preset_scale(dataset, PRESETS)])

    def search_space(self, config) -> dict:
        """lr and EMA, and the training noise's ln σ ~ N(P_mean, P_std²) (EDM, Section 5: the
        paper chose −1.2 and 1.2 on CIFAR-10 by such a sweep; ±0.4 around them)."""
        return {**super().search_space(config), "p_mean": Float(-1.6, -0.8),
                "p_std": Float(0.8, 1.6)}

    def tune_row(self, rows):
        """The teacher is scored where it is used: its Heun rows' most steps."""
        heun = [r for r in rows if r.options.get("sampler") in (None, "heun")] or rows
        return max(heun, key=lambda r: r.nfe)

    def build_denoiser(self, config: EDMConfig, data_shape) -> Denoiser:
        return AugmentedDenoiser(
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
        class_label=None,
        sampler_options=None,
        **options,
    ):
        """``sampler_options`` (a dict, or its JSON text) and ``options`` (e.g. ``S_churn``, the
        ``--s-churn`` flag; None = not given) are the sampler's options, checked together by
        :meth:`~zoo.methods.Method.resolve_sampler`."""
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        flags = {k: v for k, v in options.items() if v is not None}
        fn, opts = self.resolve_sampler(sampler, {**parse_sampler_options(sampler_options),
                                                  **flags})
        sigmas = self.sigmas(run.config, steps)
        labels = draw_labels(range(seed, seed + n), run.config.num_classes, class_label)
        x, nfe = generate(
            run.denoiser,
            fn,
            sigmas,
            run.dataset["shape"],
            range(seed, seed + n),
            labels=labels,
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
        return Samples(x, nfe, info, labels)

    #: Heun steps in the bench table: NFE 2N-1 = 1, 3, 5, 9, 19, 35 (one step is Euler).
    bench_steps = (1, 2, 3, 5, 10, 18)
    #: The papers' Heun steps by preset scale, added to the table: the CM paper's EDM teachers
    #: on ImageNet-64 and LSUN-256 use 40 steps, 79 NFE (Song et al. 2023, Tables 2 and 3;
    #: openai/consistency_models scripts/launch.sh ``--sampler heun --steps 40``).
    paper_steps = {"imagenet64": 40, "lsun256": 40}
    #: NFE of the rows of a sampler chosen for the bench (``--models edm:SAMPLER``): each row
    #: takes the most steps whose NFE is at most one of these.
    bench_nfe = (1, 3, 5, 10, 20, 35)
    #: The CM paper's fast-sampler baselines for the teacher (Song et al. 2023, Table 1: DDIM,
    #: DPM-Solver, 3-DEIS) and DPM-Solver++(2M), in every EDM table near 10 and 20 NFE on the
    #: same Karras grid as Heun: registered sampler -> NFE (:meth:`sampler_rows`).
    fast_bench = {"ddim": (10, 20), "dpm-solver-3": (10, 20), "dpm-solver++2m": (10, 20),
                  "deis-3": (10, 20)}
    #: The papers' names of the first-party samplers, for row labels (others: their name).
    sampler_labels = {"heun": "Heun", "euler": "Euler", "edm-stochastic": "EDM stochastic",
                      "ddim": "DDIM", "dpm-solver-2": "DPM-Solver-2",
                      "dpm-solver-3": "DPM-Solver-3", "dpm-solver++2m": "DPM-Solver++(2M)",
                      "ipndm": "iPNDM", "deis-3": "3-DEIS", "rhoab-deis-3": "ρAB-DEIS-3"}

    def bench_configs(self, dataset: str, runs_root=DEFAULT_RUNS_ROOT) -> dict:
        """The ``edm`` run; no config (it must be imported) where the dataset has no preset."""
        if preset_scale(dataset) in PRESETS:
            return super().bench_configs(dataset, runs_root)
        return {self.name: None}

    def bench_rows(self, run_dir):
        """Heun at :attr:`bench_steps` (and the paper's steps of the scale), then the
        :attr:`fast_bench` samplers near their NFE."""
        paper = self.paper_steps.get(preset_scale(load_config(EDMConfig, run_dir).dataset))
        heun = [
            BenchRow("EDM (Heun)", 2 * n - 1, run_dir, {"steps": n, "sampler": "heun"})
            for n in sorted({*self.bench_steps, *([paper] if paper else [])})
        ]
        return heun + [row for sampler, nfe in self.fast_bench.items()
                       for row in self.sampler_rows(run_dir, sampler, nfe=nfe)]

    def sampler_rows(self, run_dir, sampler, sampler_options=None, *, nfe=None):
        """``EDM (SAMPLER, OPTION=V)`` rows on the Karras grid: for each NFE target of ``nfe``
        (default :attr:`bench_nfe`) the most steps whose NFE (counted by
        :func:`~zoo.diffusion.samplers.count_nfe`, no network run) is at most the target."""
        fn, opts = self.resolve_sampler(sampler, sampler_options)
        config = load_config(EDMConfig, run_dir)
        targets = sorted(nfe or self.bench_nfe)
        steps_nfe, steps = {}, 1
        while steps <= targets[-1] + 1:  # a sampler spends at least one NFE per step
            cost = count_nfe(fn, self.sigmas(config, steps), **opts)
            if cost > targets[-1]:
                break
            steps_nfe[steps], steps = cost, steps + 1
        chosen = dict.fromkeys(max((n for n, c in steps_nfe.items() if c <= target), default=None)
                               for target in targets)
        label = sampler_label(self.sampler_labels.get(sampler, sampler), opts)
        extra = {"sampler_options": opts} if opts else {}
        return [BenchRow(f"EDM ({label})", steps_nfe[n], run_dir,
                         {"steps": n, "sampler": sampler, **extra})
                for n in chosen if n is not None]
