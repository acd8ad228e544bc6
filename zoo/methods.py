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

from zoo import plugins
from zoo.data import Dataset, dataset_sigma_data, load_dataset
from zoo.diffusion import Denoiser
from zoo.nets import build_network, count_parameters
from zoo.training import CheckpointError, Trainer, TrainingTask, load_checkpoint
from zoo.training.checkpoint import load_latest_checkpoint
from zoo.training.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    merge_overrides,
    resolve_paths,
    resume_config,
)
from zoo.training.trainer import dataset_record
from zoo.tuned import Tuned, check_tuned

DEFAULT_RUNS_ROOT = Path("runs")
SCALES = ("toy", "digits", "cifar10", "imagenet64", "lsun256")


def preset_scale(dataset: str, presets: dict | None = None) -> str:
    """The preset family of a dataset: ``toy`` (2D points, CPU minutes), ``digits`` (small images,
    CPU), ``cifar10``, ``imagenet64`` or ``lsun256`` (the papers' settings, GPU). A dataset loader
    declares it as its ``scale`` attribute; undeclared ones get the small-image presets. Given a
    method's ``presets`` (by scale), a scale it has none for is an error naming those it has."""
    from zoo.plugins import get

    scale = getattr(get("datasets", dataset), "scale", "digits")
    if scale not in SCALES:
        raise ValueError(
            f"dataset {dataset!r} declares scale {scale!r}; valid: {', '.join(SCALES)}"
        )
    if presets is not None and scale not in presets:
        raise ValueError(
            f"no training presets for dataset {dataset!r} (scale {scale}); this method has "
            f"presets for the scales {', '.join(presets)}. Import a released checkpoint "
            "(zoo import-openai, docs/reproduce.md) or train on another dataset"
        )
    return scale


def check_teacher_data(teacher: Run, dataset: Dataset) -> None:
    """Refuse a teacher run trained on other data than ``dataset`` (its checksum)."""
    if teacher.dataset["checksum"] != dataset.checksum:
        raise ValueError(
            f"teacher {teacher.path} was trained on other data ({teacher.dataset['name']}, "
            f"checksum {str(teacher.dataset['checksum'])[:12]}) than {dataset.name} (checksum "
            f"{dataset.checksum[:12]})")


def check_num_classes(config: TrainConfig, dataset: Dataset) -> None:
    """Refuse a class-conditional ``config`` whose ``num_classes`` is not ``dataset``'s."""
    if config.num_classes and config.num_classes != dataset.num_classes:
        has = (f"{dataset.num_classes} classes" if dataset.num_classes and
               dataset.labels is not None else "no class labels")
        raise ValueError(
            f"num_classes={config.num_classes} asks for a class-conditional model, but dataset "
            f"{dataset.name!r} has {has}; use num_classes="
            f"{dataset.num_classes if dataset.labels is not None else 0} (0: unconditional)"
        )


def draw_labels(seeds, num_classes: int, class_label: int | None = None):
    """One class label per seed for sampling a model of ``num_classes`` classes: ``class_label``
    for every sample when given, else drawn uniformly from the sample's own seed (a numpy
    ``SeedSequence`` stream ``[seed, 1]``, independent of its noise and of the batch), so every
    bench row and every batch size get the same labels. ``None`` for an unconditional model."""
    import numpy as np

    seeds = [int(s) for s in seeds]
    if not num_classes:
        if class_label is not None:
            raise ValueError(f"--class {class_label}: this run is unconditional (num_classes=0); "
                             "--class needs a class-conditional run")
        return None
    if class_label is not None:
        if not 0 <= class_label < num_classes:
            raise ValueError(f"--class {class_label} is out of range: this run has "
                             f"{num_classes} classes, 0..{num_classes - 1}")
        return torch.full((len(seeds),), class_label, dtype=torch.int64)
    return torch.tensor([int(np.random.default_rng([s, 1]).integers(num_classes))
                         for s in seeds], dtype=torch.int64)


