"""The ``scm`` method: settings, presets per dataset and mode, the teacher, sampling, bench rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import click

from zoo.diffusion import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN
from zoo.families import ConsistencyStudent, nfe_option
from zoo.methods import DEFAULT_RUNS_ROOT, ModalMethod
from zoo.search_space import Float, Int
from zoo.training import TrainConfig, setting
from zoo.training.cost import BUDGETS, budget_iterations
from zoo.tuned import Tuned
from zoo_scm.loss import SCMLoss
from zoo_scm.trigflow import (
    PAPER_MID_TIME,
    TIME_LABELS,
    TrigFlowConsistency,
    time_to_sigma,
)

MODES = ("sct", "scd")
MODE_LABELS = {"sct": "sCT", "scd": "sCD"}


def parse_times(text: str, t_max: float, name: str = "mid_times") -> list[float]:
    """"1.1" or "1.1,0.6" (or a list): TrigFlow times strictly decreasing in (0, t_max)."""
    values = text.split(",") if isinstance(text, str) else list(text)
    try:
        times = [float(v) for v in values if str(v).strip()]
    except ValueError:
        raise ValueError(f"{name} must be numbers like 1.1 or 1.1,0.6, got {text!r}") from None
    if any(not 0 < s < t_max for s in times) or any(b >= a for a, b in zip(times, times[1:])):
        raise ValueError(f"{name} {text!r}: times must decrease strictly within (0, t_max = "
                         f"arctan(σ_max/σ_d) = {t_max:.4f})")
    return times


@dataclass
class SCMConfig(TrainConfig):
    mode: str = setting("sct", "sct (consistency training) or scd (distillation from --teacher).",
                        choices=MODES)
    teacher: str = setting("", "edm run: sCD's teacher and, with init=teacher, the initial "
                               "weights [preset: runs/DATASET/edm].")
    init: str = setting("teacher", "Initial weights: teacher (its teacher_weights; the paper "
                                   "always starts from the diffusion model) or random.",
                        choices=("teacher", "random"))
    teacher_weights: str = setting("ema", "The teacher's weights: ema or raw.",
                                   choices=("ema", "raw"))
    time_label: str = setting("edm", "c_noise(t): edm (ln(σ_d·tan t)/4, the teacher's label; "
                                     "needed with init=teacher) or trigflow (time_scale·t, the "
                                     "paper's).", choices=TIME_LABELS)
    time_scale: float = setting(1.0, "s of the trigflow label s·t.")
    sigma_data: float = setting(SIGMA_DATA, "σ_d of TrigFlow.")
    p_mean: float = setting(-1.0, "P_mean of the proposal: ln(σ_d·tan t) ~ N(P_mean, P_std²).")
    p_std: float = setting(1.4, "P_std of the proposal.")
    tangent_norm: float = setting(0.1, "c of the tangent normalisation g/(‖g‖ + c); 0: none.")
    tangent_warmup: int = setting(10_000, "H: iterations of the tangent warm-up r = min(1, k/H); "
                                          "0: none.")
    sigma_max: float = setting(SIGMA_MAX, "Sampling starts at t_max = arctan(σ_max/σ_d).")
    clamp_proposal: bool = setting(
        True, "Clamp the proposal's σ = e^τ to [0.002, σ_max] before t = arctan(σ/σ_d), as the "
        "reference implementation does.", legacy=False)
    mid_times: str = setting(str(PAPER_MID_TIME), "TrigFlow times of multistep sampling after "
                                                  "t_max: --nfe k uses the first k − 1.")

    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "mode", "teacher", "init", "teacher_weights",
                    "time_label", "time_scale", "sigma_data")

    @property
    def proposal_range(self) -> tuple[float, float] | None:
        """(σ_min, σ_max) the proposal's σ is clamped to, or None (``clamp_proposal`` off)."""
        return (SIGMA_MIN, self.sigma_max) if self.clamp_proposal else None

    @property
    def t_max(self) -> float:
        return math.atan(self.sigma_max / self.sigma_data)

    def validate(self) -> None:
        super().validate()
        if not (self.p_std > 0 and self.sigma_data > 0 and self.sigma_max > 0
                and self.time_scale > 0):
            raise ValueError(f"need p_std, sigma_data, sigma_max and time_scale > 0, got "
                             f"{self.p_std}, {self.sigma_data}, {self.sigma_max}, "
                             f"{self.time_scale}")
        if not (self.tangent_norm >= 0 and self.tangent_warmup >= 0):
            raise ValueError(f"need tangent_norm >= 0 and tangent_warmup >= 0, got "
                             f"{self.tangent_norm}, {self.tangent_warmup}")
        if (self.mode == "scd" or self.init == "teacher") and not self.teacher:
            raise ValueError(f"mode {self.mode} with init={self.init} needs --teacher (an edm run)")
        if self.init == "teacher" and self.time_label != "edm":
            raise ValueError("init=teacher starts from an edm network, which reads EDM's noise "
                             "label: use --time-label edm, or --init random")
        parse_times(self.mid_times, self.t_max)


