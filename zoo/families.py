"""Bases of the method families whose members differ only in presets, loss and schedule.

:class:`ConsistencyStudent` is a consistency model trained from an ``edm`` run (cm, ect, scm):
a member declares its presets, its loss (``make_task``), its default sampling schedule and its
row label, and inherits the teacher's loading and checks, ``zoo sample``'s ``--nfe`` and
explicit-schedule options, multistep consistency sampling (Song et al. 2023, Algorithm 1) through
any registered consistency sampler, and its bench rows at NFE 1 and 2.

:class:`FlowSampling` is a model integrated from noise at t = 1 to data at t = 0 on a time grid
(rf, meanflow): a member declares the grid and its row labels, and inherits ``--nfe``, sampling
through any registered sampler of its kind and its bench rows.
"""

from __future__ import annotations

import abc
from pathlib import Path

import click

from zoo import plugins
from zoo.diffusion.samplers import generate
from zoo.methods import BenchRow, Method, Samples, check_teacher_data, draw_labels
from zoo.training import TrainConfig
from zoo.training.config import load_config


def nfe_option(help: str, default: int | None = 1) -> click.Option:
    """``--nfe``: the sampling steps (= network evaluations) of ``zoo sample``."""
    return click.Option(["--nfe"], type=click.IntRange(min=1), default=default,
                        show_default=default is not None, help=help)


class ConsistencyStudent(Method):
    """A consistency model f(x, σ) trained from an ``edm`` run (distilled from it, or started
    from its weights). Members set :attr:`schedule_option`, :attr:`clip_images` and
    :attr:`same_sigma_data` and implement :meth:`schedule`, :meth:`parse_schedule` and
    :meth:`bench_label`."""

    requires = ("edm",)
    parameterization = "consistency"
    default_sampler = "consistency"
    #: the keyword of :meth:`sample` (and ``zoo sample`` flag) giving an explicit schedule
    schedule_option = "sigmas"
    #: images clipped to [−1, 1] after every step (the official CM and sCM samplers; ECT's
    #: ``generator_fn`` does not clip)
    clip_images = True
    #: why the teacher's σ_data must equal the run's; empty: it need not
    same_sigma_data = ""
    #: the NFE of the bench rows (those the run's default schedule has steps for)
    bench_nfe = (1, 2)

    @abc.abstractmethod
    def schedule(self, config: TrainConfig) -> list[float]:
        """The run's default sampling σ, one per step (the first NFE are sampled)."""

    @abc.abstractmethod
    def parse_schedule(self, text: str, config: TrainConfig, name: str) -> list[float]:
        """The σ of an explicit schedule ``text`` (option ``name``), checked."""

    def schedule_info(self, config: TrainConfig, sigmas: list[float]) -> dict:
        """How the samples' record names the schedule."""
        return {"sigmas": sigmas}

    @abc.abstractmethod
    def bench_label(self, config: TrainConfig) -> str:
        """The label of the run's bench rows."""

    def sampler_sigma_min(self, config: TrainConfig) -> float:
        """ε of the re-noising √(σ² − ε²) between steps: the run's ``sigma_min``."""
        return config.sigma_min

    def teacher_run(self, config: TrainConfig) -> Path | None:
        """The edm run ``config.teacher`` (a member that trains without one in some modes
        says so)."""
        return Path(config.teacher)

    def configure(self, dataset: str, **overrides) -> TrainConfig:
        """The preset with ``overrides``; a run that uses no teacher (CT from nothing) records
        none, as its config.json will."""
        config = super().configure(dataset, **overrides)
        if self.teacher_run(config) is None:
            config.teacher = ""
        return config

    def load_teacher(self, config: TrainConfig, dataset):
        """The edm run ``config.teacher`` with its ``teacher_weights`` (EMA or raw), refusing one
        trained on other data than ``dataset`` (and, with :attr:`same_sigma_data`, another
        σ_data)."""
        path = Path(config.teacher)
        if not (path / "checkpoint.pt").exists():
            raise FileNotFoundError(
                f"no teacher checkpoint in {path}: train one first with "
                f"`zoo train edm --dataset {config.dataset}`, or pass --teacher RUN_DIR (an edm "
                "run)")
        teacher = plugins.get("methods", "edm").load(path, device=config.device,
                                                     ema=config.teacher_weights == "ema")
        check_teacher_data(teacher, dataset)
        if self.same_sigma_data and teacher.config.sigma_data != config.sigma_data:
            raise ValueError(f"sigma_data={config.sigma_data} differs from the teacher's "
                             f"{teacher.config.sigma_data}: {self.same_sigma_data}")
        return teacher

    def adopt_teacher(self, config: TrainConfig, teacher) -> dict:
        """Make the student the teacher's network: its architecture and classes (a conditional
        teacher makes a conditional student), the config's ``network_kwargs`` (e.g. the student's
        dropout) over the teacher's; returns the record of the teacher the run keeps."""
        config.network, config.num_classes = teacher.config.network, teacher.config.num_classes
        config.network_kwargs = {**teacher.config.network_kwargs, **config.network_kwargs}
        return {"path": str(teacher.path), "step": teacher.step,
                "checksum": teacher.dataset["checksum"]}

    def step_sigmas(self, config: TrainConfig, nfe: int, given: str | None = None) -> list[float]:
        """The σ of ``nfe`` steps: the explicit schedule ``given``, else the first ``nfe`` of the
        run's default schedule."""
        flag = "--" + self.schedule_option.replace("_", "-")
        if given:
            return self.parse_schedule(given, config, flag)
        sigmas = self.schedule(config)
        if nfe > len(sigmas):
            raise ValueError(f"this run has a default schedule for up to {len(sigmas)} steps; "
                             f"pass {flag} for NFE={nfe}")
        return sigmas[:nfe]

    def sample(self, run, n, *, seed=0, batch_size=256, nfe=1, device="cpu", progress=False,
               class_label=None, sampler="consistency", sampler_options=None,
               **schedule) -> Samples:
        """Algorithm 1 (``sampler`` consistency): f(σ_0·z, σ_0), then for each further σ
        re-noise with √(σ² − ε²) and apply f again (images clipped to [−1, 1] after every step
        where :attr:`clip_images`). The run's ε and the clipping are the defaults of a sampler
        taking ``sigma_min`` and ``clip``; ``sampler_options`` override them. ``schedule``:
        the explicit schedule, by :attr:`schedule_option` (``sigmas="80,0.8"``)."""
        given = schedule.pop(self.schedule_option, None)
        if schedule:
            raise TypeError(f"{self.name} sampling takes no {', '.join(sorted(schedule))}; "
                            f"its schedule option is {self.schedule_option}")
        c = run.config
        clip = (-1.0, 1.0) if self.clip_images and run.dataset["kind"] == "image" else None
        fn, opts = self.resolve_sampler(sampler, sampler_options,
                                        sigma_min=self.sampler_sigma_min(c), clip=clip)
        sigmas = self.step_sigmas(c, nfe, given)
        seeds = range(seed, seed + n)
        labels = draw_labels(seeds, c.num_classes, class_label)
        x, count = generate(run.denoiser, fn, sigmas, run.dataset["shape"], seeds, labels=labels,
                            batch_size=batch_size, device=device, progress=progress, **opts)
        mode = {"mode": c.mode} if hasattr(c, "mode") else {}
        info = {"method": self.name, **mode, "sampler": sampler, "nfe": count,
                **self.schedule_info(c, sigmas)}
        return Samples(x, count, info, labels)

    def bench_rows(self, run_dir) -> list[BenchRow]:
        """:meth:`bench_label` at the NFE of :attr:`bench_nfe` that the run's default schedule
        has steps for."""
        config = load_config(self.config_class, run_dir)
        steps = len(self.schedule(config))
        return [BenchRow(self.bench_label(config), k, Path(run_dir), {"nfe": k})
                for k in self.bench_nfe if k <= steps]


