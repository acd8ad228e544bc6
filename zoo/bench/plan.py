"""Planning a bench: the ``--models`` entries, the runs each method needs (requirements first),
which of them are missing or unfinished, the ``--set`` settings they train with, and the rows
the finished runs give, refused when a run was trained on other data."""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo import plugins
from zoo.bench.results import BenchError
from zoo.bench.train import train_runs
from zoo.data import Dataset, DatasetNotFoundError, load_dataset
from zoo.methods import BenchRow, Method
from zoo.training import CheckpointError, load_checkpoint
from zoo.training.checkpoint import CHECKPOINT_NAME
from zoo.training.config import merge_overrides, read_config
from zoo.training.cost import run_cost, run_tuning_cost
from zoo.tuned import untuned


@dataclass
class ModelEntry:
    """One ``--models`` entry: ``METHOD`` (the method's own rows, :meth:`Method.bench_rows`) or
    ``METHOD:SAMPLER`` (its rows with the registered ``sampler`` and ``options``,
    :meth:`Method.sampler_rows`)."""

    method: str
    sampler: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.method if self.sampler is None else f"{self.method}:{self.sampler}"


def parse_models(models: list[str], sampler_options: dict | None = None) -> list[ModelEntry]:
    """``--models`` entries ``METHOD[:SAMPLER]`` with ``--sampler-options`` by entry
    (``{"edm:edm-stochastic": {"S_churn": 40}}``, values dicts or JSON text), checked before
    anything is trained: an unknown method, a method without sampler choice, an unknown sampler,
    one for another kind of model, a bad option, or options for no ``METHOD:SAMPLER`` entry are
    errors naming what is accepted."""
    entries, seen = [], set()
    for item in models:
        method, _, sampler = (part.strip() for part in item.partition(":"))
        entry = ModelEntry(method, sampler or None)
        if entry.key in seen:
            raise BenchError(f"--models names {entry.key} twice")
        seen.add(entry.key)
        entries.append(entry)
    methods = resolve_methods([e.method for e in entries])
    options = dict(sampler_options or {})
    for entry in entries:
        if entry.sampler is None:
            continue
        method = methods[entry.method]
        if not method.default_sampler:
            raise BenchError(f"--models {entry.key}: method {entry.method} samples its own way "
                             "and offers no sampler choice; bench it as plain "
                             f"{entry.method}")
        try:
            _, entry.options = method.resolve_sampler(entry.sampler, options.pop(entry.key, None))
        except plugins.UnknownNameError as exc:
            raise BenchError(f"--models {entry.key}: {exc}; samplers for {entry.method}: "
                             f"{', '.join(method.samplers())}") from None
        except ValueError as exc:
            raise BenchError(f"--models {entry.key}: {exc}") from None
    if options:
        keys = [e.key for e in entries if e.sampler] or ["(none: no METHOD:SAMPLER in --models)"]
        raise BenchError(f"--sampler-options {', '.join(options)}: not a METHOD:SAMPLER entry of "
                         f"--models; entries: {', '.join(keys)}")
    return entries


