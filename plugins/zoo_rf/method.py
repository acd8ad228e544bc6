"""The ``rf`` method: rectified flow (1-RF) and one reflow round (2-RF), their presets per
dataset scale, Euler sampling and bench rows. The math is in :mod:`zoo_rf.flow`."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from zoo.families import FlowSampling, nfe_option
from zoo.methods import DEFAULT_RUNS_ROOT, check_teacher_data, preset_scale
from zoo.training import TrainConfig, setting
from zoo.training.cost import BUDGETS, budget_iterations
from zoo.tuned import Tuned
from zoo_rf.flow import RectifiedFlowLoss, ReflowPairs, VelocityField, euler_grid

PAIRS_NAME = "reflow-pairs.pt"
MODES = ("train", "reflow")
#: Default Euler steps of ``zoo sample rf`` by mode: the ODE of 1-RF, one step of a reflowed flow.
DEFAULT_NFE = {"train": 100, "reflow": 1}
#: Settings the student of a reflow round takes from its teacher (it starts from its weights).
TEACHER_FIELDS = ("network", "num_classes", "time_scale")


@dataclass
class RFConfig(TrainConfig):
    mode: str = setting("train", "train: 1-rectified flow on the data (noise and data drawn "
                        "independently); reflow: retrain on (noise, sample) pairs of --teacher.",
                        choices=MODES)
    teacher: str = setting("", "reflow: the rf run whose ODE makes the pairs "
                           "[default: runs/DATASET/rf].")
    reflow_pairs: int = setting(50_000, "reflow: number of (Z_0, Z_1) pairs, made once and kept in "
                                "the run directory.")
    reflow_steps: int = setting(100, "reflow: Euler steps of the teacher's ODE per pair.")
    reflow_seed: int = setting(1_000_000_000, "reflow: pair j starts from the noise of seed "
                               "reflow_seed + j (far from the bench's seeds 0..n-1).")
    reflow_init: str = setting("raw", "reflow: the student starts from the teacher's raw weights "
                               "(the official code), its ema weights, or random (init).",
                               choices=("raw", "ema", "random"))
    t_eps: float = setting(1e-3, "t ~ U[t_eps, 1] in training (official code 1e-3; the paper's "
                           "text 0).")
    time_scale: float = setting(999.0, "The network's noise label is time_scale·t (official: "
                                "999·t for a positional embedding).")

    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "mode", "teacher", "reflow_pairs", "reflow_steps",
                    "reflow_seed", "reflow_init", "t_eps", "time_scale")

    def validate(self) -> None:
        super().validate()
        if self.reflow_pairs < 1 or self.reflow_steps < 1:
            raise ValueError(f"reflow_pairs and reflow_steps must be >= 1, got "
                             f"{self.reflow_pairs}, {self.reflow_steps}")
        if not 0 <= self.t_eps < 1:
            raise ValueError(f"t_eps must be in [0, 1), got {self.t_eps}")


PRESETS = {
    # 2D points: the registry's MLP (positional embedding of 999·t), ~8 min on a shared CPU.
    "toy": dict(network="mlp", batch_size=512, iterations=3000, lr=2e-3, lr_warmup=200,
                lr_decay="linear", ema_halflife_kimg=50.0, checkpoint_every=2000),
    # 8×8 digits: the small SongUNet, as EDM's digits preset, on the teacher's budget
    # (zoo.training.cost.BUDGETS).
    "digits": dict(network="ddpmpp-small", batch_size=128, lr=1e-3,
                   iterations=budget_iterations(BUDGETS["digits"]["teacher"], 128,
                                                {"forward": 1, "backward": 1}),
                   lr_warmup=1000, ema_halflife_kimg=50.0, checkpoint_every=2000),
    # The official CIFAR-10 1-RF, gnobitab/RectifiedFlow ImageGeneration/configs/rectified_flow/
    # cifar10_rf_gaussian_ddpmpp.py over configs/default_cifar10_configs.py: score_sde's NCSN++
    # class in its DDPM++ setting (nf 128, ch_mult 1,2,2,2, 4 res blocks, attention at 16,
    # BigGAN blocks, no FIR, positional embedding) = the core's ddpmpp SongUNet with four levels,
    # dropout 0.15, EMA 0.999999, batch 128, 1,300,001 iterations, Adam lr 2e-4 (betas 0.9,
    # 0.999, eps 1e-8), warm-up 5000, gradient clipping 1, random flips; losses.py: t ~ U[1e-3, 1]
    # and the label t·999. The EMA is score_sde's ExponentialMovingAverage as run_lib.py makes
    # it (models/ema.py, use_num_updates=True by default): β = min(0.999999, (1+n)/(10+n)), not
    # a fixed 0.999999 (which leaves 27 % of the initialisation after 1.3M steps).
    # docs/methods/rf.md lists the deviations.
    "cifar10": dict(network="ddpmpp", network_kwargs={"channel_mult": [1, 2, 2, 2],
                                                      "dropout": 0.15},
                    batch_size=128, iterations=1_300_000, optimizer="adam", lr=2e-4,
                    lr_warmup=5000, grad_clip=1.0, ema_rate=0.999999, ema_num_updates=True,
                    hflip=True,
                    checkpoint_every=10_000, snapshot_every_kimg=6400.0),
}

#: What a reflow round changes of the scale's preset (``--mode reflow``).
REFLOW_PRESETS = {
    # 2-RF on toy: fine-tunes 1-RF on 20k pairs of its 100-step ODE.
    "toy": dict(iterations=1500, lr=1e-3, reflow_pairs=20_000, reflow_steps=100),
    # 2-RF on digits: the student budget, the pairs' ODE solves (5k × 100 Euler steps) included.
    "digits": dict(iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                {"forward": 1, "backward": 1},
                                                setup={"forward": 5000 * 100, "backward": 0}),
                   lr=5e-4, reflow_pairs=5000, reflow_steps=100),
    # cifar10_rf_gaussian_reflow_train.py: EMA 0.9999 (a new score_sde EMA whose warm-up starts
    # again: run_lib_reflow.py's finetune_reflow) and the default dropout 0.1; the README
    # suggests >= 1M pairs ("For CIFAR10, we suggest to generate at least 1M pairs"), made with
    # RK45 (tol 1e-5) in the official code, 1000 Euler steps here.
    "cifar10": dict(ema_rate=0.9999, reflow_pairs=1_000_000, reflow_steps=1000,
                    network_kwargs={"channel_mult": [1, 2, 2, 2], "dropout": 0.1}),
}


class RectifiedFlow(FlowSampling):
    name = "rf"
    description = ("Rectified flow / flow matching (Liu et al. 2022): Euler sampling; "
                   "--mode reflow trains 2-rectified flow on a run's (noise, sample) pairs")
    config_class = RFConfig
    #: The digits study's winners (docs/tuning.md; provenance in docs/methods/rf.md).
    tuned = {
        "digits": {
            "rf": Tuned(
                params={"lr": 0.00111, "ema_halflife_kimg": 90.8},
                study="tune/digits/rf", trial=0,
                validation={"FD-digits": 0.255},
                tuning_cost_fwd=6910000.0),
        },
    }
    parameterization = "velocity"
    default_sampler = "rf-euler"
    sample_options = (
        nfe_option("Euler steps (= NFE) [default: 100 for 1-RF, 1 for a reflowed run].",
                   default=None),
    )

    def preset(self, dataset: str) -> RFConfig:
        return RFConfig(method=self.name, dataset=dataset,
                        **PRESETS[preset_scale(dataset, PRESETS)])

    def configure(self, dataset: str, **overrides) -> RFConfig:
        """The preset, with the scale's reflow settings under ``mode=reflow``, then
        ``overrides``."""
        if overrides.get("mode") == "reflow":
            overrides = {**REFLOW_PRESETS[preset_scale(dataset, PRESETS)], **overrides}
        return super().configure(dataset, **overrides)

    def run_name(self, config: RFConfig) -> str:
        return "rf" if config.mode == "train" else "rf-reflow"

    def teacher_dir(self, config: RFConfig, runs_root=DEFAULT_RUNS_ROOT) -> Path:
        return Path(config.teacher) if config.teacher else Path(runs_root) / config.dataset / "rf"

    def bench_configs(self, dataset, runs_root=DEFAULT_RUNS_ROOT):
        """1-RF (``rf``), then the reflow round trained from it (``rf-reflow``)."""
        flow = self.configure(dataset)
        reflow = self.configure(dataset, mode="reflow")
        reflow.teacher = str(Path(runs_root) / dataset / self.run_name(flow))
        return {self.run_name(flow): flow, self.run_name(reflow): reflow}

    def tune_row(self, rows):
        """1-RF is scored at its most Euler steps (the reflow round, a separate run, at one)."""
        return max(rows, key=lambda r: r.nfe)

    def build_denoiser(self, config: RFConfig, data_shape) -> VelocityField:
        return VelocityField(self.build_net(config, data_shape), config.time_scale)

    def make_task(self, config: RFConfig, dataset) -> RectifiedFlowLoss:
        velocity = self.build_denoiser(config, dataset.shape)
        if config.mode == "train":
            return RectifiedFlowLoss(velocity.to(config.device), config.t_eps)
        config.teacher = str(self.teacher_dir(config))  # the run records its teacher
        teacher = self.load(config.teacher, device=config.device)
        check_teacher_data(teacher, dataset)
        for name in TEACHER_FIELDS:
            if getattr(config, name) != getattr(teacher.config, name):
                raise ValueError(f"{name}={getattr(config, name)!r} differs from the teacher's "
                                 f"{getattr(teacher.config, name)!r}")
        if config.reflow_init != "random":
            init = teacher if config.reflow_init == "ema" else self.load(teacher.path, ema=False)
            velocity.load_state_dict(init.denoiser.state_dict())
        spec = {"teacher": str(teacher.path), "teacher_step": teacher.step,
                "pairs": config.reflow_pairs, "steps": config.reflow_steps,
                "seed": config.reflow_seed}
        pairs = ReflowPairs(teacher, spec, batch_size=max(config.batch_size, 1000),
                            device=config.device, echo=lambda m: print(m, file=sys.stderr))
        return RectifiedFlowLoss(velocity.to(config.device).train().requires_grad_(True),
                                 config.t_eps, pairs)

    def make_trainer(self, task, config, dataset, run_dir, *, progress=True):
        """The shared trainer; a reflow task keeps its pairs in ``run_dir``."""
        if task.pairs is not None:
            task.pairs.path = Path(run_dir) / PAIRS_NAME
        return super().make_trainer(task, config, dataset, run_dir, progress=progress)

    def teacher_run(self, config: RFConfig) -> Path | None:
        """The 1-RF run a reflow round draws its pairs from."""
        return self.teacher_dir(config) if config.mode == "reflow" else None

    def dry_run(self, config: RFConfig, run_dir=None, *, steps: int = 0) -> dict:
        """A reflow round also reports ``pair_nfe``, the one-off cost of making its pairs; its
        steps cost what a 1-RF step costs (one forward and backward), so its rate is measured
        as 1-RF's."""
        if config.mode == "train":
            return super().dry_run(config, run_dir, steps=steps)
        config.teacher = str(self.teacher_dir(config))
        report = super().dry_run(config, run_dir)
        if steps > 0 and not report["missing"]:
            timed = super().dry_run(dataclasses.replace(config, mode="train"), run_dir,
                                    steps=steps)
            report = {**timed, "config": report["config"], "run_dir": report["run_dir"]}
        report["pair_nfe"] = config.reflow_pairs * config.reflow_steps
        return report

    def time_grid(self, steps: int) -> list[float]:
        """From Z_0 = z to t = 1 on ``steps`` uniform steps of the noise weight s = 1 − t
        (:func:`zoo_rf.flow.euler_grid`); the default sampler is Euler
        (:func:`zoo_rf.flow.sample_rf_euler`)."""
        return euler_grid(steps)

    def default_nfe(self, config: RFConfig) -> int:
        return DEFAULT_NFE[config.mode]

    def bench_label(self, config: RFConfig) -> str:
        return "1-RF" if config.mode == "train" else "2-RF"

    def bench_steps(self, config: RFConfig) -> tuple[int, ...]:
        """Euler steps of the table's rows: 1-RF across NFE, the reflowed flow at 1 and 2."""
        return (1, 2, 4, 8, 16, 32, 100) if config.mode == "train" else (1, 2)