class FlowSampling(Method):
    """A model integrated from noise (t = 1) to data (t = 0) on a time grid by a registered
    sampler of its :attr:`parameterization`. Members implement :meth:`time_grid` and
    :meth:`bench_label`, and set :attr:`bench_nfe` and :attr:`default_nfe` where they depend on
    the run."""

    #: NFE of the bench rows
    bench_nfe: tuple[int, ...] = (1, 2)

    @abc.abstractmethod
    def time_grid(self, steps: int) -> list[float]:
        """The grid of ``steps`` steps the sampler walks, from 1 down to 0."""

    def default_nfe(self, config: TrainConfig) -> int:
        """The steps of ``zoo sample`` without ``--nfe``."""
        return 1

    @abc.abstractmethod
    def bench_label(self, config: TrainConfig) -> str:
        """The label of the run's bench rows."""

    def bench_steps(self, config: TrainConfig) -> tuple[int, ...]:
        return self.bench_nfe

    def sample(self, run, n, *, seed=0, batch_size=256, nfe=None, device="cpu", progress=False,
               class_label=None, sampler=None, sampler_options=None) -> Samples:
        """Sample ``seed + i`` from its noise over :meth:`time_grid` of ``nfe`` steps (default
        :meth:`default_nfe`) with ``sampler`` (default :attr:`default_sampler`)."""
        sampler = sampler or self.default_sampler
        fn, opts = self.resolve_sampler(sampler, sampler_options)
        steps = nfe or self.default_nfe(run.config)
        times = self.time_grid(steps)
        seeds = range(seed, seed + n)
        labels = draw_labels(seeds, run.config.num_classes, class_label)
        x, count = generate(run.denoiser, fn, times, run.dataset["shape"], seeds, labels=labels,
                            batch_size=batch_size, device=device, progress=progress, **opts)
        return Samples(x, count, {"method": self.name, "sampler": sampler, "steps": steps,
                                  "nfe": count, "times": times, **opts}, labels)

    def bench_rows(self, run_dir) -> list[BenchRow]:
        config = load_config(self.config_class, run_dir)
        return [BenchRow(self.bench_label(config), k, Path(run_dir), {"nfe": k})
                for k in self.bench_steps(config)]