def resolve_methods(models: list[str]) -> dict[str, Method]:
    """The registered methods named in ``models``; an unknown name lists the valid ones."""
    registry = plugins.registry("methods")
    unknown = [m for m in models if m not in registry]
    if unknown or not models:
        raise BenchError(f"unknown model(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"valid: {', '.join(registry.names())}")
    return {m: registry.get(m) for m in dict.fromkeys(models)}


def training_order(methods: dict[str, Method]) -> list[str]:
    """The methods and everything they require (``Method.requires``), requirements first."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join(path + (name,))
            raise BenchError(f"methods require each other in a cycle: {cycle}")
        if name in order:
            return
        if name not in methods and name not in plugins.registry("methods"):
            raise BenchError(f"{path[-1]} requires method {name!r}, which no plugin registers; "
                             f"registered: {', '.join(plugins.registry('methods').names())}")
        method = methods.get(name) or plugins.get("methods", name)
        for required in method.requires:
            visit(required, path + (name,))
        order.append(name)

    for name in methods:
        visit(name, ())
    return order


def _record(run_dir: Path) -> dict:
    state = load_checkpoint(run_dir)
    stat = (Path(run_dir) / CHECKPOINT_NAME).stat()
    return {"step": state["step"], "iterations": state["config"]["iterations"],
            "checksum": state["dataset"]["checksum"], "data": state["dataset"]["name"],
            "imported": "imported_from" in state,
            # which file was benched: a row is reused only for the same checkpoint file
            "stamp": f"{stat.st_size}-{stat.st_mtime_ns}"}


def run_problem(method: Method, run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be benched yet (missing, or a checkpoint short of its iterations);
    None when every checkpoint its rows load is complete (an imported run is complete)."""
    if not run_dir.exists():
        return "is missing"
    try:
        rows = method.bench_rows(run_dir)
    except (OSError, ValueError, KeyError, CheckpointError) as exc:
        return f"cannot be read ({type(exc).__name__}: {exc})"
    if not rows:
        return "has no trained model"
    for row_dir in dict.fromkeys(Path(r.run_dir) for r in rows):
        if not (row_dir / CHECKPOINT_NAME).exists():
            return f"lacks {row_dir / CHECKPOINT_NAME}"
        try:
            record = _record(row_dir)
        except CheckpointError as exc:
            return f"has an unreadable checkpoint ({exc})"
        if not record["imported"] and record["step"] < record["iterations"]:
            return f"stopped at step {record['step']} of {record['iterations']} ({row_dir})"
    return None


def _flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        else:
            flags.append(f"{flag} {shlex.quote(json.dumps(value))}" if isinstance(value, dict)
                         else f"{flag} {shlex.quote(str(value))}")
    return flags


def train_command(name: str, method: Method, config, dataset: str, run_dir: Path) -> str:
    """The ``zoo train`` command line that creates ``run_dir`` with ``config``."""
    mode = {"mode": config.mode} if hasattr(config, "mode") else {}
    preset = method.configure(dataset, **mode)  # the mode's own preset
    flags = []
    if preset.tuned and not config.tuned:  # the preset as written
        preset, flags = untuned(preset), ["--untuned"]
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name not in ("method", "dataset", "device", "tuned")
               and getattr(config, f.name) != getattr(preset, f.name)}
    if mode and config.mode != method.configure(dataset).mode:
        changed = {"mode": config.mode, **changed}  # the mode, then what differs from its preset
    return " ".join([f"zoo train {name} --dataset {dataset} --run-dir {run_dir}", *flags,
                     *_flags(changed)])


def resume_command(name: str, run_dir: Path, overrides: dict) -> str:
    """The ``zoo train`` command line that continues ``run_dir`` with ``overrides``."""
    return " ".join([f"zoo train {name} --run-dir {run_dir} --resume", *_flags(overrides)])


def parse_settings(items) -> dict[str | None, dict]:
    """``--set`` items ``[SCOPE.]KEY=VALUE`` by scope: none (every run), ``METHOD`` (its runs) or
    ``METHOD/RUN`` (one run, e.g. ``cm/cm-ct``). VALUE is read as JSON when it parses (``4``,
    ``0.5``, ``true``, ``{"model_channels": 16}``), else as text."""
    settings: dict[str | None, dict] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set takes [METHOD.]KEY=VALUE, e.g. iterations=4 or "
                             f"pd.teacher_steps=4; got {item!r}")
        method, _, key = key.strip().rpartition(".")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        settings.setdefault(method or None, {})[key] = value
    return settings


def scoped(settings: dict[str | None, dict], name: str, run: str | None = None) -> dict:
    """The ``--set`` settings of run ``run`` of method ``name``: those for every run, then the
    method's, then the run's (``METHOD/RUN``)."""
    return {**settings.get(None, {}), **settings.get(name, {}),
            **(settings.get(f"{name}/{run}", {}) if run else {})}


def apply_settings(name: str, config, settings: dict[str | None, dict], run: str | None = None):
    """``config`` with the ``--set`` settings for every method, then those for method ``name``,
    then those for its run ``run``; a dict value (e.g. ``network_kwargs``) is merged into the
    preset's dict."""
    wanted = scoped(settings, name, run)
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(wanted) - fields)
    if unknown:
        raise BenchError(f"--set {', '.join(unknown)}: method {name} has no such setting; "
                         f"scope it to the methods that have it (METHOD.KEY=VALUE). "
                         f"{name}'s settings: {', '.join(sorted(fields))}")
    config = dataclasses.replace(config, **merge_overrides(
        {k: getattr(config, k) for k in wanted}, wanted))
    config.validate()
    return config