# Presets per scale; then per mode. The toy and digits settings: docs/methods/scm.md.
PRESETS = {
    # 2D toy data: the teacher's MLP, started from the teacher (as the paper always does).
    "toy": {
        "common": dict(batch_size=512, iterations=400, optimizer="adam", lr=1e-3,
                       adam_beta2=0.99, ema_halflife_kimg=20.0, checkpoint_every=200,
                       p_mean=-1.0, p_std=1.4, tangent_warmup=100),
        # mid_times: the validation search (benchmarks/cm_sigma_search.py --method scm) on the
        # preset's runs: σ = 3 (sCT) and 10 (sCD), t = arctan(σ/σ_d); every σ ≤ 2 made the
        # second step worse (docs/methods/scm.md).
        "sct": dict(mid_times="1.4056"),
        "scd": dict(mid_times="1.5208"),
    },
    # 8×8 digits: the teacher's small SongUNet; as written untuned (a 10-iteration sanity run
    # only), the sCT and sCD studies' winners in SCM.tuned (`--untuned` trains this preset). Both
    # start from the teacher and spend the student budget (zoo.training.cost.BUDGETS): a JVP, a
    # forward and a backward pass per sample (sCD: and the teacher's forward).
    "digits": {
        "common": dict(batch_size=128, optimizer="adam", lr=2e-4,
                       adam_beta2=0.99, ema_halflife_kimg=10.0, checkpoint_every=500,
                       tangent_warmup=250),
        "sct": dict(iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                 {"forward": 3, "backward": 1})),
        "scd": dict(iterations=budget_iterations(BUDGETS["digits"]["student"], 128,
                                                 {"forward": 4, "backward": 1})),
    },
    # The paper's CIFAR-10 runs (App. G.2 "CIFAR-10"; G.2's first paragraph for c, H and the
    # batch size; Sec. 5.2 and G.2 for sampling). docs/methods/scm.md lists the deviations.
    "cifar10": {
        "common": dict(
            batch_size=512,  # G.2: the teacher's batch size (512, G.1)
            iterations=400_000,  # App. E.3, Table 3: sCT trained 400k iterations on CIFAR-10
            optimizer="radam", lr=1e-4,  # G.2: RAdam, learning rate 0.0001
            adam_beta1=0.9, adam_beta2=0.99,  # G.2: β1 = 0.9, β2 = 0.99 (ε = 1e-8: torch's)
            lr_warmup=0, lr_decay="constant",  # G.2: "without learning rate schedulers"
            ema_halflife_kimg=500.0,  # G.2: EMA half-life 0.5 Mimg
            p_mean=-1.0, p_std=1.4,  # G.2: proposal P_mean = −1.0, P_std = 1.4
            tangent_norm=0.1, tangent_warmup=10_000,  # G.2: c = 0.1, H = 10000
            sigma_max=80.0, mid_times="1.1",  # G.2: t_max = arctan(80/σ_d); t_mid = 1.1
            checkpoint_every=5000, snapshot_every_kimg=2500.0),
        "sct": dict(network_kwargs={"dropout": 0.2}),  # G.2: dropout 0.20 for sCT
        "scd": dict(network_kwargs={"dropout": 0.0}),  # G.2: dropout disabled for sCD
    },
}


