"""The ``ect`` method: settings, presets per dataset, the teacher, sampling, bench rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from zoo.data import dataset_sigma_data
from zoo.diffusion import SIGMA_DATA, Denoiser
from zoo.diffusion.samplers import parse_sigmas
from zoo.families import ConsistencyStudent, nfe_option
from zoo.methods import DEFAULT_RUNS_ROOT, preset_scale
from zoo.search_space import Float
from zoo.training.config import TrainConfig, setting
from zoo.training.cost import BUDGETS, budget_iterations
from zoo.tuned import Tuned
from zoo_ect.loss import EasyConsistencyTuning


@dataclass
class ECTConfig(TrainConfig):
    teacher: str = setting("", "The edm run whose weights the consistency model starts from "
                               "[preset: runs/DATASET/edm].")
    teacher_weights: str = setting("ema", "The teacher's weights to start from: ema (its "
                                          "evaluation EMA, as the official code) or raw.",
                                   choices=("ema", "raw"))
    p_mean: float = setting(-1.1, "t ~ p(t): ln t ~ N(P_mean, P_std²).")
    p_std: float = setting(2.0, "P_std of p(t).")
    q: float = setting(2.0, "q > 1: Δt = t·n(t)/q^a shrinks by q every stage.")
    stage_iterations: int = setting(25_000, "d: iterations per stage; a = ⌊step/d⌋ + 1.")
    mapping_k: float = setting(8.0, "k of n(t) = 1 + k·sigmoid(−b·t) (0: Δt = t/q^a).")
    mapping_b: float = setting(1.0, "b of n(t) = 1 + k·sigmoid(−b·t).")
    huber_c: float = setting(0.0, "c of the distance √(‖Δ‖² + c²) − c (0: the L2 norm ‖Δ‖).")
    sigma_data: float = setting(SIGMA_DATA, "σ_data of the parameterisation (the teacher's).")
    sigma_min: float = setting(0.0, "ε of f(x, ε) = x: c_skip = σ_d²/((σ−ε)² + σ_d²), "
                                    "c_out = (σ−ε)·σ_d/√(σ² + σ_d²); 0 (ECT's training): the "
                                    "teacher's EDM scalings, so f starts as its denoiser.")
    sample_sigmas: str = setting("80,0.821", "σ of multistep sampling, comma-separated: --nfe k "
                                             "uses the first k (ECT: 80, then t = 0.821).")

    RESUME_FIXED = (*TrainConfig.RESUME_FIXED, "teacher", "teacher_weights", "sigma_data",
                    "sigma_min")

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise ValueError("ect needs --teacher, the run directory of an edm run")
        if not self.q > 1 or self.stage_iterations < 1:
            raise ValueError(f"need q > 1 (Δt shrinks by q each stage) and stage_iterations >= "
                             f"1, got q={self.q}, stage_iterations={self.stage_iterations}")
        if not (self.p_std > 0 and self.mapping_k >= 0 and self.mapping_b >= 0
                and self.huber_c >= 0):
            raise ValueError(f"need p_std > 0, mapping_k >= 0, mapping_b >= 0 and huber_c >= 0, "
                             f"got {self.p_std}, {self.mapping_k}, {self.mapping_b}, "
                             f"{self.huber_c}")
        if not self.sigma_min >= 0 or not self.sigma_data > 0:
            raise ValueError(f"need sigma_min >= 0 and sigma_data > 0, got {self.sigma_min}, "
                             f"{self.sigma_data}")
        sample_sigmas(self.sample_sigmas, self.sigma_min, "sample_sigmas")


def sample_sigmas(text, sigma_min: float, name: str) -> list[float]:
    """The σ list ``text`` checked: decreasing, each above ``sigma_min`` (the network sees ln σ)."""
    sigmas = parse_sigmas(text, sigma_min=sigma_min, name=name)
    if sigmas[-1] <= sigma_min:
        raise ValueError(f"{name} {text}: every σ must be > sigma_min={sigma_min:g}")
    return sigmas


#: The digits student budget at ECT's passes (an online forward and backward, a target forward).
DIGITS_ITERATIONS = budget_iterations(BUDGETS["digits"]["student"], 128,
                                      {"forward": 2, "backward": 1})

PRESETS = {
    # 2D toy data, from the toy edm teacher's MLP: 34 s of one core (a 4000-iteration teacher;
    # docs/methods/ect.md): one-step W2 0.135 (400 iterations, d = 50: 0.179; d = 100 there,
    # 4 stages: 0.51, the EMA lagging each stage). 2-step σ: 0.1 (0.134; CIFAR-10's 0.821: 0.135).
    "toy": dict(batch_size=256, iterations=800, optimizer="adam", lr=1e-3, stage_iterations=100,
                ema_halflife_kimg=50.0, checkpoint_every=800, sample_sigmas="80,0.1"),
    # 8×8 digits, from the digits edm teacher's small SongUNet, on the student budget
    # (zoo.training.cost.BUDGETS); 8 stages, as the CIFAR-10 run's d = iterations/8. Untuned.
    "digits": dict(batch_size=128, optimizer="radam", lr=1e-4,
                   iterations=DIGITS_ITERATIONS, stage_iterations=DIGITS_ITERATIONS // 8,
                   ema_halflife_kimg=10.0, checkpoint_every=500,
                   network_kwargs={"dropout": 0.2}),
    # The official CIFAR-10 run (locuslab/ect, `bash run_ecm.sh`, batch 128 and 200k
    # iterations, ECM 1-step FID 3.86 / 2-step 2.15 in its README; the paper's Table 1 "ECT
    # 200k"): run_ecm.sh:6 and ct_train.py's defaults (file:line below). The teacher is EDM's
    # unconditional DDPM++ (VP) run (run_ecm.sh:4-5 --arch=ddpmpp, --transfer edm-cifar10-32x32-
    # uncond-vp.pkl): import it with `zoo import-edm` and pass --teacher, or train
    # `zoo train edm --dataset cifar10 --network ddpmpp`. docs/methods/ect.md lists deviations.
    "cifar10": dict(
        batch_size=128,  # run_ecm.sh:6 --batch=128
        iterations=200_000,  # run_ecm.sh:6 --duration=25.6 Mimg / 128
        optimizer="radam",  # run_ecm.sh:6 --optim=RAdam
        lr=1e-4,  # run_ecm.sh:6 --lr=0.0001; betas (0.9, 0.999), eps 1e-8: ct_train.py:119
        lr_warmup=0,  # ct_training_loop.py:258-260 (no lr schedule)
        network_kwargs={"dropout": 0.2},  # run_ecm.sh:6 --dropout=0.2
        hflip=False,  # ct_train.py:62 --xflip False; run_ecm.sh:6 --augment=0.0
        ema_rate=0.9999,  # ct_train.py:59 --ema_beta 0.9999 (ct_train.py:58 --ema None)
        p_mean=-1.1, p_std=2.0,  # ct_train.py:65-66
        q=2.0, mapping_k=8.0, mapping_b=1.0,  # ct_train.py:71-73; sigmoid mapping :68
        stage_iterations=25_000,  # run_ecm.sh:6 --double=250 ticks × --tick=12.8 kimg / 128
        huber_c=0.0,  # ct_train.py:75 -c 0.0
        teacher_weights="ema",  # ct_training_loop.py:192-193 (the pickle's ema)
        sample_sigmas="80,0.821",  # ct_training_loop.py:82 t_max=80; ct_train.py:99 mid_t
        checkpoint_every=5000,
        snapshot_every_kimg=6400.0),  # ct_train.py:89 --snap 500 ticks × 12.8 kimg
}


class ECT(ConsistencyStudent):
    name = "ect"
    description = ("Easy consistency tuning (Geng et al. 2024): consistency training from an "
                   "edm run's weights with a shrinking Δt; 1- and 2-step sampling")
    config_class = ECTConfig
    #: The digits study's winners (docs/tuning.md; provenance in docs/methods/ect.md).
    tuned = {
        "digits": {
            "ect": Tuned(
                params={"lr": 0.000227, "ema_halflife_kimg": 36.7, "q": 3.67, "mapping_k": 6.03,
                        "mapping_b": 0.69, "p_mean": -1.49, "p_std": 1.92},
                study="tune/digits/ect", trial=9,
                validation={"FD-digits": 0.512},
                tuning_cost_fwd=5630000.0),
        },
    }
    # the official generator_fn (ct_training_loop.py:80-97) does not clip between steps
    clip_images = False
    same_sigma_data = ("the consistency model starts as the teacher's denoiser, so it keeps its "
                       "preconditioning")
    sample_options = (
        nfe_option("Steps (= NFE): the first NFE of the run's sample σ."),
        click.Option(["--sigmas"], default=None,
                     help="Explicit σ list, e.g. 80,0.821 (overrides --nfe)."),
    )

    def preset(self, dataset: str) -> ECTConfig:
        return ECTConfig(method=self.name, dataset=dataset,
                         teacher=str(DEFAULT_RUNS_ROOT / dataset / "edm"),
                         sigma_data=dataset_sigma_data(dataset),
                         **PRESETS[preset_scale(dataset, PRESETS)])

    def bench_configs(self, dataset: str, runs_root=DEFAULT_RUNS_ROOT) -> dict[str, ECTConfig]:
        """The ``ect`` run, tuned from the ``edm`` run under ``runs_root``."""
        return {self.name: self.configure(dataset, teacher=str(Path(runs_root) / dataset / "edm"))}

    def search_space(self, config) -> dict:
        """lr and EMA, and ECT's (Geng et al. 2024, Section 3 and the ablations of its
        Appendix): the stage ratio q, the mapping n(t) = 1 + k·sigmoid(−b·t) and the
        training-time distribution ln t ~ N(P_mean, P_std²) (CIFAR-10: 2, 8, 1, −1.1, 2.0)."""
        return {**super().search_space(config), "q": Float(1.5, 4.0),
                "mapping_k": Float(2.0, 16.0, log=True), "mapping_b": Float(0.5, 2.0, log=True),
                "p_mean": Float(-1.5, -0.7), "p_std": Float(1.4, 2.6)}

    def build_denoiser(self, config: ECTConfig, data_shape) -> Denoiser:
        return Denoiser(self.build_net(config, data_shape), "consistency",
                        sigma_data=config.sigma_data, sigma_min=config.sigma_min)

    def make_task(self, config: ECTConfig, dataset) -> EasyConsistencyTuning:
        """The student: the teacher's network (its architecture, classes and weights; the
        config's ``network_kwargs``, e.g. dropout, override the teacher's) under the
        consistency parameterisation with ε = ``sigma_min``."""
        teacher = self.load_teacher(config, dataset)
        record = self.adopt_teacher(config, teacher)
        student = self.build_denoiser(config, dataset.shape)
        student.net.load_state_dict(teacher.denoiser.net.state_dict())
        return EasyConsistencyTuning(student.to(config.device), config, record)

    def schedule(self, config: ECTConfig) -> list[float]:
        return sample_sigmas(config.sample_sigmas, config.sigma_min, "sample_sigmas")

    def parse_schedule(self, text: str, config: ECTConfig, name: str) -> list[float]:
        return sample_sigmas(text, config.sigma_min, name)

    def bench_label(self, config: ECTConfig) -> str:
        """"ECT" at NFE 1 and 2 (the run's first one and two sample σ)."""
        return "ECT"