def bench_data(dataset: str, methods: dict[str, Method], runs_root: Path, ref) -> Dataset:
    """The dataset, loaded; where its files are absent and a ``ref`` file is given, a stand-in
    built from the existing runs' records (name, shape, kind, checksum): released checkpoints are
    evaluated against a reference batch without the training set. The runs must agree on their
    data, and none can be trained from the stand-in."""
    try:
        return load_dataset(dataset)
    except DatasetNotFoundError as exc:
        if ref is None:
            raise DatasetNotFoundError(f"{exc}. Runs that exist (e.g. imported released "
                                       "checkpoints) are benched without it against a --ref "
                                       "file") from None
        reason = exc
    records = []
    for method in methods.values():
        for run_name in method.bench_configs(dataset, runs_root):
            path = Path(runs_root) / dataset / run_name / CHECKPOINT_NAME
            if path.exists():
                state = load_checkpoint(path.parent)
                records.append((path.parent, state["dataset"], state["config"]))
    if not records:
        raise DatasetNotFoundError(f"{reason}; and no run of {', '.join(methods)} exists under "
                                   f"{Path(runs_root) / dataset} to bench against --ref {ref}")
    seen = {(r["checksum"], tuple(r["shape"]), r["kind"]) for _, r, _ in records}
    if len(seen) > 1:
        raise BenchError(f"the runs under {Path(runs_root) / dataset} record different data "
                         f"({sorted(seen, key=str)}): without the dataset ({reason}) they "
                         "cannot be compared")
    _, record, config = records[0]
    shape = tuple(record["shape"])
    return Dataset(dataset, torch.empty(0, *shape), None, record["checksum"], record["kind"],
                   num_classes=config.get("num_classes", 0), data_range=(-1.0, 1.0))


def _provenance(tuned: dict) -> str:
    return (f"the settings of study {tuned['study']} trial {tuned['trial']}" if tuned else
            "the preset as written")


def check_same_preset(name: str, run_dir: Path, config, untuned_presets: bool) -> None:
    """Refuse a run trained from other presets than the bench's: one of the preset as written
    where the preset is tuned now, one of tuned settings under ``--untuned``, or one of another
    study's settings; its rows would carry the method's label with other settings than its
    preset's."""
    # the run's settings, or a staged run's first stage's (PD); none: nothing trained yet
    folders = [run_dir, *sorted(p.parent for p in run_dir.glob("*/config.json"))]
    saved = next((c for c in map(read_config, folders) if c is not None), None)
    if saved is None:
        return
    saved = saved.get("tuned", {})
    if _provenance(saved) == _provenance(config.tuned):
        return
    if untuned_presets:
        remedy = ("bench it without --untuned, or bench the presets as written under another "
                  "--runs-root")
    elif not saved:
        remedy = (f"bench the presets as written with --untuned, or move the run aside (mv "
                  f"{run_dir} {run_dir}.untuned) and pass --train-missing to train the tuned one")
    else:
        remedy = (f"move the run aside (mv {run_dir} {run_dir}.old) and pass --train-missing to "
                  "train the preset's")
    raise BenchError(f"{name} run {run_dir} was trained with {_provenance(saved)}, but the "
                     f"bench's {name} preset for {config.dataset} has "
                     f"{_provenance(config.tuned)} (docs/tuning.md): {remedy}")


def prepare_runs(methods: dict[str, Method], dataset: str, data: Dataset, runs_root: Path, *,
                 train_missing: bool, device: str, progress: bool, echo=print, settings=None,
                 entries: list[ModelEntry] | None = None, jobs: int = 1,
                 untuned_presets: bool = False):
    """Train (with ``train_missing``) or refuse absent runs, requirements first, and refuse runs
    on other data before anything is trained from them; runs to train take the ``--set``
    ``settings`` (:func:`parse_settings`) over their presets; a run without a config (a dataset
    without training presets, e.g. LSUN-256) must be imported. Up to ``jobs`` runs whose
    requirements are trained train at once (:func:`train_runs`). The presets are the tuned ones
    where a method holds them (:attr:`Method.tuned`), as written with ``untuned_presets``; a run
    trained from the other ones is refused (:func:`check_same_preset`). Returns the rows of the
    ``entries`` (default: each method's own rows) as ``[(entry, BenchRow)]``, a row that two
    entries give listed once, and each row's run record (step, checksum)."""
    entries = entries or [ModelEntry(name) for name in methods]
    order = training_order(methods)
    resolved = {name: methods.get(name) or plugins.get("methods", name) for name in order}
    # a requirement (a teacher) is needed only where a run that needs it is still to train:
    # finished or imported CM runs sample without their EDM teacher
    needed = set(methods)
    for name in reversed(order):
        if name in needed and any(
                run_problem(resolved[name], Path(runs_root) / dataset / run_name)
                for run_name in resolved[name].bench_configs(dataset, runs_root)):
            needed.update(resolved[name].requires)
    order = [name for name in order if name in needed]
    runs, missing = [], []
    for name in order:
        method = resolved[name]
        for run_name, config in method.bench_configs(dataset, runs_root).items():
            run_dir = Path(runs_root) / dataset / run_name
            runs.append((name, run_dir))
            if config is not None:
                config = untuned(config) if untuned_presets else config
                check_same_preset(name, run_dir, config, untuned_presets)
            problem = run_problem(method, run_dir)
            if problem and config is None:
                raise BenchError(f"{name} run {run_dir} {problem}, and dataset {dataset} has no "
                                 f"{name} training preset: import a released checkpoint there "
                                 "(zoo import-openai or zoo import-edm, docs/reproduce.md)")
            if problem:
                config = apply_settings(name, config, settings or {}, run_name)
                overrides = resume_overrides(method, run_dir, name, settings or {}, run_name)
                if overrides is None:
                    command, doing = train_command(name, method, config, dataset, run_dir), \
                        "training it"
                else:
                    command, doing = resume_command(name, run_dir, overrides), "continuing it"
                if not train_missing:
                    needed = "" if name in methods else f" (required by {', '.join(methods)})"
                    raise BenchError(f"{name} run {run_dir} {problem}{needed}. Create it with "
                                     f"`{command}`, or pass --train-missing")
                echo(f"{name}: {run_dir} {problem}; {doing}: {command}")
                config.device = device
                missing.append((name, run_dir, config, overrides))
            else:  # refused before anything is trained from it
                check_same_data(method.bench_rows(run_dir), dataset, data)
    planned = [run_dir for _, run_dir, _, _ in missing]
    absent = [f"{name} run {run_dir}: {problem}" for name, run_dir, config, _ in missing
              for problem in resolved[name].missing_assets(config, data, planned=planned)]
    if absent:  # found before anything is trained
        raise BenchError("cannot train the missing runs: " + "; ".join(absent))
    train_runs(resolved, missing, jobs=jobs, progress=progress, echo=echo)
    rows, records = [], {}
    for name, run_dir in runs:
        method = resolved[name]
        problem = run_problem(method, run_dir)
        if problem:
            raise BenchError(f"{name} run {run_dir} {problem} after training")
        records.update(check_same_data(method.bench_rows(run_dir), dataset, data))
        for entry in (e for e in entries if e.method == name):
            run_rows = (method.bench_rows(run_dir) if entry.sampler is None else
                        method.sampler_rows(run_dir, entry.sampler, entry.options))
            records.update(check_same_data(run_rows, dataset, data))
            rows += [(entry, row) for row in run_rows if not any(
                e.method == name and r == row for e, r in rows)]
    return rows, records