class SCM(ConsistencyStudent, ModalMethod):
    """Sampling is Song et al. 2023's multistep consistency sampling (Algorithm 1) as the sCM
    paper uses it: f_θ(σ_d·z, t_max), then for each further t: x_t = cos(t)·x̂_0 + sin(t)·z,
    f_θ(x_t, t) (the core consistency sampler in σ = σ_d·tan t, re-noising x̂_0 + σ·ε, Eq. 30),
    one NFE per time; images clipped to [−1, 1] after every step."""

    name = "scm"
    description = ("sCM (Lu & Song 2024): continuous-time consistency training (sCT) and "
                   "distillation (sCD) in TrigFlow, from an edm run; 1- and 2-step sampling")
    config_class = SCMConfig
    modes = MODES
    presets = PRESETS
    schedule_option = "times"
    same_sigma_data = "TrigFlow's time t = arctan(σ/σ_d) needs the same σ_d"
    tuned = {
        "digits": {
            "scm-sct": Tuned(
                params={"ema_halflife_kimg": 8.410997694016606, "lr": 0.00027558042161044175,
                        "p_mean": -0.6865815993743362, "p_std": 1.9636627605010293,
                        "tangent_warmup": 192},
                study="tune/digits/scm-sct", trial=1,
                validation={"FD-digits": 0.5002237254548518},
                tuning_cost_fwd=5504000.0),
            "scm-scd": Tuned(
                params={"ema_halflife_kimg": 8.035337353526506, "lr": 8.274761220243173e-05,
                        "p_mean": -0.6336883758795985, "p_std": 1.533165284973017,
                        "tangent_warmup": 346},
                study="tune/digits/scm-scd", trial=7,
                validation={"FD-digits": 0.43924739967122406},
                tuning_cost_fwd=5494272.0),
        },
    }
    sample_options = (
        nfe_option("Steps (= NFE): t_max, then the first NFE − 1 of the run's mid_times."),
        click.Option(["--times"], default=None,
                     help="Explicit TrigFlow times after t_max, e.g. 1.1 (overrides --nfe)."),
    )

    def search_space(self, config) -> dict:
        """lr and EMA, and what Lu & Song 2024 name (Section 4, Appendix G): the proposal
        ln(σ_d·tan t) ~ N(P_mean, P_std²) (CIFAR-10 −1.0, 1.4) and the tangent warm-up H."""
        return {**super().search_space(config), "p_mean": Float(-1.4, -0.6),
                "p_std": Float(1.0, 2.0),
                "tangent_warmup": Int(0, max(1, 2 * config.tangent_warmup))}

    def run_name(self, config: SCMConfig) -> str:
        return f"scm-{config.mode}"

    def build_denoiser(self, config: SCMConfig, data_shape) -> TrigFlowConsistency:
        return TrigFlowConsistency(self.build_net(config, data_shape), config.sigma_data,
                                   config.time_label, config.time_scale, config.sigma_max)

    def teacher_run(self, config: SCMConfig) -> Path | None:
        """The edm run sCD distils, or sCT starts from (``init="teacher"``)."""
        return Path(config.teacher) if config.mode == "scd" or config.init == "teacher" else None

    def make_task(self, config: SCMConfig, dataset) -> SCMLoss:
        teacher = record = None
        if config.mode == "scd" or config.init == "teacher":
            teacher = self.load_teacher(config, dataset)
            record = self.adopt_teacher(config, teacher)
        else:
            config.teacher = ""  # the run records what it used: no teacher
        model = self.build_denoiser(config, dataset.shape)
        if config.init == "teacher":
            model.net.load_state_dict(teacher.denoiser.net.state_dict())
        distiller = teacher.denoiser if config.mode == "scd" else None
        return SCMLoss(model, config, distiller, record).to(config.device)

    def _sigmas(self, config: SCMConfig, times: list[float]) -> list[float]:
        return [config.sigma_max] + [time_to_sigma(t, config.sigma_data) for t in times]

    def schedule(self, config: SCMConfig) -> list[float]:
        """σ_max (t_max), then the σ of the run's ``mid_times``."""
        return self._sigmas(config, parse_times(config.mid_times, config.t_max))

    def parse_schedule(self, text: str, config: SCMConfig, name: str) -> list[float]:
        return self._sigmas(config, parse_times(text, config.t_max, name))

    def schedule_info(self, config: SCMConfig, sigmas: list[float]) -> dict:
        return {"times": [config.t_max, *(math.atan(s / config.sigma_data) for s in sigmas[1:])]}

    def sampler_sigma_min(self, config: SCMConfig) -> float:
        return 0.0  # TrigFlow re-noises x̂_0 + σ·ε: no ε floor

    def bench_label(self, config: SCMConfig) -> str:
        """"sCT" / "sCD" at NFE 1 and 2 (t_max, then t_mid)."""
        return MODE_LABELS[config.mode]

    def bench_configs(self, dataset: str, runs_root=DEFAULT_RUNS_ROOT) -> dict[str, SCMConfig]:
        """``scm-sct`` and ``scm-scd``, both from the edm run of ``runs_root``."""
        teacher = str(Path(runs_root) / dataset / "edm")
        configs = (self.configure(dataset, mode=m, teacher=teacher) for m in MODES)
        return {self.run_name(c): c for c in configs}
