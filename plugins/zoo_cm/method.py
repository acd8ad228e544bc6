"""The ``cm`` method: settings, presets per dataset and mode, the teacher, sampling, bench rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from zoo.data.images import IMAGENET64_CLASSES
from zoo.diffusion import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, Denoiser
from zoo.diffusion.samplers import parse_sigmas
from zoo.families import ConsistencyStudent, nfe_option
from zoo.importers.openai import ADM_IMAGENET64, two_step_sigmas
from zoo.methods import DEFAULT_RUNS_ROOT, ModalMethod, preset_scale
from zoo.search_space import Choice, Float, Int
from zoo.training.config import TrainConfig, setting
from zoo.training.cost import BUDGETS, budget_iterations
from zoo.tuned import Tuned
from zoo_cm.loss import (
    CT_MU_FORMS,
    DISTANCES,
    SOLVERS,
    WEIGHTINGS,
    ConsistencyDistillation,
    ConsistencyTraining,
    ContinuousConsistency,
    make_distance,
    vgg16_weights_file,
)

MODES = ("cd", "ct", "cd-cont", "ct-cont")
TASKS = {"cd": ConsistencyDistillation, "ct": ConsistencyTraining,
         "cd-cont": ContinuousConsistency, "ct-cont": ContinuousConsistency}
MODE_LABELS = {"cd": "CD", "ct": "CT", "cd-cont": "CD∞", "ct-cont": "CT∞"}


@dataclass
class CMConfig(TrainConfig):
    mode: str = setting("cd", "cd (distillation), ct (training), cd-cont or ct-cont (N → ∞).",
                        choices=MODES)
    teacher: str = setting("", "EDM run directory of the teacher (CD; init=teacher) "
                               "[preset: runs/DATASET/edm].")
    init: str = setting("teacher", "Student initialisation: teacher (its teacher_weights) or "
                                   "random.", choices=("teacher", "random"))
    teacher_weights: str = setting("ema", "The teacher's weights: ema (its evaluation EMA) or raw "
                                          "(the trained weights).", choices=("ema", "raw"))
    num_scales: int = setting(18, "N: points of the Karras grid (CD).")
    solver: str = setting("heun", "Teacher's ODE step in CD: heun or euler.", choices=SOLVERS)
    distance: str = setting("l2", "d: l2 (squared, mean over dimensions), l1 or lpips.",
                            choices=DISTANCES)
    weighting: str = setting(
        "uniform", "λ(t_n): uniform, snrp1, truncated-snr, or uniform-u (every u ~ U[0, 1] of "
        "t = τ(u) weighed by 1: the official CD∞/CT∞ weighting).", choices=WEIGHTINGS)
    target_ema: float = setting(0.0, "μ of the target network θ⁻ (CD); 0: θ⁻ = stopgrad(θ).")
    continuous_loss: str = setting(
        "stopgrad", "CD∞/CT∞ objective: stopgrad (the paper's Appendix B: f_θ·sg(G·df_θ⁻/dt)) "
        "or norm (the official code's stopgrad=False: the size of df_θ/dt, e.g. ‖df/dt‖₂ for "
        "l2, differentiated through the JVP).", choices=("stopgrad", "norm"))
    s0: int = setting(2, "CT: N(0), initial number of grid points.")
    s1: int = setting(150, "CT: N(K) − 1, final number of grid intervals.")
    mu0: float = setting(0.9, "CT: μ0 of the target-EMA schedule μ(k).")
    ct_mu_form: str = setting("paper", "CT: μ(k) = exp(s0·log μ0 / N(k)) (paper) or "
                                       "exp(s0·log μ0 / (N(k) − 1)) (code: the official "
                                       "implementation, which produced the paper's numbers).",
                              choices=CT_MU_FORMS)
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the parameterisation.")
    sigma_min: float = setting(SIGMA_MIN, "ε: where the boundary condition f(x, ε) = x holds.")
    sigma_max: float = setting(SIGMA_MAX, "T: the largest noise level.")
    rho: float = setting(7.0, "ρ of the Karras grid.")
    sample_sigmas: str = setting("80,0.8", "Default σ of multistep sampling, comma-separated: "
                                           "--nfe k uses the first k (greedy search).")

    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "mode", "teacher", "teacher_weights", "init",
                    "sigma_data", "sigma_min", "sigma_max", "rho")

    def validate(self) -> None:
        super().validate()
        if self.num_scales < 2:
            raise ValueError(f"num_scales must be >= 2, got {self.num_scales}")
        if not 2 <= self.s0 <= self.s1:
            raise ValueError(f"need 2 <= s0 <= s1, got s0={self.s0}, s1={self.s1}")
        if not 0 <= self.target_ema < 1 or not 0 < self.mu0 < 1:
            raise ValueError(f"need 0 <= target_ema < 1 and 0 < mu0 < 1, got {self.target_ema}, "
                             f"{self.mu0}")
        if self.mode.endswith("-cont") and (
                self.target_ema or self.distance == "l1" and self.continuous_loss == "stopgrad"):
            raise ValueError("the continuous-time objectives hold for θ⁻ = stopgrad(θ) and (in "
                             "the stopgrad form) a twice differentiable distance: use "
                             "--target-ema 0 and --distance l2 or lpips, or --continuous-loss "
                             "norm for l1")
        if (self.mode.startswith("cd") or self.init == "teacher") and not self.teacher:
            raise ValueError(f"mode {self.mode} with init={self.init} needs --teacher (an edm run)")
        sigmas = parse_sigmas(self.sample_sigmas, sigma_min=self.sigma_min,
                              sigma_max=self.sigma_max, name="sample_sigmas")
        if sigmas[0] != self.sigma_max:
            raise ValueError(f"sample_sigmas must start at sigma_max={self.sigma_max}: {sigmas}")


# Presets per scale; then per mode. The 2-step σ come from benchmarks/cm_sigma_search.py.
PRESETS = {
    # 2D toy data: the teacher's MLP (CT: the EDM toy preset's MLP, 3 blocks of 64, random
    # init); seconds on one core. The notes below were measured with the registry's default
    # MLP (4 blocks of 256), which the smaller one matches in W2 on every row of the toy table.
    # CD: with μ = 0 the toy run stalls near W2 0.12–0.15 (errors pile up along the chain
    # between σ 0.06 and 0.3); μ = 0.95 and lr 2e-3 decayed linearly reach the teacher's W2 in
    # 2000 steps (6000 steps give no better W2: 0.0719 against 0.0723).
    # CT: s1 = 50 suits a 6000-step run (s1 = 150 leaves one-step W2 at 0.6 there).
    # sample_sigmas: greedy validation search, benchmarks/cm_sigma_search.py --steps 3
    # --repeats 8 on runs trained with these settings; validation W2 (mean of 8 sets of 2000,
    # ±0.003), CD: 0.0819 (1 step), 0.0793 (σ 0.4), 0.0790 (σ 0.4, 0.1): CD is at the teacher's
    # W2 in one step, so more steps gain little; CT: 0.1699, 0.1329 (σ 0.5), 0.1273 (σ 0.5, 0.3).
    "toy": {
        "common": dict(batch_size=512, lr=2e-3, lr_decay="linear", ema_halflife_kimg=50.0,
                       checkpoint_every=1000),
        "cd": dict(iterations=2000, num_scales=18, distance="l2", target_ema=0.95,
                   sample_sigmas="80,0.4,0.1"),
        "ct": dict(iterations=6000, init="random", network_kwargs={"hidden": 64, "num_layers": 3},
                   s0=2, s1=50, mu0=0.9, sample_sigmas="80,0.5,0.3"),
        "cd-cont": dict(iterations=2000),
        "ct-cont": dict(iterations=2000),
    },
    # 8×8 digits: the teacher's small SongUNet (CT: the same architecture, random init); about
    # ten (CD) to thirty (CT) minutes on one CPU core. CD: the paper's μ = 0 with a small
    # constant lr (μ = 0.95 with lr 5e-4 decayed over 1000 steps, as on toy, gave FD-digits
    # 0.171 / 0.110 at 1 / 2 steps in the digits table against 0.109 / 0.082 here); CT with a
    # short schedule (s1 = 30) and a decayed lr, half an hour (2500 steps at a constant lr:
    # validation FD-digits 2.89 / 1.41).
    # sample_sigmas: the validation search on FD-digits against the held-out test split
    # (--repeats 2), CT: 1.86 (1 step), 0.95 (σ 0.8), 1.02 (σ 1.2).
    # Iterations: the digits budgets (zoo.training.cost.BUDGETS): CD, CD∞ and CT∞ (started from
    # the teacher's weights) spend the student budget on top of their teacher; CT, trained from
    # nothing, the teacher's and the student's, so every row costs the same in total (passes
    # per sample: the losses').
    "digits": {
        "common": dict(network="ddpmpp-small", batch_size=128, ema_halflife_kimg=10.0,
                       checkpoint_every=500),
        "cd": dict(iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                {"forward": 4, "backward": 1}),
                   lr=2e-4, num_scales=18, target_ema=0.0, sample_sigmas="80,0.8"),
        "ct": dict(iterations=budget_iterations(sum(BUDGETS["digits"].values()), 128,
                                                {"forward": 2, "backward": 1}),
                   init="random", lr=1e-3, lr_decay="linear", s0=2, s1=30, mu0=0.9,
                   sample_sigmas="80,0.8"),
        "cd-cont": dict(iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                     {"forward": 4, "backward": 1}),
                        lr=5e-4, lr_decay="linear"),
        "ct-cont": dict(iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                     {"forward": 3, "backward": 1}),
                        lr=5e-4, lr_decay="linear"),
    },
    # The official CIFAR-10 runs, openai/consistency_models_cifar10 configs/ (cifar10_ve_cd.py,
    # cifar10_ve_ct_adaptive.py, cifar10_ve_continuous.py; file:line below), as in the paper's
    # Section 6 and Appendix C. docs/reproduction.md lists every setting beside its source. The
    # optimiser is RAdam at a constant lr: the code's RAdam branch has no warm-up and no clipping
    # (jcm/losses.py:72-81) although the configs set optim.warmup. The 2-step σ is an unsearched
    # default (no GPU search run yet).
    "cifar10": {
        "common": dict(
            network="ncsnpp",  # cifar10_ve_cd.py:45 model.name (CD: the teacher's network)
            network_kwargs={"dropout": 0.0},  # cifar10_ve_cd.py:69 model.dropout
            hflip=True,  # default_cifar10_configs.py:42 data.random_flip
            batch_size=512,  # cifar10_ve_cd.py:19
            iterations=800_000,  # cifar10_ve_cd.py:15 n_iters 800001
            optimizer="radam",  # cifar10_ve_cd.py:74
            lr=4e-4,  # cifar10_ve_cd.py:75
            lr_warmup=0,  # jcm/losses.py:72-81 (RAdam: constant lr)
            distance="lpips",  # cifar10_ve_cd.py:20 loss_norm
            weighting="uniform",  # cifar10_ve_cd.py:25
            ema_rate=0.9999,  # cifar10_ve_cd.py:46 model.ema_rate (evaluation EMA)
            checkpoint_every=5000, sample_sigmas="80,0.8",
            snapshot_every_kimg=2500.0),  # EMA snapshots as EDM keeps them (not in the CM code)
        # cifar10_ve_cd.py:24 solver heun; :68 num_scales 18; loss "consistency" has no target
        # EMA (jcm/losses.py:893-896): θ⁻ = stopgrad(θ)
        "cd": dict(num_scales=18, solver="heun", target_ema=0.0),
        # cifar10_ve_ct_adaptive.py:21 finetune False; :25-27 start_ema, start_scales,
        # end_scales; lr 4e-4: launch.sh:52, the command of the released ct-lpips run,
        # overrides the config's 2e-4 (:80), as the paper's Table 3 says; μ(k) as
        # jcm/losses.py:916-926 computes it
        "ct": dict(init="random", s0=2, s1=150, mu0=0.9, lr=4e-4, ct_mu_form="code"),
        # cifar10_ve_continuous.py:20 loss_norm l2; :22 stopgrad False (the unsquared ‖df/dt‖
        # differentiated through the JVP); :66 dropout 0.3; :72 lr 1e-3; weight 1 per
        # u ~ U[0, 1] of t = τ(u) (jcm/losses.py:516-525)
        "cd-cont": dict(distance="l2", lr=1e-3, network_kwargs={"dropout": 0.3},
                        weighting="uniform-u", continuous_loss="norm"),
        # CT∞ has no config of its own: launch.sh:65 (continuous-ct-l2) runs
        # cifar10_ve_continuous.py with lr 5e-6, dsm_target (the unbiased tangent), stopgrad
        # True (the stop-gradient objective) and finetune True (from the teacher)
        "ct-cont": dict(distance="l2", lr=5e-6, network_kwargs={"dropout": 0.3},
                        weighting="uniform-u", continuous_loss="stopgrad"),
    },
    # The class-conditional ImageNet-64 runs of openai/consistency_models scripts/launch.sh
    # (cm_train.py; :25 CD-LPIPS, :22 CD-L2 with --distance l2, :38 CT): the teacher's ADM with
    # dropout 0 (--teacher_dropout 0.1 is the teacher's), batch 2048, RAdam
    # (cm/train_util.py:82) at a constant lr, weight decay 0, λ ≡ 1 (--weight_schedule
    # uniform), EMA 0.9999432189950708 (the last of --ema_rate); fp16 becomes bf16 autocast.
    # Two-step σ: launch.sh:74 (CD, --ts 0,22,39 --steps 40) and :80 (CT, --ts 0,106,200
    # --steps 201).
    "imagenet64": {
        "common": dict(network="adm", network_kwargs={**ADM_IMAGENET64, "dropout": 0.0,
                                                      "use_fp16": False},
                       num_classes=IMAGENET64_CLASSES, batch_size=2048, optimizer="radam",
                       lr_warmup=0, distance="lpips", weighting="uniform",
                       ema_rate=0.9999432189950708, precision="bf16",
                       checkpoint_every=5000),
        # --start_scales 40 fixed, --start_ema 0.95 fixed, 600k steps, lr 8e-6; the teacher
        # takes Heun steps (cm/karras_diffusion.py:193-196)
        "cd": dict(num_scales=40, target_ema=0.95, solver="heun", iterations=600_000, lr=8e-6,
                   sample_sigmas=two_step_sigmas(22, 40)),
        # --start_scales 2 --end_scales 200 progressive, --start_ema 0.95 adaptive
        # (μ = exp(s0·log μ0 / N(k)): the paper's form), 800k steps, lr 1e-4, random init
        "ct": dict(init="random", s0=2, s1=200, mu0=0.95, ct_mu_form="paper",
                   iterations=800_000, lr=1e-4, sample_sigmas=two_step_sigmas(106, 201)),
    },
}


class ConsistencyModels(ConsistencyStudent, ModalMethod):
    name = "cm"
    description = ("Consistency models (Song et al. 2023): distillation (CD) from an edm teacher, "
                   "training (CT), continuous-time CD∞/CT∞; 1- and few-step sampling")
    config_class = CMConfig
    #: The digits study's winners (docs/tuning.md; provenance in docs/methods/cm.md).
    tuned = {
        "digits": {
            "cm-cd": Tuned(
                params={"distance": "l2", "ema_halflife_kimg": 18.159915196103242,
                        "lr": 0.0002226434464639121, "num_scales": 33},
                study="tune/digits/cm-cd", trial=1,
                validation={"FD-digits": 0.4479675795975382},
                tuning_cost_fwd=5494272.0),
            "cm-ct": Tuned(
                params={"ema_halflife_kimg": 4.517327494500315, "lr": 0.002459526780584015,
                        "mu0": 0.8047308532345662, "s0": 6, "s1": 78},
                study="tune/digits/cm-ct", trial=11,
                validation={"FD-digits": 1.399420346468201},
                tuning_cost_fwd=13120000.0),
        },
    }
    modes = MODES
    presets = PRESETS
    sample_options = (
        nfe_option("Steps (= NFE): the first NFE of the run's default sample σ."),
        click.Option(["--sigmas"], default=None,
                     help="Explicit σ list, e.g. 80,0.8 (overrides --nfe)."),
    )

    def run_name(self, config: CMConfig) -> str:
        return f"cm-{config.mode}"

    def build_denoiser(self, config: CMConfig, data_shape) -> Denoiser:
        return Denoiser(self.build_net(config, data_shape), "consistency",
                        sigma_data=config.sigma_data, sigma_min=config.sigma_min,
                        sigma_max=config.sigma_max)

    def teacher_run(self, config: CMConfig) -> Path | None:
        """The edm run CD distils, or CT starts from (``init="teacher"``)."""
        if config.mode.startswith("cd") or config.init == "teacher":
            return Path(config.teacher)
        return None

    def missing_assets(self, config: CMConfig, dataset=None, *, planned=()) -> list[str]:
        """The shared checks, and LPIPS's VGG16 ImageNet weights for ``distance="lpips"``."""
        missing = super().missing_assets(config, dataset, planned=planned)
        if config.distance == "lpips" and not vgg16_weights_file().exists():
            missing.append(f"--distance lpips needs the VGG16 ImageNet weights at "
                           f"{vgg16_weights_file()} (torchvision's {vgg16_weights_file().name}, "
                           "from https://download.pytorch.org/models/); copy the file there (or "
                           "set TORCH_HOME), or choose --distance l2")
        return missing

    def search_space(self, config) -> dict:
        """lr and EMA, and what Song et al. 2023 (Section 6, Fig. 3) vary: CD's grid size N
        (their sweep 9–81; CIFAR-10 18) and distance (LPIPS where its weights are here); CT's
        N schedule s0, s1 and target EMA μ0 (Table 3: 2, 150, 0.9)."""
        space = super().search_space(config)
        if config.mode.startswith("cd"):
            distances = ("l2", "l1") + (("lpips",) if vgg16_weights_file().exists() and
                                         preset_scale(config.dataset) != "toy" else ())
            space.update(num_scales=Int(min(9, config.num_scales), max(81, config.num_scales),
                                        log=True), distance=Choice(distances))
        else:  # ranges around the preset's (the digits CT preset's s1 is 30)
            space.update(s0=Int(2, max(10, 2 * config.s0)),
                         s1=Int(max(10, config.s1 // 3), 3 * config.s1, log=True),
                         mu0=Float(min(0.8, config.mu0), max(0.99, config.mu0)))
        return space

    def make_task(self, config: CMConfig, dataset):
        distance = make_distance(config.distance, dataset.kind)
        teacher = record = None
        if config.mode.startswith("cd") or config.init == "teacher":
            teacher = self.load_teacher(config, dataset)
            record = self.adopt_teacher(config, teacher)
        else:
            config.teacher = ""  # the run's config says what was used: no teacher
        student = self.build_denoiser(config, dataset.shape)
        if config.init == "teacher":
            student.net.load_state_dict(teacher.denoiser.net.state_dict())
        distiller = teacher.denoiser if config.mode.startswith("cd") else None
        return TASKS[config.mode](student, config, distance, distiller, record).to(config.device)

    def schedule(self, config: CMConfig) -> list[float]:
        return parse_sigmas(config.sample_sigmas)

    def parse_schedule(self, text: str, config: CMConfig, name: str) -> list[float]:
        return parse_sigmas(text, sigma_min=config.sigma_min, sigma_max=config.sigma_max,
                            name=name)

    def bench_label(self, config: CMConfig) -> str:
        """"CD (L2)", "CT (LPIPS)", …: rows at NFE 1 and 2 of the run's default σ (e.g. openai's
        two-step schedule for an imported run; NFE 2 only where it has two σ)."""
        return f"{MODE_LABELS[config.mode]} ({config.distance.upper()})"

    def bench_configs(self, dataset: str, runs_root=DEFAULT_RUNS_ROOT) -> dict[str, CMConfig]:
        """``cm-cd`` and ``cm-ct``; where runs ``cm-cd-DISTANCE`` exist (e.g. openai's released
        CD-L2 and CD-LPIPS, imported side by side), those instead of ``cm-cd``. A dataset without
        training presets (released checkpoints only, e.g. LSUN-256) gives no configs (None):
        its runs must be imported."""
        root = Path(runs_root) / dataset
        trainable = preset_scale(dataset) in PRESETS

        def config(**settings):
            return self.configure(dataset, teacher=str(root / "edm"), **settings) if trainable \
                else None

        cd = {f"cm-cd-{d}": config(mode="cd", distance=d) for d in DISTANCES
              if (root / f"cm-cd-{d}").is_dir()}
        return {**(cd or {"cm-cd": config(mode="cd")}), "cm-ct": config(mode="ct")}