@dataclass
class Samples:
    """Generated samples with what produced them: ``nfe`` per sample, ``info`` for the record,
    the class ``labels`` they were conditioned on (``None`` for an unconditional model)."""

    x: torch.Tensor
    nfe: int
    info: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None


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


def check_method(name: str, obj) -> None:
    """What registering a method needs: a :class:`Method` whose ``name`` is ``name`` (its runs
    go to runs/DATASET/NAME)."""
    if not isinstance(obj, Method):
        raise TypeError(f"method {name!r} is a {type(obj).__name__}, not a zoo.methods.Method "
                        "instance")
    if obj.name != name:
        raise ValueError(f"method {name!r} has name {obj.name!r}: a method's `name` attribute "
                         "must be the name it is registered under (its runs go to "
                         "runs/DATASET/NAME)")
    check_tuned(name, obj.tuned, obj.config_class)


def sampler_label(sampler: str, options: dict | None = None) -> str:
    """A sampler and its options as a row label shows them: ``edm-stochastic, S_churn=40``; a
    registered sampler that declares a ``display_name`` (``"DPM-Solver-2"``) shows that."""
    samplers = plugins.registry("samplers")
    if sampler in samplers:
        sampler = getattr(samplers.get(sampler), "display_name", None) or sampler
    return ", ".join([sampler, *(f"{k}={v}" for k, v in (options or {}).items())])


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
    #: the model output of this method's runs, what a sampler must consume (a registered
    #: sampler's ``parameterization``, :data:`zoo.diffusion.samplers.MODEL_KINDS`): "edm" (a
    #: diffusion denoiser D(x, σ)), "consistency" (f(x, σ)), "velocity", ...
    parameterization: str = "edm"
    #: the registered sampler :meth:`sample` runs unless ``sampler=`` names another of this
    #: parameterization (``zoo sample --sampler``, ``zoo bench --models METHOD:SAMPLER``); None:
    #: the method samples its own way and offers no choice
    default_sampler: str | None = None
    #: the settings ``zoo tune`` chose, by dataset and run name (:meth:`run_name`), applied over
    #: the preset by :meth:`configure`: ``{"digits": {"cm-cd": Tuned(...)}}``
    tuned: dict[str, dict[str, Tuned]] = {}

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
        """``n`` samples from a loaded run, sample i drawn from seed ``seed + i``; a
        class-conditional run takes ``class_label`` (see :func:`draw_labels`)."""

    def configure(self, dataset: str, **overrides) -> TrainConfig:
        """The preset for ``dataset`` with ``overrides`` applied, and its tuned settings
        (:meth:`with_tuned`) where ``overrides`` leave them; unknown settings are an error."""
        config = self.preset(dataset)
        names = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown {self.name} settings: {', '.join(unknown)}")
        config = dataclasses.replace(config, **merge_overrides(
            {k: getattr(config, k) for k in overrides}, overrides))
        config = self.with_tuned(config, overrides)
        config.validate()
        return config

    def with_tuned(self, config: TrainConfig, overrides=()) -> TrainConfig:
        """``config`` with the settings :attr:`tuned` holds for its dataset and run, but those
        given in ``overrides`` (:meth:`zoo.tuned.Tuned.apply`)."""
        found = self.tuned.get(config.dataset, {}).get(self.run_name(config))
        return config if found is None else found.apply(config, overrides)

    def run_name(self, config: TrainConfig) -> str:
        """Folder name of a run of this config under ``runs/<dataset>/``."""
        return self.name

    def default_run_dir(self, config: TrainConfig, root=DEFAULT_RUNS_ROOT) -> Path:
        """``ROOT/DATASET/RUN_NAME``; a dataset read from a folder (``dataset_options`` path) is
        named after the folder too (``runs/folder-flowers/edm``), so two folders' runs do not
        claim one directory."""
        path = config.dataset_options.get("path")
        data = f"{config.dataset}-{Path(path).name}" if isinstance(path, str) and path else \
            config.dataset
        return Path(root) / data / self.run_name(config)

    def bench_configs(self, dataset: str, runs_root=DEFAULT_RUNS_ROOT) -> dict[str, TrainConfig]:
        """The runs ``zoo bench`` needs, by run name (its folder under ``runs_root/dataset``);
        ``--train-missing`` trains the absent ones with these configs."""
        config = self.configure(dataset)
        return {self.run_name(config): config}

    def bench_rows(self, run_dir: Path) -> list[BenchRow]:
        """The table rows of one trained run: one per sampling setting (e.g. per NFE)."""
        return []

    def samplers(self) -> list[str]:
        """The registered samplers :meth:`sample` can run (``sampler=NAME``): those of this
        method's :attr:`parameterization`; none without a :attr:`default_sampler`."""
        from zoo.diffusion.samplers import sampler_names

        return sampler_names(self.parameterization) if self.default_sampler else []

    def resolve_sampler(self, sampler: str | None = None, sampler_options=None, **defaults):
        """``(fn, options)``: the registered ``sampler`` (default :attr:`default_sampler`) with
        ``sampler_options`` (a dict or JSON text) over the method's own ``defaults`` that the
        sampler takes; an unknown sampler, one for another kind of model, an option the sampler
        does not take or a value of the wrong type is a ``ValueError`` naming what is accepted
        (:func:`zoo.diffusion.samplers.resolve_sampler`)."""
        from zoo.diffusion.samplers import resolve_sampler

        if self.default_sampler is None:
            if sampler is None and not sampler_options:
                raise ValueError(f"method {self.name!r} has no registered sampler")
            raise ValueError(f"method {self.name!r} samples its own way and offers no sampler "
                             "choice (no default_sampler); drop the sampler and its options")
        return resolve_sampler(sampler or self.default_sampler, self.parameterization,
                               sampler_options, defaults)

    def sampler_rows(self, run_dir: Path, sampler: str, sampler_options=None) -> list[BenchRow]:
        """The table rows of one run sampled with the registered ``sampler`` and its options
        (``zoo bench --models METHOD:SAMPLER``). By default the settings of :meth:`bench_rows`
        with ``sampler`` and ``sampler_options`` added, labelled ``"LABEL [SAMPLER, OPTION=V]"``,
        each row's NFE counted on one sample of the run (another sampler may spend another
        number of evaluations on the same grid)."""
        _, options = self.resolve_sampler(sampler, sampler_options)
        label = sampler_label(sampler, options)
        run_rows, runs = [], {}
        for row in self.bench_rows(run_dir):
            settings = {**row.options, "sampler": sampler,
                        **({"sampler_options": options} if options else {})}
            if row.run_dir not in runs:
                runs[row.run_dir] = self.load(row.run_dir)
            nfe = self.sample(runs[row.run_dir], 1, **settings).nfe
            run_rows.append(BenchRow(f"{row.label} [{label}]", nfe, row.run_dir, settings))
        return run_rows

    def make_trainer(self, task: TrainingTask, config: TrainConfig, dataset, run_dir, *,
                     progress=True) -> Trainer:
        """The shared trainer for ``task``, sampling its grids and metrics through
        :meth:`sample` with this method's default options."""
        check_num_classes(config, dataset)
        record, run_dir = dataset_record(dataset), Path(run_dir)

        def sample_fn(module, n, *, step, device):
            return self.sample(Run(run_dir, config, module, record, step), n, device=device).x

        return Trainer(task, config, dataset, run_dir, progress=progress, sample_fn=sample_fn)

    def search_space(self, config) -> dict:
        """The settings ``zoo tune`` searches around ``config`` (the preset with the study's fixed
        settings, e.g. a mode), as name -> a range of :mod:`zoo.search_space`: by default the
        learning rate and the EMA (:func:`~zoo.search_space.learning_and_averaging`); a method
        adds the knobs its paper calls important."""
        from zoo.search_space import learning_and_averaging

        return learning_and_averaging(config)

    def tune_row(self, rows: list[BenchRow]) -> BenchRow:
        """The row ``zoo tune`` scores a trial on: by default the fewest steps (the few-step
        frontier's headline); a teacher overrides it with the row it is used at."""
        return min(rows, key=lambda r: r.nfe)

    def teacher_run(self, config: TrainConfig) -> Path | None:
        """The run a run of ``config`` trains from (a distillation teacher, the weights it
        starts from); None when it needs none."""
        return None

    def missing_assets(self, config: TrainConfig, dataset: Dataset | None = None, *,
                       planned=()) -> list[str]:
        """What a run of ``config`` needs that is not on this machine, each with where it goes,
        checked before anything is built or trained: its teacher run (unless among the run
        directories ``planned`` to be trained first), TensorBoard, and with the ``dataset``
        loaded, the Inception weights its ``eval_every_kimg`` measurements need. A method adds
        its own (CM: LPIPS's VGG16 weights)."""
        missing = []
        teacher = self.teacher_run(config)
        if teacher is not None and not (Path(teacher) / "checkpoint.pt").exists() and not any(
                Path(teacher).resolve() == Path(p).resolve() for p in planned):
            trains = (self.requires or (self.name,))[0]  # a reflow's teacher is a 1-RF run
            missing.append(f"the teacher run {teacher} has no checkpoint: train it first (zoo "
                           f"train {trains} --dataset {config.dataset} --run-dir {teacher}; zoo "
                           "bench --train-missing trains teachers first), or pass --teacher "
                           "RUN_DIR")
        if config.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                missing.append("--tensorboard needs the tensorboard package: pip install "
                               "tensorboard (or 'fewstep-zoo[tensorboard]'), or drop --tensorboard")
        if config.wandb_project:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                missing.append("--wandb-project needs the wandb package: pip install wandb, or "
                               "drop --wandb-project")
        if dataset is not None and config.eval_every_kimg:
            from zoo.metrics import default_metrics

            if "fid" in default_metrics(dataset):
                from zoo.metrics.fidelity import InceptionWeightsError, inception_weights

                try:
                    inception_weights()
                except InceptionWeightsError as exc:
                    missing.append(f"--eval-every-kimg measures FID: {exc}")
        return missing

    def check_assets(self, config: TrainConfig, dataset: Dataset | None = None) -> None:
        """Refuse a run whose :meth:`missing_assets` are not all present, naming every one."""
        missing = self.missing_assets(config, dataset)
        if missing:
            raise FileNotFoundError(f"{self.name} cannot start: " + "; ".join(missing))

    def _trainer(self, config: TrainConfig, run_dir, progress) -> Trainer:
        config.method = self.name
        self.check_assets(config)
        dataset = load_dataset(config.dataset, **config.dataset_options)
        self.check_assets(config, dataset)
        run_dir = Path(run_dir) if run_dir else self.default_run_dir(config)
        return self.make_trainer(self.make_task(config, dataset), config, dataset, run_dir,
                                 progress=progress)

    def train(
        self, config: TrainConfig, run_dir=None, *, resume=False, progress=True, on_step=None
    ):
        """Train ``config`` into ``run_dir`` with the shared trainer; returns the run directory.
        A new run records its paths absolute (:func:`~zoo.training.config.resolve_paths`)."""
        if not resume:
            resolve_paths(config)
        trainer = self._trainer(config, run_dir, progress)
        trainer.fit(resume=resume, on_step=on_step)
        return trainer.run_dir

    def total_iterations(self, config: TrainConfig) -> int:
        """The training steps a run of ``config`` takes in all (a staged method: every stage's);
        ``zoo bench --jobs`` starts the longest runs first."""
        return config.iterations

    def dry_run(self, config: TrainConfig, run_dir=None, *, steps: int = 0) -> dict:
        """What training ``config`` would do, writing nothing: the settings as given (a
        distillation run takes its network from its teacher when it starts), the run directory,
        the iterations and what is missing (:meth:`missing_assets`), without loading data.
        With ``steps`` > 0 it also builds the run as training would (data, teacher, network)
        and times ``steps`` real training steps on random data of the dataset's shape: the
        settings as resolved, the trained parameters, samples/s and the projected wall time of
        its ``iterations`` (training steps only: no checkpoints, grids or metrics)."""
        config.method = self.name
        report = {
            "run_dir": str(Path(run_dir) if run_dir else self.default_run_dir(config)),
            "config": config_to_dict(config),
            "iterations": self.total_iterations(config),
            "missing": self.missing_assets(config),
        }
        if steps <= 0:
            return report
        trainer = self._trainer(config, run_dir, progress=False)
        rate = trainer.throughput(steps)
        return {**report, "config": config_to_dict(config), "missing": [],
                "parameters": count_parameters(trainer.net), "device": str(trainer.device),
                "data_shape": list(trainer.dataset.shape), "samples_per_s": rate,
                "projected_s": report["iterations"] * config.batch_size / rate}

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
        config, changes, notes = resume_config(self.config_class, self.saved_config(run_dir),
                                               overrides or {})
        for note in notes:
            echo(f"note: {note}")
        for name, old, new in changes:
            echo(f"warning: resuming with {name}={new!r} instead of the run's {old!r}")
        return self.train(config, run_dir, resume=True, progress=progress, on_step=on_step)

    def build_net(self, config: TrainConfig, data_shape):
        """The raw network F chosen by ``config.network`` through the registry, conditional on
        ``config.num_classes`` classes, initialised from ``config.seed`` (whatever the global
        RNG state)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return build_network(
                config.network, tuple(data_shape), config.num_classes, **config.network_kwargs
            )

    def load(self, run_dir, *, device="cpu", ema: bool = True) -> Run:
        """Load a trained run (a run directory, or a checkpoint or snapshot file), its EMA weights
        (``ema``) or the raw trained ones, without running code from the file."""
        state = load_checkpoint(run_dir, map_location=device)
        if state["method"] != self.name:
            raise ValueError(f"{run_dir} is a {state['method']!r} run, not {self.name!r}")
        config = config_from_dict(self.config_class, state["config"])
        if not ema and "net" not in state:
            raise ValueError(f"{run_dir} holds the EMA weights only (a snapshot): use --weights "
                             "ema")
        denoiser = self.build_denoiser(config, state["dataset"]["shape"])
        denoiser.load_state_dict(state["ema" if ema else "net"])
        denoiser.to(device).eval().requires_grad_(False)
        return Run(Path(run_dir), config, denoiser, state["dataset"], state["step"], ema)

    def build_denoiser(self, config: TrainConfig, data_shape) -> Denoiser:
        """The network wrapped in this method's preconditioning (EDM's by default)."""
        return Denoiser(self.build_net(config, data_shape), "edm")


class ModalMethod(Method):
    """A method with modes (``modes``; the first is the default) whose ``presets`` hold, per
    dataset scale, ``"common"`` settings and each mode's; the teacher defaults to the dataset's
    edm run and σ_data to the dataset's."""

    modes: tuple[str, ...] = ()
    presets: dict = {}

    def preset(self, dataset: str, mode: str | None = None) -> TrainConfig:
        mode = mode or self.modes[0]
        if mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(self.modes)}")
        presets = self.presets[preset_scale(dataset, self.presets)]
        if mode not in presets:
            raise ValueError(f"no {mode} preset for dataset {dataset!r}; presets there: "
                             f"{', '.join(m for m in presets if m != 'common')}")
        config = self.config_class(method=self.name, dataset=dataset, mode=mode,
                                   teacher=str(DEFAULT_RUNS_ROOT / dataset / "edm"),
                                   sigma_data=dataset_sigma_data(dataset), **presets["common"])
        return config_from_dict(self.config_class, {**config_to_dict(config), **presets[mode]})

    def configure(self, dataset: str, **overrides) -> TrainConfig:
        """The preset of ``dataset`` for ``overrides["mode"]`` (default: the first mode), then
        the overrides and the tuned settings they leave (:meth:`Method.with_tuned`)."""
        preset = config_to_dict(self.preset(dataset, overrides.get("mode")))
        config = config_from_dict(self.config_class, merge_overrides(preset, overrides))
        config = self.with_tuned(config, overrides)
        config.validate()
        return config


plugins.add_object_check("methods", check_method)