def resume_overrides(method: Method, run_dir: Path, name: str, settings: dict,
                     run: str | None = None) -> dict | None:
    """For an unfinished run, the ``--set`` settings that differ from its own (applied as
    resume overrides, warned about, and refused if they would change what defines the run);
    None for a run to train from nothing."""
    try:
        saved = method.saved_config(run_dir)
    except CheckpointError:
        return None
    wanted = merge_overrides({k: saved.get(k) for k in saved}, scoped(settings, name, run))
    overrides = {k: v for k, v in wanted.items() if saved.get(k) != v}
    config_class = method.config_class
    fixed = sorted(k for k in overrides if k in config_class.RESUME_FIXED)
    if fixed:
        raise BenchError(f"--set {', '.join(fixed)}: {run_dir} is an unfinished {name} run "
                         f"trained with {', '.join(f'{k}={saved.get(k)!r}' for k in fixed)}, "
                         "and these define a run. Drop them to continue it, or move it aside "
                         f"(mv {run_dir} {run_dir}.old) to train anew with them")
    return overrides


def check_same_data(rows: list[BenchRow], dataset: str, data: Dataset) -> dict[Path, dict]:
    """Refuse any row whose run was trained on data with another checksum than ``data``'s; a run
    imported without its data (checksum None) needs only the dataset's name."""
    records = {}
    for row in rows:
        run_dir = Path(row.run_dir)
        if run_dir not in records:
            records[run_dir] = record = {**_record(run_dir), "cost": run_cost(run_dir),
                                         "tuning": run_tuning_cost(run_dir)}
            unchecked = record["imported"] and record["checksum"] is None
            if unchecked and record["data"] != data.name:
                raise BenchError(f"run {run_dir} was imported for dataset {record['data']}, not "
                                 f"{dataset} ({data.name})")
            if not unchecked and record["checksum"] != data.checksum:
                raise BenchError(
                    f"run {run_dir} was trained on {record['data']} with checksum "
                    f"{record['checksum']}, but dataset {dataset} ({data.name}) has checksum "
                    f"{data.checksum}: "
                    "refusing to compare runs trained on different data. Retrain that run (move "
                    "it away and pass --train-missing).")
    return records


def sort_rows(rows, entries: list[str]):
    """Rows grouped by ``--models`` entry (in ``entries`` order; ``rows`` are ``(entry key or
    entry, BenchRow)``), then by label, NFE ascending."""
    labels = list(dict.fromkeys(row.label for _, row in rows))

    def key(item):
        entry, row = item
        return (entries.index(getattr(entry, "key", entry)), labels.index(row.label), row.nfe)

    return sorted(rows, key=key)
