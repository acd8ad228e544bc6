"""The method interface: what a plugin registers with ``register_methods``.

A :class:`Method` knows its config class and per-dataset presets, turns a config and a dataset
into a :class:`~zoo.training.TrainingTask` for the shared trainer, and samples from a trained
run directory.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo.data import Dataset, load_dataset
from zoo.diffusion import Denoiser
from zoo.nets import build_network, count_parameters
from zoo.training import CheckpointError, Trainer, TrainingTask, load_checkpoint
from zoo.training.checkpoint import load_latest_checkpoint
from zoo.training.config import TrainConfig, config_from_dict, config_to_dict, resume_config
from zoo.training.trainer import dataset_record

DEFAULT_RUNS_ROOT = Path("runs")
SCALES = ("toy", "digits", "cifar10")


def preset_scale(dataset: str) -> str:
    """The preset family of a dataset: ``toy`` (2D points, CPU minutes), ``digits`` (small images,
    CPU) or ``cifar10`` (the paper's settings, GPU). A dataset loader declares it as its ``scale``
    attribute; undeclared ones get the small-image presets."""
    from zoo.plugins import get

    scale = getattr(get("datasets", dataset), "scale", "digits")
    if scale not in SCALES:
        raise ValueError(
            f"dataset {dataset!r} declares scale {scale!r}; valid: {', '.join(SCALES)}"
        )
    return scale


@dataclass
class Samples:
    """Generated samples with what produced them: ``nfe`` per sample, ``info`` for the record."""

    x: torch.Tensor
    nfe: int
    info: dict = field(default_factory=dict)


@dataclass
class Run:
    """A trained run loaded for sampling: its config, the denoiser with its EMA (``ema``) or raw
    weights, and the dataset record."""

    path: Path
    config: TrainConfig
    denoiser: torch.nn.Module
    dataset: dict
    step: int
    ema: bool = True


@dataclass
class BenchRow:
    """One row of the NFE-versus-metric table: ``label`` (e.g. "CD (L2)"), its NFE, the run
    directory to load and the keyword options for :meth:`Method.sample`."""

    label: str
    nfe: int
    run_dir: Path
    options: dict = field(default_factory=dict)


class Method(abc.ABC):
    """Base class of a training method. Subclasses set ``name``, ``config_class`` and implement
    :meth:`preset`, :meth:`make_task` and :meth:`sample`."""

    name: str = ""
    description: str = ""
    config_class: type[TrainConfig] = TrainConfig
    #: extra ``click.Option`` objects that ``zoo sample NAME`` accepts, passed to :meth:`sample`
    sample_options: tuple = ()
    #: methods whose runs this method's runs need first (e.g. a distillation teacher)
    requires: tuple[str, ...] = ()

    @abc.abstractmethod
    def preset(self, dataset: str) -> TrainConfig:
        """The default configuration of this method for ``dataset``."""

    @abc.abstractmethod
    def make_task(self, config: TrainConfig, dataset: Dataset) -> TrainingTask:
        """The module to train and its loss."""

    @abc.abstractmethod
    def sample(
        self, run: Run, n: int, *, seed: int = 0, batch_size: int = 256, **options
    ) -> Samples:
        """``n`` samples from a loaded run, sample i drawn from seed ``seed + i``."""

    def configure(self, dataset: str, **overrides) -> TrainConfig:
        """The preset for ``dataset`` with ``overrides`` applied; unknown settings are an error."""
        config = self.preset(dataset)
        names = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown {self.name} settings: {', '.join(unknown)}")
        config = dataclasses.replace(config, **overrides)
        config.validate()
        return config

    def run_name(self, config: TrainConfig) -> str:
        """Folder name of a run of this config under ``runs/<dataset>/``."""
        return self.name

    def default_run_dir(self, config: TrainConfig, root=DEFAULT_RUNS_ROOT) -> Path:
        return Path(root) / config.dataset / self.run_name(config)

    def bench_configs(self, dataset: str, runs_root=DEFAULT_RUNS_ROOT) -> dict[str, TrainConfig]:
        """The runs ``zoo bench`` needs, by run name (its folder under ``runs_root/dataset``);
        ``--train-missing`` trains the absent ones with these configs."""
        config = self.configure(dataset)
        return {self.run_name(config): config}

    def bench_rows(self, run_dir: Path) -> list[BenchRow]:
        """The table rows of one trained run: one per sampling setting (e.g. per NFE)."""
        return []

    def make_trainer(self, task: TrainingTask, config: TrainConfig, dataset, run_dir, *,
                     progress=True) -> Trainer:
        """The shared trainer for ``task``, sampling its grids and metrics through
        :meth:`sample` with this method's default options."""
        record, run_dir = dataset_record(dataset), Path(run_dir)

        def sample_fn(module, n, *, step, device):
            return self.sample(Run(run_dir, config, module, record, step), n, device=device).x

        return Trainer(task, config, dataset, run_dir, progress=progress, sample_fn=sample_fn)

    def _trainer(self, config: TrainConfig, run_dir, progress) -> Trainer:
        config.method = self.name
        dataset = load_dataset(config.dataset, **config.dataset_options)
        run_dir = Path(run_dir) if run_dir else self.default_run_dir(config)
        return self.make_trainer(self.make_task(config, dataset), config, dataset, run_dir,
                                 progress=progress)

    def train(
        self, config: TrainConfig, run_dir=None, *, resume=False, progress=True, on_step=None
    ):
        """Train ``config`` into ``run_dir`` with the shared trainer; returns the run directory."""
        trainer = self._trainer(config, run_dir, progress)
        trainer.fit(resume=resume, on_step=on_step)
        return trainer.run_dir

    def dry_run(self, config: TrainConfig, run_dir=None, *, steps: int = 5) -> dict:
        """What training ``config`` would do, without writing anything: the settings the run
        would record, the trained parameters, the samples/s of ``steps`` real training steps on
        random data of the dataset's shape, and the projected wall time of all iterations
        (training steps only: no checkpoints, grids or metrics)."""
        trainer = self._trainer(config, run_dir, progress=False)
        rate = trainer.throughput(steps)
        return {
            "run_dir": str(trainer.run_dir),
            "config": config_to_dict(config),
            "parameters": count_parameters(trainer.net),
            "device": str(trainer.device),
            "data_shape": list(trainer.dataset.shape),
            "samples_per_s": rate,
            "projected_s": config.iterations * config.batch_size / rate,
        }

    def saved_config(self, run_dir) -> dict:
        """The settings a run was last checkpointed with (the truth when it is resumed)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise CheckpointError(f"--resume: there is no run at {run_dir} (no such directory)")
        try:
            state, _, _ = load_latest_checkpoint(run_dir)
        except CheckpointError as exc:
            raise CheckpointError(f"--resume: no run to continue in {run_dir}: {exc}") from None
        return state["config"]

    def resume(self, run_dir, overrides: dict | None = None, *, progress=True, on_step=None,
               echo=print):
        """Continue the run in ``run_dir`` with its own settings; ``overrides`` (the settings the
        user passed) replace them, each reported through ``echo``; changing one that defines the
        run (data, network, batch size, seed, method-specific ones) is an error."""
        config, changes = resume_config(self.config_class, self.saved_config(run_dir),
                                        overrides or {})
        for name, old, new in changes:
            echo(f"warning: resuming with {name}={new!r} instead of the run's {old!r}")
        return self.train(config, run_dir, resume=True, progress=progress, on_step=on_step)

    def build_net(self, config: TrainConfig, data_shape, num_classes: int = 0):
        """The raw network F chosen by ``config.network`` through the registry, initialised from
        ``config.seed`` (whatever the global RNG state)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return build_network(
                config.network, tuple(data_shape), num_classes, **config.network_kwargs
            )

    def load(self, run_dir, *, device="cpu", ema: bool = True) -> Run:
        """Load a trained run (a run directory, or a checkpoint or snapshot file), its EMA weights
        (``ema``) or the raw trained ones, without running code from the file."""
        state = load_checkpoint(run_dir, map_location=device)
        if state["method"] != self.name:
            raise ValueError(f"{run_dir} is a {state['method']!r} run, not {self.name!r}")
        config = config_from_dict(self.config_class, state["config"])
        if not ema and "net" not in state:
            raise ValueError(f"{run_dir} holds the EMA weights only (a snapshot): use --weights ema")
        denoiser = self.build_denoiser(config, state["dataset"]["shape"])
        denoiser.load_state_dict(state["ema" if ema else "net"])
        denoiser.to(device).eval().requires_grad_(False)
        return Run(Path(run_dir), config, denoiser, state["dataset"], state["step"], ema)

    def build_denoiser(self, config: TrainConfig, data_shape) -> Denoiser:
        """The network wrapped in this method's preconditioning (EDM's by default)."""
        return Denoiser(self.build_net(config, data_shape), "edm")
