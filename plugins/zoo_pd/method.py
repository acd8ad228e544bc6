"""Progressive distillation (Salimans & Ho 2022, Algorithm 2) in σ-space on the Karras grid, as
re-implemented on EDM teachers by the consistency-models paper (Song et al. 2023, Section 6).

The grid of an N-step sampler is the Karras grid of N + 1 points (EDM Eq. 5),
σ_i = (σ_max^{1/ρ} + i/N·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0..N, from σ_max down to σ_min; the
sampler takes N deterministic Euler (= DDIM) steps along it and returns x at σ_min (no step to
σ = 0: the residual noise σ_min = 0.002 is far below the data's resolution). Because σ_i depends
on i/N only, the N/2-step grid is exactly every other point of the N-step grid, so the student's
step σ_t → σ_s spans two teacher steps σ_t → σ_mid → σ_s.

Stage k distils a teacher sampling with N_k = N_0/2^k steps into a student with N_k/2 steps; the
student starts from the teacher's weights, with a fresh optimiser and a learning rate reset and
decayed per stage; its EMA weights teach stage k + 1. Every stage is kept as its own run
``<run>/stage-<k>-nfe-<N_k/2>``, so the table has PD at every NFE N_0/2, ..., 2, 1.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import torch

from zoo.data import dataset_sigma_data, load_dataset
from zoo.diffusion import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, Denoiser, karras_sigmas
from zoo.diffusion.precond import expand_sigma
from zoo.diffusion.samplers import euler_step, generate
from zoo.methods import (
    DEFAULT_RUNS_ROOT,
    BenchRow,
    Method,
    Samples,
    check_teacher_data,
    draw_labels,
    preset_scale,
)
from zoo.plugins import get
from zoo.training import CheckpointError, TrainingTask, load_checkpoint
from zoo.training.checkpoint import CHECKPOINT_NAME
from zoo.training.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    read_config,
    resolve_paths,
    save_config,
    setting,
)
from zoo.training.cost import BUDGETS, budget_iterations
from zoo.tuned import Tuned

#: The distilled architecture and preconditioning are the teacher's (the student starts from it);
#: the config's network_kwargs override the teacher's (e.g. the student's dropout).
TEACHER_FIELDS = ("network", "num_classes", "sigma_data")


@dataclass
class PDConfig(TrainConfig):
    teacher: str = setting("", "Teacher run directory (an EDM run) [default: runs/DATASET/edm].")
    teacher_steps: int = setting(
        64, "N_0, Euler steps of the teacher's sampler (a power of two >= 2); stage k distils "
        "N_0/2^k steps into N_0/2^(k+1), down to 1 step. `iterations` is per stage.")
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the preconditioning (the teacher's).")
    sigma_min: float = setting(SIGMA_MIN, "Smallest σ of the sampling grid.")
    sigma_max: float = setting(SIGMA_MAX, "Largest σ of the sampling grid.")
    rho: float = setting(7.0, "ρ of the Karras grid.")
    teacher_weights: str = setting(
        "ema", "Weights of the edm teacher of stage 0: ema (its evaluation EMA) or raw (the "
        "trained weights); later stages learn from the previous student's EMA.",
        choices=("ema", "raw"))

    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "teacher", "teacher_weights", "teacher_steps",
                    "sigma_data", "sigma_min", "sigma_max", "rho")

    def validate(self) -> None:
        super().validate()
        stage_plan(self.teacher_steps)


PRESETS = {
    # 2D toy data: 64 → 1 steps in 6 stages of 1500 iterations, a few CPU minutes in all.
    "toy": dict(network="mlp", batch_size=512, iterations=1500, teacher_steps=64, lr=5e-4,
                lr_decay="linear", ema_halflife_kimg=20.0, checkpoint_every=500),
    # 8×8 digits: the small SongUNet, 16 → 1 steps in 4 short stages (CPU-sized) that share the
    # student budget of the digits presets (zoo.training.cost.BUDGETS).
    "digits": dict(network="ddpmpp-small", batch_size=128, teacher_steps=16,
                   iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                {"forward": 3, "backward": 1}, stages=4),
                   lr=2e-4, lr_decay="linear", ema_halflife_kimg=20.0, checkpoint_every=500),
    # The official CIFAR-10 run, openai/consistency_models_cifar10
    # configs/cifar10_ve_progressive_distillation.py (file:line below; docs/reproduction.md).
    # Its first student takes start_scales = 4096 steps from an 8192-step teacher (:24;
    # jcm/losses.py:400-415 puts the teacher's midpoint at (i + 0.5)/N), 50k iterations a stage
    # (:25) with Adam at lr 5e-5 decayed linearly to 0 within each stage (:74-77), no warm-up
    # (:80), gradient clipping at norm 1 (:81), no EMA (:46 ema_rate 0), dropout 0 (:69),
    # batch 512 (:19), random flips (default_cifar10_configs.py:42). The network is the
    # teacher's (:45 ncsnpp).
    "cifar10": dict(network="ncsnpp", network_kwargs={"dropout": 0.0}, batch_size=512,
                    iterations=50_000, teacher_steps=8192, optimizer="adam", lr=5e-5,
                    lr_warmup=0, lr_decay="linear", grad_clip=1.0, ema_rate=0.0,
                    ema_halflife_kimg=0.0, hflip=True, checkpoint_every=5000,
                    snapshot_every_kimg=2500.0),
}


def stage_plan(teacher_steps: int) -> list[int]:
    """Student steps of each stage: N_0/2, N_0/4, ..., 1 (stage k: N_0/2^k → N_0/2^(k+1))."""
    if teacher_steps < 2 or teacher_steps & (teacher_steps - 1):
        raise ValueError(f"teacher_steps must be a power of two >= 2, got {teacher_steps}")
    return [teacher_steps >> k for k in range(1, int(math.log2(teacher_steps)) + 1)]


def stage_name(stage: int, student_steps: int) -> str:
    return f"stage-{stage}-nfe-{student_steps}"


def pd_sigmas(steps: int, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0) -> torch.Tensor:
    """The grid of an N-step sampler: N + 1 Karras points from σ_max to σ_min (see the module)."""
    return karras_sigmas(steps + 1, sigma_min, sigma_max, rho)


def pd_target(x_t, x_s, sigma_t, sigma_s) -> torch.Tensor:
    """The denoised x̃ with which ONE Euler step σ_t → σ_s lands on the teacher's two-step x_s.

    An Euler step is x_s = (σ_s/σ_t)·x_t + (1 − σ_s/σ_t)·D (Salimans & Ho Eq. 8, DDIM in σ-space),
    so x̃ = (x_s − (σ_s/σ_t)·x_t) / (1 − σ_s/σ_t) (Algorithm 2, the target x̃; α ≡ 1).
    """
    ratio = expand_sigma(sigma_s, x_t) / expand_sigma(sigma_t, x_t)
    return (x_s - ratio * x_t) / (1 - ratio)


def truncated_snr_weight(sigma) -> torch.Tensor:
    """λ(σ) = max(SNR, 1) with SNR = 1/σ² (Salimans & Ho Section 4, "truncated SNR" weighting)."""
    sigma = torch.as_tensor(sigma)
    return torch.clamp(sigma**-2, min=1.0)


@torch.no_grad()
def sample_pd_euler(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """Deterministic Euler (DDIM) steps along ``sigmas`` (from :func:`pd_sigmas`); 1 NFE per step.

    The grid ends at σ_min > 0 and the sample is x there (no final step to σ = 0).
    """
    sigmas = [float(s) for s in sigmas]
    decreasing = all(b < a for a, b in zip(sigmas, sigmas[1:], strict=False))
    if len(sigmas) < 2 or sigmas[-1] <= 0 or not decreasing:
        raise ValueError(f"need a strictly decreasing positive grid of >= 2 sigmas, got {sigmas}")
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = euler_step(denoiser, x, sigma, sigma_next, class_labels)
    return x


# A diffusion denoiser's sampler, but on PD's own grid (ending at σ_min): PD's `sample` runs it
# and offers no other (default_sampler None), and it is not registered, so that diffusion
# methods, whose grids end at σ = 0, do not offer it.
sample_pd_euler.parameterization = "edm"


class PDLoss(TrainingTask):
    """Salimans & Ho 2022, Algorithm 2, in σ-space. For a student step i ~ U{0..M−1} of M steps:
    x_t = x + σ_t·z at σ_t = σ_{2i} of the teacher's 2M-step grid; the teacher takes two Euler
    steps σ_{2i} → σ_{2i+1} → σ_{2i+2} = σ_s (no grad); the loss is
    max(1/σ_t², 1)·‖D_student(x_t, σ_t) − x̃‖² with x̃ = :func:`pd_target`, averaged over dims;
    teacher and student see the same class labels."""

    def __init__(self, student: Denoiser, teacher: Denoiser, teacher_sigmas: torch.Tensor):
        super().__init__(student)
        if len(teacher_sigmas) % 2 != 1 or len(teacher_sigmas) < 3:
            raise ValueError(f"the teacher grid needs 2M + 1 points, got {len(teacher_sigmas)}")
        self.teacher = teacher
        self.teacher_sigmas = teacher_sigmas
        self.student_steps = (len(teacher_sigmas) - 1) // 2

    def passes_per_sample(self) -> dict[str, int]:
        """The teacher's two Euler steps and the student's forward and backward pass."""
        return {"forward": 3, "backward": 1}

    def loss(self, net, x, labels, noise):
        i = noise.randint(0, self.student_steps)
        sigmas = self.teacher_sigmas.to(x.device, x.dtype)
        sigma_t, sigma_mid, sigma_s = sigmas[2 * i], sigmas[2 * i + 1], sigmas[2 * i + 2]
        x_t = x + expand_sigma(sigma_t, x) * noise.randn_like(x)
        with torch.no_grad():
            x_mid = euler_step(self.teacher, x_t, sigma_t, sigma_mid, labels)
            x_s = euler_step(self.teacher, x_mid, sigma_mid, sigma_s, labels)
        target = pd_target(x_t, x_s, sigma_t, sigma_s)
        error = (net(x_t, sigma_t, labels) - target).square().flatten(1).mean(1)
        return truncated_snr_weight(sigma_t) * error


def load_teacher(run_dir, device="cpu", ema: bool = True):
    """A trained run of any method whose denoiser is an EDM-preconditioned diffusion model, with
    its EMA (``ema``) or raw weights."""
    state = load_checkpoint(run_dir)
    run = get("methods", state["method"]).load(run_dir, device=device, ema=ema)
    if not isinstance(run.denoiser, Denoiser) or run.denoiser.parameterization != "edm":
        raise ValueError(f"PD distils a diffusion denoiser; {run_dir} ({state['method']}) "
                         "is not one")
    return run


class ProgressiveDistillation(Method):
    name = "pd"
    description = "Progressive distillation (Salimans & Ho 2022): halve the steps per stage"
    config_class = PDConfig
    #: The digits study's winners (docs/tuning.md; provenance in docs/methods/pd.md).
    tuned = {
        "digits": {
            "pd": Tuned(
                params={"lr": 0.00025, "ema_halflife_kimg": 22.7},
                study="tune/digits/pd", trial=1,
                validation={"FD-digits": 0.713},
                tuning_cost_fwd=5380000.0),
        },
    }
    requires = ("edm",)
    sample_options = (
        click.Option(["--nfe"], type=int, default=None,
                     help="Sample from the stage with this many steps (in the run's folder) "
                          "[default: the stage given by --run, or the last stage]."),
    )

    def preset(self, dataset: str) -> PDConfig:
        return PDConfig(method=self.name, dataset=dataset, sigma_data=dataset_sigma_data(dataset),
                        **PRESETS[preset_scale(dataset, PRESETS)])

    def teacher_dir(self, config: PDConfig, runs_root=DEFAULT_RUNS_ROOT) -> Path:
        return Path(config.teacher) if config.teacher else Path(runs_root) / config.dataset / "edm"

    def teacher_run(self, config: PDConfig) -> Path:
        return self.teacher_dir(config)

    def bench_configs(self, dataset, runs_root=DEFAULT_RUNS_ROOT):
        config = self.configure(dataset)
        config.teacher = str(self.teacher_dir(config, runs_root))
        return {self.run_name(config): config}

    def build_denoiser(self, config: PDConfig, data_shape) -> Denoiser:
        return Denoiser(self.build_net(config, data_shape), "edm", sigma_data=config.sigma_data,
                        sigma_min=config.sigma_min, sigma_max=config.sigma_max)

    def make_task(self, config: PDConfig, dataset) -> PDLoss:
        """One stage: distil ``config.teacher`` sampling ``teacher_steps`` into half as many."""
        teacher = load_teacher(self.teacher_dir(config), device=config.device,
                               ema=config.teacher_weights == "ema")
        check_teacher_data(teacher, dataset)
        for name in TEACHER_FIELDS:
            if getattr(config, name) != getattr(teacher.config, name):
                raise ValueError(f"{name}={getattr(config, name)!r} differs from the teacher's "
                                 f"{getattr(teacher.config, name)!r}: the student is its copy")
        student = self.build_denoiser(config, dataset.shape)
        try:
            student.load_state_dict(teacher.denoiser.state_dict())
        except RuntimeError:
            raise ValueError(
                f"network_kwargs={config.network_kwargs!r} make a network that differs from the "
                f"teacher's ({teacher.config.network_kwargs!r}): the student is its copy; only "
                "settings without weights (e.g. dropout) may differ") from None
        student.to(config.device).train().requires_grad_(True)
        sigmas = pd_sigmas(config.teacher_steps, config.sigma_min, config.sigma_max, config.rho)
        return PDLoss(student, teacher.denoiser, sigmas)

    def stage_config(self, config: PDConfig, stage: int, teacher: Path) -> PDConfig:
        """Stage ``stage``'s own config: its teacher run, N_k teacher steps, the teacher's
        architecture, seed + stage (so stages draw different noise), and the teacher's weights
        (``teacher_weights`` for stage 0, then the previous student's EMA)."""
        teacher_config = load_checkpoint(teacher)["config"]
        return dataclasses.replace(
            config, teacher=str(teacher), teacher_steps=config.teacher_steps >> stage,
            seed=config.seed + stage, teacher_weights=config.teacher_weights if stage == 0
            else "ema", **{name: teacher_config[name] for name in TEACHER_FIELDS},
            network_kwargs={**teacher_config["network_kwargs"], **config.network_kwargs})

    def train(self, config: PDConfig, run_dir=None, *, resume=False, progress=True, on_step=None):
        """Run every stage in sequence into ``run_dir/stage-<k>-nfe-<N_k/2>``. With ``resume``,
        finished stages are kept and a partial one continues from its checkpoint."""
        config.method = self.name
        config.teacher = str(self.teacher_dir(config))
        root = Path(run_dir) if run_dir else self.default_run_dir(config)
        if not resume:  # a new run records absolute paths: it resumes from anywhere
            resolve_paths(config)
            root = root.resolve()
        self.check_assets(config)
        started = sorted(root.glob(f"stage-*/{CHECKPOINT_NAME}"))
        if started and not resume:
            raise CheckpointError(f"{root} already holds PD stages ({started[0].parent.name}...); "
                                  "pass resume=True (--resume) to continue, or choose another run")
        dataset = load_dataset(config.dataset, **config.dataset_options)
        root.mkdir(parents=True, exist_ok=True)
        save_config(config, root / "config.json")
        teacher = Path(config.teacher)
        for stage, steps in enumerate(stage_plan(config.teacher_steps)):
            stage_dir = root / stage_name(stage, steps)
            stage_config = self.stage_config(config, stage, teacher)
            if not _finished(stage_dir, stage_config.iterations):
                if progress:
                    print(f"PD stage {stage}: {2 * steps} → {steps} steps -> {stage_dir}",
                          file=sys.stderr)
                task = self.make_task(stage_config, dataset)
                self.make_trainer(task, stage_config, dataset, stage_dir, progress=progress).fit(
                    resume=True, on_step=on_step)
            teacher = stage_dir
        return root

    def total_iterations(self, config: PDConfig) -> int:
        """Every stage's ``iterations``."""
        return len(stage_plan(config.teacher_steps)) * config.iterations

    def dry_run(self, config: PDConfig, run_dir=None, *, steps: int = 0) -> dict:
        """The run's plan (every stage's ``iterations``); with ``steps``, stage 0's throughput,
        projected over every stage (the stages train the same network on the same batch)."""
        config.method = self.name
        config.teacher = str(self.teacher_dir(config))
        if steps <= 0 or self.missing_assets(config):
            return super().dry_run(config, run_dir)
        report = super().dry_run(self.stage_config(config, 0, Path(config.teacher)), run_dir,
                                 steps=steps)
        report["config"] = config_to_dict(config)  # the plan, not stage 0's settings
        return report

    def saved_config(self, run_dir) -> dict:
        """A PD run's plan: the ``config.json`` of its folder (each stage checkpoints its own)."""
        saved = read_config(run_dir)
        if saved is None:
            raise CheckpointError(f"--resume: there is no PD run in {run_dir} (no config.json)")
        return saved

    def stage_dirs(self, root) -> dict[int, Path]:
        """Student steps → stage directory, for the stages of ``root`` that have a checkpoint."""
        dirs = {}
        for path in Path(root).glob(f"stage-*-nfe-*/{CHECKPOINT_NAME}"):
            dirs[int(path.parent.name.rsplit("-", 1)[1])] = path.parent
        return dict(sorted(dirs.items(), reverse=True))

    def load(self, run_dir, *, device="cpu", ema: bool = True):
        """Load a stage directory, or from a PD run's folder its last (fewest-step) stage."""
        run_dir = Path(run_dir)
        if run_dir.is_dir() and not (run_dir / CHECKPOINT_NAME).exists():
            stages = self.stage_dirs(run_dir)
            if not stages:
                raise CheckpointError(f"no checkpoint at {run_dir / CHECKPOINT_NAME} and no PD "
                                      f"stage in {run_dir}; train one with `zoo train pd`")
            run_dir = stages[min(stages)]
        return super().load(run_dir, device=device, ema=ema)

    def sample(self, run, n, *, seed=0, batch_size=256, nfe=None, device="cpu", progress=False,
               class_label=None):
        steps = run.config.teacher_steps // 2
        if nfe is not None and nfe != steps:
            stages = self.stage_dirs(run.path.parent)
            if nfe not in stages:
                raise ValueError(f"no PD stage with {nfe} steps in {run.path.parent}; trained: "
                                 f"{', '.join(map(str, stages)) or 'none'}")
            run, steps = self.load(stages[nfe], device=device, ema=run.ema), nfe
        c = run.config
        sigmas = pd_sigmas(steps, c.sigma_min, c.sigma_max, c.rho)
        labels = draw_labels(range(seed, seed + n), c.num_classes, class_label)
        x, count = generate(run.denoiser, sample_pd_euler, sigmas, run.dataset["shape"],
                            range(seed, seed + n), labels=labels, batch_size=batch_size,
                            device=device, progress=progress)
        info = {"method": self.name, "sampler": "euler", "steps": steps, "nfe": count,
                "stage_run": str(run.path), "sigmas": [float(s) for s in sigmas]}
        return Samples(x, count, info, labels)

    def bench_rows(self, run_dir):
        """One row per stage of the run's plan (its ``config.json``), NFE N_0/2 ... 1; ``zoo bench``
        requires each stage's checkpoint to be complete."""
        saved = read_config(run_dir)
        if saved is None:
            return []
        config = config_from_dict(PDConfig, saved)
        return [BenchRow("PD", steps, Path(run_dir) / stage_name(stage, steps))
                for stage, steps in enumerate(stage_plan(config.teacher_steps))]


def _finished(run_dir: Path, iterations: int) -> bool:
    return (run_dir / CHECKPOINT_NAME).exists() and load_checkpoint(run_dir)["step"] >= iterations
