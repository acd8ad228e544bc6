"""Run configuration: a dataclass per method (a TrainConfig subclass) with presets per dataset."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from zoo.training.checkpoint import CheckpointError

_NO_LEGACY = object()


def setting(default, help: str, choices=None, legacy=_NO_LEGACY):
    """A config field with its help text (shown by ``zoo train METHOD --help``) and, for a
    closed set of values, its ``choices``: :meth:`TrainConfig.validate` refuses others and the
    CLI offers them as a ``click.Choice``. ``legacy``: the value that reproduces how runs saved
    before this setting existed were trained (when it differs from ``default``); such a run
    takes it on load instead of the default."""
    metadata = {"help": help, **({"choices": tuple(choices)} if choices is not None else {})}
    if legacy is not _NO_LEGACY:
        metadata["legacy"] = legacy
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Settings every method shares. Methods subclass it and add their own fields."""

    method: str = setting("", "Method name (set by the method).")
    dataset: str = setting("toy", "Registered dataset name.")
    dataset_options: dict = setting({}, 'Dataset options as JSON, e.g. \'{"path": "imgs/"}\'.')
    network: str = setting("mlp", "Registered network name.")
    network_kwargs: dict = setting(
        {}, "Network constructor options as JSON, merged key by key into the preset's (as "
        "`zoo bench --set` merges).")
    num_classes: int = setting(
        0, "Classes of a class-conditional model: the dataset's number (digits, cifar10: 10; "
        "imagenet64: 1000); 0 = unconditional.")
    batch_size: int = setting(512, "Global batch size (split across processes).")
    iterations: int = setting(10_000, "Training iterations.")
    optimizer: str = setting("adam", "adam or radam.", choices=("adam", "radam"))
    lr: float = setting(1e-3, "Peak learning rate.")
    adam_beta1: float = setting(0.9, "Adam β1.")
    adam_beta2: float = setting(0.999, "Adam β2.")
    weight_decay: float = setting(0.0, "Weight decay.")
    lr_warmup: int = setting(0, "Iterations of linear learning-rate warm-up.")
    lr_decay: str = setting("constant", "constant, or linear (to 0 at the last iteration).",
                            choices=("constant", "linear"))
    grad_clip: float = setting(0.0, "Max gradient norm; 0 = off.")
    ema_rate: float = setting(
        0.0, "Evaluation EMA rate per step; when > 0 it overrides --ema-halflife-kimg."
    )
    ema_halflife_kimg: float = setting(0.0, "Evaluation EMA half-life in thousands of samples.")
    ema_rampup: float = setting(
        0.05,
        "EMA ramp-up ratio (EDM's ema_rampup_ratio): the half-life is at most this fraction of "
        "the samples seen so far, so short runs have a usable EMA; 0 = off. Half-life form only.",
        legacy=0.0,
    )
    ema_num_updates: bool = setting(
        False,
        "Warm up a fixed --ema-rate as score_sde's EMA (use_num_updates): β = min(rate, "
        "(1+n)/(10+n)) at the n-th update, as rectified flow's official training does.",
    )
    snapshot_every_kimg: float = setting(
        0.0, "Keep the EMA weights in snapshots/ every this many thousand samples; 0 = off."
    )
    snapshot_keep: int = setting(0, "Snapshots to keep (the newest); 0 = all.")
    hflip: bool = setting(False, "Horizontal-flip augmentation (images).")
    batch_gpu: int = setting(
        0, "Samples per forward and backward pass on each process: the per-process batch is "
        "accumulated over passes of this size (EDM's --batch-gpu), with the same result as one "
        "pass; 0 = the whole per-process batch in one pass.")
    seed: int = setting(0, "Seed of data order, noise and initialisation.")
    checkpoint_every: int = setting(1000, "Write the checkpoint every this many iterations.")
    log_every: int = setting(100, "Log loss and throughput every this many iterations.")
    device: str = setting(
        "auto", "auto (CUDA where available, else the CPU; the run records which), cpu, cuda or "
        "cuda:N."
    )
    threads: int = setting(
        0,
        "torch intra-op CPU threads; 0 = automatic (1 for networks under 5M parameters, which "
        "collapse under CPU contention with more; else torch's default). ZOO_THREADS overrides 0.",
    )
    precision: str = setting(
        "fp32", "fp32; bf16 (autocast of the loss's forward passes); or fp16 (autocast with "
        "dynamic loss scaling, how openai's released checkpoints were trained).",
        choices=("fp32", "bf16", "fp16"))
    channels_last: bool = setting(False, "Channels-last memory format for 4D weights and inputs.")
    compile: bool = setting(False, "torch.compile the trained network (its online passes).")
    tf32: bool = setting(False, "Allow TF32 matmuls and convolutions on CUDA during training.")
    tensorboard: bool = setting(
        False, "Also write the log's scalars, sample grids and metrics to RUN_DIR/tensorboard "
        "(needs the tensorboard package: pip install tensorboard)."
    )
    wandb_project: str = setting(
        "", "Also log the log's scalars, sample grids and metrics to this Weights & Biases "
        "project (needs the wandb package: pip install wandb); a resumed run continues its W&B "
        "run. Empty: off.")
    sample_every_kimg: float = setting(
        0.0, "Write a grid of samples from fixed seeds with the EMA weights to "
        "RUN_DIR/samples/ every this many thousand samples; 0 = off."
    )
    sample_n: int = setting(0, "Samples in each grid; 0 = 64 images or 1000 points.")
    eval_every_kimg: float = setting(
        0.0, "Measure the dataset's default metrics (FID, FD-digits, W2) on samples of the EMA "
        "weights every this many thousand samples, into RUN_DIR/metrics.jsonl; 0 = off."
    )
    eval_n: int = setting(0, "Samples per measurement; 0 = 5000 for FID, else 2000 (W2, FD).")
    tuned: dict = setting(
        {}, "Set by the method, not an option: where the preset's tuned settings came from (the "
        "zoo tune study, trial, validation score and tuning cost) and the values the preset has "
        "as written; {} for a preset as written (zoo train --untuned).")

    #: Settings that define a run: a resumed run refuses to change them (its checkpoint, data
    #: order and noise were made with them). Methods extend this with their own.
    RESUME_FIXED: ClassVar[tuple[str, ...]] = (
        "method", "dataset", "dataset_options", "network", "network_kwargs", "num_classes",
        "batch_size", "seed", "optimizer",
    )

    def __post_init__(self) -> None:
        from zoo.distributed import resolve_device

        self.device = resolve_device(self.device)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check_type(f.name, getattr(self, f.name), f.type)
        for name in ("sigma_data", "p_std", "sigma_max"):  # σ-space settings of any method
            if hasattr(self, name) and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if hasattr(self, "sigma_min") and not 0 <= self.sigma_min < getattr(
                self, "sigma_max", math.inf):
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got sigma_min={self.sigma_min}"
                             + (f", sigma_max={self.sigma_max}" if hasattr(self, "sigma_max")
                                else ""))
        for f in dataclasses.fields(self):
            valid = f.metadata.get("choices")
            if valid is not None and getattr(self, f.name) not in valid:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} is not one of "
                                 f"{', '.join(valid)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {self.num_classes}")
        if self.batch_gpu and self.batch_size % self.batch_gpu:
            raise ValueError(f"batch_gpu={self.batch_gpu} must divide each process's share of "
                             f"batch_size={self.batch_size} (one process: batch_size itself)")
        positive = ("batch_size", "iterations", "checkpoint_every", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        non_negative = (
            "lr_warmup", "ema_halflife_kimg", "ema_rampup", "snapshot_every_kimg",
            "snapshot_keep", "threads", "grad_clip", "sample_every_kimg", "sample_n",
            "eval_every_kimg", "eval_n", "batch_gpu",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.ema_rate < 1:
            raise ValueError(f"ema_rate must be in [0, 1), got {self.ema_rate}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}


def check_type(name: str, value, annotation: str) -> None:
    """Refuse a setting of the wrong type (``--set iterations=abc``) or a non-finite number
    (``--lr inf``), naming the setting and what it takes."""
    expected = _TYPES.get(annotation if isinstance(annotation, str)
                          else getattr(annotation, "__name__", ""))
    if expected is None:
        return
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
                dict: "a JSON object"}[expected]
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def merge_overrides(settings: dict, overrides: dict) -> dict:
    """``settings`` with ``overrides`` applied, a dict value (``network_kwargs``,
    ``dataset_options``) merged key by key into the dict it replaces: the one rule of
    ``zoo train --network-kwargs``, ``zoo bench --set`` and resume overrides (giving one key never
    drops the preset's others, e.g. its dropout)."""
    out = dict(settings)
    for key, value in overrides.items():
        old = settings.get(key)
        out[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict, notes: list | None = None):
    """Rebuild a config, refusing keys the class does not know (an error, not a silent drop).

    A setting the saved ``data`` lacks (a run saved before the setting existed) takes its
    ``legacy`` value where it declares one (what that run was trained with), else its default;
    each is described in ``notes`` when a list is given."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    data = dict(data)
    for f in dataclasses.fields(cls):
        if f.name in data or not f.init:
            continue
        if "legacy" in f.metadata:
            data[f.name] = f.metadata["legacy"]
            why = "the value that reproduces how it was trained"
        else:
            why = "the default"
        if notes is not None:
            notes.append(f"the run predates the setting {f.name}: it takes {why}, "
                         f"{f.name}={data.get(f.name, f.default)!r}")
    return cls(**data)


def resume_config(cls, saved: dict, overrides: dict):
    """The config of a resumed run: its ``saved`` settings, with ``overrides`` (the settings the
    user passed) applied. Returns ``(config, changes, notes)``: ``changes`` a list of
    ``(name, saved value, new value)``, ``notes`` what settings the run predates took
    (:func:`config_from_dict`); changing a setting in ``cls.RESUME_FIXED`` is an error."""
    notes = []
    config = config_from_dict(cls, saved, notes)
    saved = {**saved, **config_to_dict(config)}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    overrides = merge_overrides({k: saved[k] for k in overrides if k in saved}, overrides)
    changes = [(k, saved.get(k), v) for k, v in overrides.items() if saved.get(k) != v]
    fixed = [c for c in changes if c[0] in cls.RESUME_FIXED and not same_setting(*c)]
    if fixed:
        detail = "; ".join(f"{k}: run has {old!r}, asked {new!r}" for k, old, new in fixed)
        raise ValueError(
            f"cannot change what defines a run when resuming ({detail}). Resume without those "
            "flags, or start a new run in another --run-dir"
        )
    config = dataclasses.replace(config, **{k: v for k, _, v in changes})
    config.validate()
    return config, changes, notes


#: Settings that are paths: a run records them absolute, so that it resumes from any directory.
PATH_SETTINGS = ("teacher",)


def resolve_paths(config) -> None:
    """Make a new run's paths absolute (its teacher, ``dataset_options["path"]``): the run then
    resumes, and its teacher is found, from any working directory."""
    for name in PATH_SETTINGS:
        if getattr(config, name, ""):
            setattr(config, name, str(Path(getattr(config, name)).expanduser().resolve()))
    path = config.dataset_options.get("path")
    if isinstance(path, str) and path:
        config.dataset_options = {**config.dataset_options,
                                  "path": str(Path(path).expanduser().resolve())}


def same_setting(name: str, a, b) -> bool:
    """Whether two values of a run-defining setting are the same: paths (and a dataset's
    ``path`` option, whose data the checksum identifies) compare as resolved paths from here,
    so a run saved with relative ones is the same run from its own directory; a moved dataset
    may be pointed to again (the checkpoint refuses other data by its checksum)."""
    if name in PATH_SETTINGS and isinstance(a, str) and isinstance(b, str) and a and b:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    if name == "dataset_options" and isinstance(a, dict) and isinstance(b, dict):
        return {k: v for k, v in a.items() if k != "path"} == \
            {k: v for k, v in b.items() if k != "path"}
    return a == b


def read_config(run_dir) -> dict | None:
    """The settings a run folder's ``config.json`` holds (written by :func:`save_config`), as a
    dict; None when the folder has none (nothing trained there yet)."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_config(cls, run_dir):
    """The settings of the run in ``run_dir`` as a ``cls`` config (:func:`read_config`);
    a CheckpointError naming the folder when it holds no run."""
    saved = read_config(run_dir)
    if saved is None:
        raise CheckpointError(f"{run_dir} holds no run: no config.json (a run's settings, written "
                              "when its training starts)")
    return config_from_dict(cls, saved)


def save_config(config, path: Path) -> None:
    """Write ``config.json`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
