"""``zoo bench``: the NFE-versus-metric table of several methods under identical conditions.

Every row draws the same ``n`` samples from the same seeds ``[seed, seed + n)`` and goes through
the same evaluator (:func:`zoo.metrics.evaluate`, the dataset's default metrics); runs trained
on other data than the dataset as it is now (checksums differ) are refused. Methods come from the
registry; each names the runs it needs (:meth:`~zoo.methods.Method.bench_configs`) and the rows
a run gives (:meth:`~zoo.methods.Method.bench_rows`). Every row carries its run's training cost
(:func:`zoo.training.cost.run_cost`: training images and network passes, its teachers'
included). Outputs: the table (terminal, Markdown, CSV, JSON), the primary metric against NFE
and against training cost as PNGs, one sample picture per row (its first samples) and every
row's samples (``samples/ROW.npz`` with the row's record; optional at 50,000 images per row), from
which :func:`rescore_bench` (``zoo bench --rescore``) recomputes the table with other metrics,
and, asked for, PNG folders for external evaluators (:mod:`zoo.sample_export`).

``--models`` entries are ``METHOD`` (the method's rows) or ``METHOD:SAMPLER`` (its rows with
another registered sampler of its kind of model, options from ``--sampler-options``); the same
method may appear with several samplers, and the sampler is part of the row's label.

Real image datasets follow the published FID protocol: FID-50k (50,000 samples, Heusel et al.
2017, as EDM and the CM paper report it) against the training set or a ``--ref`` file. Rows are
sampled batch by batch; each batch goes to the exports and the metrics' feature extractors,
which keep only features, so memory does not grow with n beyond the feature matrix; under
torchrun each rank samples and extracts its share of every batch.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import zoo
from zoo import distributed, plugins
from zoo import metrics as zoo_metrics
from zoo.data import Dataset, load_dataset
from zoo.methods import BenchRow, Method
from zoo.training import CheckpointError, load_checkpoint
from zoo.training.checkpoint import CHECKPOINT_NAME
from zoo.training.config import merge_overrides
from zoo.training.cost import forward_equivalents, run_cost
from zoo.viz import write_atomic

# Samples per row unless asked, by the dataset's default metric: points, five W2 sets of 2000
# (zoo.metrics.W2Metric); digits 2000; Inception FID on real images: the published FID-50k.
DEFAULT_N = {"w2": 10_000, "fdinf-digits": 2_000, "fd-digits": 2_000, "fid": 50_000}
PUBLISHED_N = DEFAULT_N["fid"]
#: Samples shown in each row's picture (the grid; a scatter plot shows every point).
PICTURE_N = 64


class BenchError(ValueError):
    """A bench that cannot run as asked: unknown or missing runs, or runs on other data."""


class BenchInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped a bench while its runs trained in child processes; each child
    checkpointed the step it reached and exited before the bench did."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name}: the bench stopped; its training "
                         "processes checkpointed and exited")
        self.exit_code = 128 + signum


@dataclass
class RowResult:
    """One measured row: the method, its row, the metrics, the sampling throughput and the
    training cost of its run (:func:`~zoo.training.cost.run_cost`; None where unrecorded)."""

    method: str
    row: BenchRow
    metrics: dict[str, float]
    samples_per_s: float
    checksum: str
    step: int
    samples_picture: str = ""
    weights: str = "ema"
    cost: dict | None = None
    sampler: str | None = None
    entry: str = ""
    samples_file: str = ""
    stamp: str = ""  # the run's checkpoint file as benched (size-mtime)


@dataclass
class BenchReport:
    dataset: str
    checksum: str
    n: int
    seed: int
    batch_size: int
    device: str
    results: list[RowResult] = field(default_factory=list)
    note: str = ""
    ref: str | None = None
    metric_names: list[str] | None = None  # the registered metrics that made the columns

    @property
    def result_names(self) -> list[str]:
        names: list[str] = []
        for r in self.results:
            names += [k for k in r.metrics if k not in names]
        return names


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
            flags.append(f"{flag} '{json.dumps(value)}'" if isinstance(value, dict)
                         else f"{flag} {value}")
    return flags


def train_command(name: str, method: Method, config, dataset: str, run_dir: Path) -> str:
    """The ``zoo train`` command line that creates ``run_dir`` with ``config``."""
    preset = method.preset(dataset)
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if f.name not in ("method", "dataset", "device")
               and getattr(config, f.name) != getattr(preset, f.name)}
    return " ".join([f"zoo train {name} --dataset {dataset} --run-dir {run_dir}",
                     *_flags(changed)])


def resume_command(name: str, run_dir: Path, overrides: dict) -> str:
    """The ``zoo train`` command line that continues ``run_dir`` with ``overrides``."""
    return " ".join([f"zoo train {name} --run-dir {run_dir} --resume", *_flags(overrides)])


def parse_settings(items) -> dict[str | None, dict]:
    """``--set`` items ``[METHOD.]KEY=VALUE`` by method (``None``: every method). VALUE is read
    as JSON when it parses (``4``, ``0.5``, ``true``, ``{"model_channels": 16}``), else as text."""
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


def apply_settings(name: str, config, settings: dict[str | None, dict]):
    """``config`` with the ``--set`` settings for every method, then those for method ``name``;
    a dict value (e.g. ``network_kwargs``) is merged into the preset's dict."""
    wanted = {**settings.get(None, {}), **settings.get(name, {})}
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


def prepare_runs(methods: dict[str, Method], dataset: str, data: Dataset, runs_root: Path, *,
                 train_missing: bool, device: str, progress: bool, echo=print, settings=None,
                 entries: list[ModelEntry] | None = None, jobs: int = 1):
    """Train (with ``train_missing``) or refuse absent runs, requirements first, and refuse runs
    on other data before anything is trained from them; runs to train take the ``--set``
    ``settings`` (:func:`parse_settings`) over their presets; a run without a config (a dataset
    without training presets, e.g. LSUN-256) must be imported. Up to ``jobs`` runs whose
    requirements are trained train at once (:func:`train_runs`). Returns the rows of the
    ``entries`` (default: each method's own rows) as ``[(entry, BenchRow)]``, a row that two
    entries give listed once, and each row's run record (step, checksum)."""
    entries = entries or [ModelEntry(name) for name in methods]
    order = training_order(methods)
    resolved = {name: methods.get(name) or plugins.get("methods", name) for name in order}
    runs, missing = [], []
    for name in order:
        method = resolved[name]
        for run_name, config in method.bench_configs(dataset, runs_root).items():
            run_dir = Path(runs_root) / dataset / run_name
            runs.append((name, run_dir))
            problem = run_problem(method, run_dir)
            if problem and config is None:
                raise BenchError(f"{name} run {run_dir} {problem}, and dataset {dataset} has no "
                                 f"{name} training preset: import a released checkpoint there "
                                 "(zoo import-openai or zoo import-edm, docs/reproduce.md)")
            if problem:
                config = apply_settings(name, config, settings or {})
                overrides = resume_overrides(method, run_dir, name, settings or {})
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


def resume_overrides(method: Method, run_dir: Path, name: str, settings: dict) -> dict | None:
    """For an unfinished run, the ``--set`` settings that differ from its own (applied as
    resume overrides, warned about, and refused if they would change what defines the run);
    None for a run to train from nothing."""
    try:
        saved = method.saved_config(run_dir)
    except CheckpointError:
        return None
    wanted = merge_overrides({k: saved.get(k) for k in saved},
                             {**settings.get(None, {}), **settings.get(name, {})})
    overrides = {k: v for k, v in wanted.items() if saved.get(k) != v}
    config_class = method.config_class
    fixed = sorted(k for k in overrides if k in config_class.RESUME_FIXED)
    if fixed:
        raise BenchError(f"--set {', '.join(fixed)}: {run_dir} is an unfinished {name} run "
                         f"trained with {', '.join(f'{k}={saved.get(k)!r}' for k in fixed)}, "
                         "and these define a run. Drop them to continue it, or move it aside "
                         f"(mv {run_dir} {run_dir}.old) to train anew with them")
    return overrides


def _train_one(method: Method, config, run_dir: Path, overrides: dict | None, *,
               progress: bool, echo) -> None:
    """Train one missing run; an unfinished one (``overrides`` not None) continues with its own
    settings and the ``--set`` ``overrides``."""
    if overrides is None:
        method.train(config, run_dir, progress=progress)
    else:
        method.resume(run_dir, {"device": config.device, **overrides}, progress=progress,
                      echo=echo)


def _train_child(method: Method, config, run_dir: Path, overrides: dict | None) -> None:
    """A spawned process's training (spawned, not forked: OpenMP and other threads' locks do
    not survive a fork); its error goes to stderr and its exit code to the parent. It leaves
    the terminal's process group: a Ctrl-C reaches the bench alone, which stops each child
    once (a second signal would make a trainer exit before its checkpoint)."""
    os.setpgid(0, 0)
    try:
        _train_one(method, config, run_dir, overrides, progress=False, echo=print)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def train_runs(methods: dict[str, Method], missing: list, *, jobs: int = 1, progress: bool,
               echo=print) -> None:
    """Train the ``missing`` runs ``[(method name, run_dir, config, resume overrides)]`` (given
    requirements
    first). ``jobs`` > 1 trains up to that many at once in spawned processes (one CPU thread
    each for small networks, zoo.training.threads), each as soon as every run of the methods it
    requires (``Method.requires``) and its own ``config.teacher`` run (e.g. 2-RF's 1-RF) are
    trained, the longest (``Method.total_iterations`` × batch) first; a run trains exactly as it
    would alone (its noise
    depends only on its seed and step). A failed run stops the others (they checkpoint on
    SIGTERM, so ``--train-missing`` continues them) and is an error naming its run."""
    if jobs <= 1 or len(missing) <= 1:
        for name, run_dir, config, overrides in missing:
            _train_one(methods[name], config, run_dir, overrides, progress=progress, echo=echo)
        return
    context = multiprocessing.get_context("spawn")
    # the longest first (training images), so that they do not end last
    waiting = sorted(missing, key=lambda job: -methods[job[0]].total_iterations(job[2])
                     * job[2].batch_size)
    running = {}
    pending = {job[0] for job in missing}

    def stop(signum, frame):  # the finally below stops the children: they checkpoint, then exit
        raise BenchInterrupted(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while waiting or running:
            for job in list(waiting):
                name, run_dir, config, overrides = job
                teacher = Path(getattr(config, "teacher", "") or "/").resolve()
                blocked = any(r in pending for r in methods[name].requires) or any(
                    Path(j[1]).resolve() == teacher for j in waiting + [
                        j for _, j in running.values()])
                if len(running) < jobs and not blocked:
                    process = context.Process(target=_train_child,
                                              args=(methods[name], config, run_dir, overrides))
                    process.start()
                    running[process.sentinel] = (process, job)
                    waiting.remove(job)
            if not running:
                raise BenchError(f"runs {[str(j[1]) for j in waiting]} wait on requirements "
                                 "that no run trains")
            for sentinel in multiprocessing.connection.wait(list(running)):
                process, (name, run_dir, _, _) = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:
                    raise BenchError(f"training {name} run {run_dir} failed (exit "
                                     f"{process.exitcode}; its error is printed above)")
                echo(f"{name}: {run_dir} trained")
                if not any(j[0] == name for j in waiting) and not any(
                        j[0] == name for _, j in running.values()):
                    pending.discard(name)
    finally:
        for process, _ in running.values():
            process.terminate()  # SIGTERM: the trainer checkpoints the step it reached
        for process, _ in running.values():
            process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_same_data(rows: list[BenchRow], dataset: str, data: Dataset) -> dict[Path, dict]:
    """Refuse any row whose run was trained on data with another checksum than ``data``'s; a run
    imported without its data (checksum None) needs only the dataset's name."""
    records = {}
    for row in rows:
        run_dir = Path(row.run_dir)
        if run_dir not in records:
            records[run_dir] = record = {**_record(run_dir), "cost": run_cost(run_dir)}
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


def default_n(data: Dataset) -> int:
    """Samples per row unless ``--n`` says: :data:`DEFAULT_N` of the dataset's default metric."""
    return DEFAULT_N[zoo_metrics.default_metrics(data)[0]]


def protocol_note(data: Dataset, n: int) -> str:
    """The table's warning when a real image dataset is benched with other than FID-50k."""
    if zoo_metrics.default_metrics(data)[0] != "fid" or n == PUBLISHED_N:
        return ""
    size = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"FID-{size}, not comparable to published FID-{PUBLISHED_N // 1000}k"


#: ``--save-samples`` choices: ``auto`` saves every row's samples (``samples/ROW.npz``) unless
#: the row is a real-image bench of the published size (50,000 images per row), the others as
#: :data:`zoo.sample_export.FORMATS` (``npz``: always, ``png``: the PNG folder only).
SAVE_SAMPLES = ("auto", "none", "png", "npz", "both")


def export_formats(save_samples: str, data: Dataset, n: int) -> str:
    """The :data:`zoo.sample_export.FORMATS` entry that ``--save-samples`` means for ``n``
    samples per row of ``data``: ``auto`` is ``npz`` for points and for image benches of fewer
    than :data:`PUBLISHED_N` samples, else ``none``; PNGs are for images only."""
    if save_samples not in SAVE_SAMPLES:
        raise BenchError(f"--save-samples {save_samples!r}: accepted: {', '.join(SAVE_SAMPLES)}")
    if save_samples == "auto":
        return "npz" if data.kind != "image" or n < PUBLISHED_N else "none"
    if save_samples in ("png", "both") and data.kind != "image":
        raise BenchError(f"--save-samples {save_samples} writes images; dataset {data.name} "
                         f"holds {data.kind} (npz keeps them)")
    return save_samples


def run_bench(models: list[str], dataset: str, *, runs_root="runs", train_missing=False,
              n=None, seed=0, batch_size=500, out=None, device="cpu", inception_weights=None,
              progress=True, echo=print, weights="ema", settings=None,
              metrics=None, ref=None, save_samples="auto", sampler_options=None,
              jobs=1) -> BenchReport:
    """Prepare the runs of the ``models`` entries (``METHOD`` or ``METHOD:SAMPLER``,
    :func:`parse_models`, with ``sampler_options`` by entry), training missing ones with
    ``settings`` (:func:`prepare_runs`), sample and evaluate every row with the runs'
    ``weights`` (``"ema"`` or ``"raw"``) through the registered ``metrics`` (default: the
    dataset's, :func:`zoo.metrics.default_metrics`; feature spaces against ``ref``, a reference
    file, when given), and write the outputs into ``out`` (default ``bench/<dataset>``; rank 0
    alone under torchrun, except the PNG exports); ``n`` defaults by the dataset's metric
    (:func:`default_n`); ``save_samples`` (:data:`SAVE_SAMPLES`, :func:`export_formats`) keeps
    every row's samples for :func:`rescore_bench` and external evaluators. Returns the
    report."""
    entries = parse_models(models, sampler_options)
    methods = resolve_methods([e.method for e in entries])
    data = load_dataset(dataset)
    n = default_n(data) if n is None else n
    if n < 2:
        raise BenchError(f"--n must be >= 2, got {n}")
    formats = export_formats(save_samples, data, n)
    if inception_weights:
        from zoo.metrics import fidelity

        os.environ[fidelity.INCEPTION_ENV] = str(fidelity.inception_weights(inception_weights))
    # everything the bench will need is checked before any training: the metrics and their
    # weights, the output folder (writable, not another bench's, not in use)
    evaluation = zoo_metrics.Evaluation(data, metrics, seed=seed, batch_size=batch_size,
                                        ref=ref, distributed=True)
    out = Path(out) if out else Path("bench") / dataset
    metric_names = [name for name, _ in evaluation.metrics]
    lock = earlier = None
    if distributed.is_main():
        lock = lock_output(out)
    try:
        earlier = previous_rows(out, data, n, seed, ref, metric_names) if lock else []
        rows, records = prepare_runs(methods, dataset, data, Path(runs_root),
                                     train_missing=train_missing, device=device,
                                     progress=progress, echo=echo, settings=settings,
                                     entries=entries, jobs=jobs)
        report = BenchReport(dataset, data.checksum, n, seed, batch_size, device,
                             note=protocol_note(data, n), ref=str(ref) if ref else None,
                             metric_names=metric_names)
        planned = sort_rows(rows, [e.key for e in entries])
        measured = {(entry.key, row.label, row.nfe) for entry, row in planned}
        kept = [r for r in earlier if (r.entry, r.row.label, r.row.nfe) not in measured]
        # under torchrun every rank samples every row: rank 0 alone knows the earlier table
        reusable = {} if distributed.world_size() > 1 else {
            (r.entry, r.row.label, r.row.nfe): r for r in earlier}
        for entry, row in tqdm(planned, desc=f"bench {dataset}", disable=not progress,
                               dynamic_ncols=True):
            record = records[Path(row.run_dir)]
            done = reusable.get((entry.key, row.label, row.nfe))
            if done is not None and same_row(done, row, record, weights, out):
                echo(f"{row.label} (NFE {row.nfe}): reusing the finished row in {out}")
                report.results.append(done)
                continue
            try:
                report.results.append(measure_row(
                    methods[entry.method], entry, row, record, data, n, seed=seed,
                    batch_size=batch_size, device=device, weights=weights,
                    evaluation=evaluation, formats=formats, out=out, progress=progress))
            except Exception as exc:
                if distributed.is_main() and (report.results or kept):
                    partial = dataclasses.replace(report, results=report.results + kept)
                    write_outputs(partial, out, complete=False)
                    where = (f"the {len(partial.results)} finished rows are in {out}/table.md; "
                             "the same command continues from them")
                else:
                    where = "no row had finished"
                raise BenchError(f"{row_failure(methods[entry.method], row, exc)} ({where})"
                                 ) from exc
        if kept:
            echo(f"{out}: kept {len(kept)} rows of the earlier bench there (the same data, n, "
                 f"seeds and metrics): {', '.join(sorted({r.row.label for r in kept}))}")
        report.results += kept
        if distributed.is_main():
            write_outputs(report, out)
        return report
    finally:
        if lock is not None:
            lock.release()


def lock_output(out: Path):
    """Hold ``out`` for this bench: a second bench into the same folder is refused while this
    one runs (``RunLock``); an unwritable folder is refused before any work."""
    from zoo.training.rundir import RunLock, RunLockedError

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return RunLock(out).acquire()
    except RunLockedError as exc:
        raise BenchError(str(exc).replace("--run-dir", "--out")) from None
    except OSError as exc:
        raise BenchError(f"--out {out} cannot be written ({exc.strerror or exc}): choose a "
                         "writable folder") from None


def previous_rows(out: Path, data: Dataset, n: int, seed: int, ref, metric_names) -> list:
    """The rows of an earlier bench in ``out`` that this one may keep: [] when there is none;
    refused (:class:`BenchError`) when it measured other data, n, seeds, reference or metrics,
    whose rows cannot share one table."""
    table = out / "table.json"
    if not table.exists():
        return []
    try:
        record = json.loads(table.read_text())
        theirs = {"dataset checksum": record["dataset_checksum"], "n": record["n"],
                  "first seed": record["seeds"][0], "reference": record["reference"],
                  "metrics": record.get("metric_names")}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise BenchError(f"{table} is not a readable bench table ({type(exc).__name__}: {exc}); "
                         f"move {out} aside or choose another --out") from None
    ours = {"dataset checksum": data.checksum, "n": n, "first seed": seed,
            "reference": str(ref) if ref else "dataset", "metrics": metric_names}
    differ = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
    if differ:
        detail = "; ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise BenchError(f"--out {out} holds another bench's results ({detail}): its rows "
                         f"cannot share a table with this one. Choose another --out, or move "
                         f"it aside (mv {out} {out}.old)")
    return [row_result_from_record(r) for r in record["rows"]]


def same_row(done: RowResult, row: BenchRow, record: dict, weights: str, out: Path) -> bool:
    """Whether an earlier bench's finished row measured exactly this row: the same checkpoint
    file, settings and weights, its samples file still there."""
    return (done.checksum == record["checksum"] and done.step == record["step"]
            and done.stamp == record["stamp"] and done.weights == weights
            and done.row.options == row.options and Path(done.row.run_dir) == Path(row.run_dir)
            and (not done.samples_file or (out / done.samples_file).exists()))


def row_failure(method: Method, row: BenchRow, exc: BaseException) -> str:
    """One line naming the row, its method and sampler with their plugins, and the error."""
    source = plugins.registry("methods").source(method.name)
    sampler = row.options.get("sampler") or method.default_sampler
    by = ""
    if sampler and sampler in plugins.registry("samplers"):
        by = f" with sampler {sampler!r} ({plugins.registry('samplers').source(sampler)})"
    return (f"row {row.label!r} (NFE {row.nfe}) of method {method.name!r} ({source}) failed"
            f"{by}: {type(exc).__name__}: {exc}")


def measure_row(method: Method, entry, row: BenchRow, record: dict, data: Dataset, n: int, *,
                seed: int, batch_size: int, device: str, weights: str, evaluation, formats: str,
                out: Path, progress: bool) -> RowResult:
    """Sample and score one row (:func:`bench_row`) and save its picture."""
    run = method.load(row.run_dir, device=device, ema=weights == "ema")
    method.sample(run, 1, seed=seed, batch_size=1, device=device, **row.options)  # warm-up
    result = RowResult(entry.method, row, {}, 0.0, record["checksum"], record["step"],
                       weights=weights, cost=record["cost"], entry=entry.key,
                       stamp=record["stamp"])
    picture = bench_row(method, run, result, data, n, seed=seed, batch_size=batch_size,
                        device=device, evaluation=evaluation, formats=formats,
                        stem=out / "samples" / row_stem(row), progress=progress)
    result.metrics = evaluation.result()
    if distributed.is_main():
        result.samples_picture = str(save_row_samples(result, picture, data, out))
    return result


def row_result_from_record(saved: dict, metrics: dict | None = None) -> RowResult:
    """A row of a ``table.json`` as a :class:`RowResult` (``metrics`` replaces its own)."""
    row = BenchRow(saved["label"], saved["nfe"], Path(saved["run_dir"]), saved["options"])
    cost = saved["training_cost"]
    return RowResult(
        saved["method"], row, saved["metrics"] if metrics is None else metrics,
        saved["samples_per_s"], saved["run_checksum"], saved["run_step"],
        saved["samples_picture"], saved["weights"],
        None if cost is None else {k: v for k, v in cost.items() if k != "forward_equivalents"},
        saved.get("sampler"), saved.get("entry", saved["method"]), saved["samples_file"],
        saved.get("run_stamp", ""))


def row_info(result: RowResult, data: Dataset, n: int, seed: int) -> dict:
    """What a row's samples file records: the data, the seeds, the row and its run."""
    row = result.row
    return {"dataset": data.name, "dataset_checksum": data.checksum, "kind": data.kind,
            "data_range": list(data.data_range or (-1.0, 1.0)), "n": n,
            "seeds": [seed, seed + n - 1], "method": result.method, "entry": result.entry,
            "label": row.label, "nfe": row.nfe, "sampler": result.sampler,
            "options": row.options, "run_dir": str(row.run_dir),
            "run_checksum": result.checksum, "run_step": result.step,
            "weights": result.weights, "zoo_version": zoo.__version__}


def bench_row(method: Method, run, result: RowResult, data: Dataset, n: int, *, seed: int,
              batch_size: int, device: str, evaluation, formats: str, stem: Path,
              progress: bool = False):
    """Sample one row's ``n`` samples in steps of ``batch_size`` per rank, each step fed to
    ``evaluation`` (reset first) and the sample files (``formats``, :func:`export_formats`:
    ``STEM.npz`` with the row's :func:`row_info`, the PNG folder ``STEM/``); set the result's
    sampler, sampling rate (samples/s, sampling only) and samples file, and return the first
    samples (the picture: :data:`PICTURE_N` images, or every point). Sample i comes from seed
    ``seed + i`` whatever the steps, so the samples equal one call's."""
    from zoo.metrics.fidelity import to_uint8
    from zoo.sample_export import NpzWriter, SampleExport

    row = result.row
    evaluation.reset()
    keep = PICTURE_N if data.kind == "image" else n
    picture, elapsed = [], 0.0
    export = None
    if data.kind == "image" and formats != "none":
        export = SampleExport(stem, n, data.shape, formats, npz=distributed.is_main())
        distributed.barrier()  # rank 0 has emptied the PNG folder
    elif formats == "npz" and distributed.is_main():
        export = NpzWriter(stem.with_suffix(".npz"), n, data.shape, np.float32)
    step = batch_size * distributed.world_size()
    try:
        for start in tqdm(range(0, n, step), desc=row.label, leave=False,
                          disable=not progress or not distributed.is_main(), dynamic_ncols=True):
            count = min(step, n - start)
            began = time.perf_counter()
            samples = method.sample(run, count, seed=seed + start, batch_size=batch_size,
                                    device=device, **row.options)
            elapsed += time.perf_counter() - began
            if samples.nfe != row.nfe:
                raise BenchError(f"{method.name} row {row.label!r} promises NFE {row.nfe} but its "
                                 f"sampler used {samples.nfe}")
            bad = int((~torch.isfinite(samples.x.flatten(1))).any(1).sum())
            if bad:
                raise BenchError(f"{bad} of {len(samples.x)} samples (seeds {seed + start}.."
                                 f"{seed + start + count - 1}) are not finite (NaN or inf): a "
                                 "non-finite sample never enters a table")
            result.sampler = samples.info.get("sampler")
            evaluation.add(samples.x)
            if sum(map(len, picture)) < keep:
                picture.append(samples.x[: keep - sum(map(len, picture))].cpu())
            if isinstance(export, SampleExport):
                u8 = to_uint8(samples.x.float().cpu(), data.data_range or (-1.0, 1.0))
                export.add_npz(u8, samples.labels)
                mine = distributed.shard(list(range(count)))
                export.add_png(u8[mine], [start + i for i in mine])
            elif export is not None:
                export.add(samples.x.float().cpu().numpy(), samples.labels)
    except BaseException:
        if export is not None:
            export.abort()
        raise
    result.samples_per_s = n / elapsed
    if export is not None:
        info = {"info": np.array(json.dumps(row_info(result, data, n, seed)))}
        export.close(info)
        if formats in ("npz", "both"):
            result.samples_file = f"samples/{row_stem(row)}.npz"
    if data.kind == "image" and formats != "none":
        distributed.barrier()
    return torch.cat(picture)


def check_npz_sizes(path: Path, limit: int) -> None:
    """Refuse an ``.npz`` whose arrays declare more than ``limit`` bytes in all, from their npy
    headers alone, before anything is decompressed (a small file can declare gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = 0
            for info in archive.infolist():
                with archive.open(info) as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if major == 1
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise BenchError(f"{path} is not a complete bench samples file ({type(exc).__name__}: "
                         f"{exc}); rerun the bench to write it again") from None
    if total > limit:
        raise BenchError(f"{path} declares {total / 2**30:.1f} GiB of arrays, more than the "
                         f"{limit / 2**30:.0f} GiB a bench's samples take; not read")


def read_row_samples(path: Path, data: Dataset):
    """``(samples, info)`` from a row's samples file (:func:`bench_row`): float samples in the
    data's range (images from their saved uint8 values, the values the feature-space metrics
    see) and the row record."""
    check_npz_sizes(path, limit=4 * 2**30)
    try:
        with np.load(path, allow_pickle=False) as saved:
            info = json.loads(str(saved["info"]))
            x = torch.from_numpy(saved["arr_0"])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise BenchError(f"{path} is not a complete bench samples file ({type(exc).__name__}: "
                         f"{exc}); rerun the bench to write it again") from None
    if info["kind"] == "image":
        lo, hi = info["data_range"]
        x = x.permute(0, 3, 1, 2).float() * ((hi - lo) / 255) + lo
    return x, info


def rescore_bench(dataset: str, *, out=None, metrics=None, n=None, seed=None, batch_size=500,
                  ref=None, inception_weights=None, progress=True) -> BenchReport:
    """The table of the bench in ``out`` (default ``bench/<dataset>``) recomputed from its rows'
    saved samples with the registered ``metrics`` (default: the dataset's), without loading a
    model or sampling: sampling rates, training costs and pictures are the bench's. Refuses a
    bench of other data (dataset name or checksum), ``n`` or ``seed`` other than the bench's,
    and rows whose samples file is missing or records another row, data, n or seeds."""
    out = Path(out) if out else Path("bench") / dataset
    table = out / "table.json"
    if not table.exists():
        raise BenchError(f"--rescore: no bench table {table}; run zoo bench --out {out} first "
                         "(it keeps every row's samples)")
    try:
        record = json.loads(table.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"--rescore: {table} is not a readable bench table ({exc})") from None
    data = load_dataset(dataset)
    first = record["seeds"][0]
    if (record["dataset"], record["dataset_checksum"]) != (dataset, data.checksum):
        raise BenchError(f"--rescore: {table} is a bench of {record['dataset']} (checksum "
                         f"{record['dataset_checksum']}), not of dataset {dataset} as it is now "
                         f"(checksum {data.checksum})")
    for name, asked, made in (("--n", n, record["n"]), ("--seed", seed, first)):
        if asked is not None and asked != made:
            raise BenchError(f"--rescore {name} {asked}: the saved samples were made with "
                             f"{name} {made}; rescoring cannot change the samples (rerun zoo "
                             "bench for new ones)")
    if inception_weights:
        from zoo.metrics import fidelity

        os.environ[fidelity.INCEPTION_ENV] = str(fidelity.inception_weights(inception_weights))
    evaluation = zoo_metrics.Evaluation(data, metrics, seed=first, batch_size=batch_size,
                                        ref=ref)
    report = BenchReport(dataset, data.checksum, record["n"], first, batch_size, record["device"],
                         note=protocol_note(data, record["n"]), ref=str(ref) if ref else None,
                         metric_names=[name for name, _ in evaluation.metrics])
    for saved in tqdm(record["rows"], desc=f"rescore {dataset}", disable=not progress):
        row = BenchRow(saved["label"], saved["nfe"], Path(saved["run_dir"]), saved["options"])
        path = out / saved["samples_file"] if saved.get("samples_file") else None
        if path is None or not path.exists():
            raise BenchError(f"--rescore: row {row.label!r} (NFE {row.nfe}) has no saved samples "
                             f"({path or 'none recorded'}): the bench ran with --save-samples "
                             "none or png, or auto at 50,000 images; rerun it with "
                             "--save-samples npz")
        x, info = read_row_samples(path, data)
        expected = {"dataset_checksum": data.checksum, "n": record["n"],
                    "seeds": record["seeds"], "label": row.label, "nfe": row.nfe,
                    "run_checksum": saved["run_checksum"]}
        wrong = {k: info.get(k) for k, v in expected.items() if info.get(k) != v}
        if wrong or len(x) != record["n"]:
            raise BenchError(f"--rescore: {path} holds other samples than row {row.label!r} "
                             f"(NFE {row.nfe}) of {table}: {wrong or {'samples': len(x)}} "
                             f"where the table has {({k: expected[k] for k in wrong})}")
        evaluation.reset()
        for start in range(0, len(x), batch_size):
            evaluation.add(x[start:start + batch_size])
        report.results.append(row_result_from_record(saved, evaluation.result()))
    write_outputs(report, out)
    return report


# ---------------------------------------------------------------- outputs

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def row_stem(row: BenchRow) -> str:
    """A row's file name without extension: ``cd-l2-nfe1``."""
    return f"{_slug(row.label)}-nfe{row.nfe}"


def save_row_samples(result: RowResult, x, data: Dataset, out: Path) -> Path:
    """The row's picture: a grid of its first samples (at most :data:`PICTURE_N`) or a scatter
    plot of its points."""
    from zoo.viz import save_image_grid, save_scatter

    path = out / "samples" / f"{row_stem(result.row)}.png"
    if data.kind == "image":
        return save_image_grid(x[:PICTURE_N], path)
    title = f"{result.row.label}  NFE={result.row.nfe}"
    return save_scatter(x, path, title, reference=data.x[: len(x)])


def _arrow(name: str) -> str:
    return {True: "↓", False: "↑", None: ""}[zoo_metrics.lower_is_better(name)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def cost_cells(cost: dict | None) -> list[str]:
    """The table's training-cost cells: million training images and billion network passes in
    forward-equivalents (blank where the run has no cost record)."""
    if cost is None:
        return ["", ""]
    return [_fmt(cost["images"] / 1e6), _fmt(forward_equivalents(cost) / 1e9)]


#: Result-name suffixes that are not columns of their own: a value's standard error joins its
#: cell ("0.081 ± 0.002"), and its floor (what real data scores, the same in every row) makes
#: the table's first row.
STDERR, FLOOR = " ±", " floor"


def table_rows(report: BenchReport) -> tuple[list[str], list[list[str]]]:
    """Header and cells in the paper's layout: METHOD | NFE | metrics | samples/s, then the
    training cost (teachers included); ``value ± standard error`` cells, and a first row
    ``real data (floor)`` holding the metrics' floors when they report any."""
    names = [k for k in report.result_names if not k.endswith((STDERR, FLOOR))]
    header = ["METHOD", "NFE", *[f"{k}{_arrow(k)}" for k in names], "samples/s", "train Mimg",
              "train passes (G fwd-eq)"]

    def cell(metrics: dict, key: str) -> str:
        if key not in metrics:
            return ""
        stderr = metrics.get(key + STDERR)
        return _fmt(metrics[key]) + ("" if stderr is None else f" ± {stderr:.2g}")

    floors = {k: r.metrics[k + FLOOR] for r in reversed(report.results) for k in names
              if k + FLOOR in r.metrics}
    cells = [["real data (floor)", "—", *[cell(floors, k) for k in names], "", "", ""]] * bool(
        floors)
    cells += [[r.row.label + (" [raw weights]" if r.weights == "raw" else ""), str(r.row.nfe),
               *[cell(r.metrics, k) for k in names], f"{r.samples_per_s:.0f}",
               *cost_cells(r.cost)] for r in report.results]
    return header, cells


def format_table(report: BenchReport) -> str:
    """The table as aligned text, a rule between methods' groups of rows."""
    header, cells = table_rows(report)
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]

    def line(row):
        padded = [c.rjust(w) if i else c.ljust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(padded)

    rule = "-" * len(line(header))
    lines = [line(header), rule]
    floor_rows = len(cells) - len(report.results)
    lines += [line(row) for row in cells[:floor_rows]] + [rule] * floor_rows
    for i, (result, row) in enumerate(zip(report.results, cells[floor_rows:], strict=True)):
        if i and result.row.label != report.results[i - 1].row.label:
            lines.append(rule)
        lines.append(line(row))
    return "\n".join(lines + [f"note: {report.note}"] * bool(report.note))


def format_markdown(report: BenchReport) -> str:
    header, cells = table_rows(report)
    align = ["---", *["---:"] * (len(header) - 1)]
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *cells]) + "\n"
    return table + (f"\n{report.note}.\n" if report.note else "")


def git_commit() -> str | None:
    """HEAD of the git checkout zoo runs from (``+dirty`` with uncommitted changes), if any."""
    here = Path(zoo.__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, cwd=here).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


#: Markers of the plots' series, the next one for every ten colours (series stay distinguishable
#: past matplotlib's ten-colour cycle).
MARKERS = ("o", "s", "^", "D", "v", "P")


def _series_styles(labels) -> dict[str, dict]:
    """A distinct (colour, marker) per label: tab10's colours, the marker changing every ten."""
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    return {label: {"color": colors[i % 10], "marker": MARKERS[i // 10 % len(MARKERS)]}
            for i, label in enumerate(dict.fromkeys(labels))}


def _legend_outside(fig, ax, **kw) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **kw)
    fig.tight_layout()


def plot_metric_vs_nfe(report: BenchReport, path: Path) -> Path:
    """The primary metric (the evaluator's first result) against NFE, log-log, one line per
    label; its floor (e.g. "W2 floor") dashed. The y axis is linear when a value is not positive
    (e.g. a KID near 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report.result_names[0]
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=120)
    for label, style in _series_styles(r.row.label for r in report.results).items():
        points = [(r.row.nfe, r.metrics[primary]) for r in report.results if r.row.label == label]
        ax.plot(*zip(*points, strict=True), label=label, **style)
    floor = [r.metrics[primary + FLOOR] for r in report.results if primary + FLOOR in r.metrics]
    if floor:
        ax.axhline(sum(floor) / len(floor), color="0.4", linestyle="--", label=primary + FLOOR)
    ax.set_xscale("log")
    values = [r.metrics[primary] for r in report.results] + floor
    if all(v > 0 for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(f"{primary} {_arrow(primary)}")
    ax.set_title(f"{report.dataset}: {primary} vs NFE (n={report.n}, seed={report.seed})",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    _legend_outside(fig, ax)
    write_atomic(path, fig.savefig)
    plt.close(fig)
    return path


def cost_axis_scale(costs: list[float]) -> str:
    """``"log"`` when the training costs span a decade or more, else ``"linear"``: within one
    decade a log axis may have no major tick, and its minor labels overlap (cost-matched rows)."""
    return "log" if max(costs) >= 10 * min(costs) else "linear"


def plot_metric_vs_cost(report: BenchReport, path: Path) -> Path:
    """The primary metric against the training cost (network passes in forward-equivalents,
    teachers included; a log axis when they span a decade, :func:`cost_axis_scale`), one line
    per label with each point's NFE written beside it; rows without a cost record are left
    out (a note says so when none has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = report.result_names[0]
    costed = [r for r in report.results if r.cost is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=120)
    for label, style in _series_styles(r.row.label for r in costed).items():
        rows = [r for r in costed if r.row.label == label]
        points = [(forward_equivalents(r.cost), r.metrics[primary]) for r in rows]
        ax.plot(*zip(*points, strict=True), linestyle=":", label=label, **style)
        for r, point in zip(rows, points, strict=True):
            ax.annotate(str(r.row.nfe), point, fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    if costed:
        ax.set_xscale(cost_axis_scale([forward_equivalents(r.cost) for r in costed]))
        if all(r.metrics[primary] > 0 for r in costed):
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no run has a training-cost record", ha="center",
                transform=ax.transAxes)
    ax.set_xlabel("training passes (forward-equivalents, teachers included)")
    ax.set_ylabel(f"{primary} {_arrow(primary)}")
    ax.set_title(f"{report.dataset}: {primary} vs training cost (n={report.n})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if costed:
        _legend_outside(fig, ax, title="point labels: NFE", title_fontsize=7)
    else:
        fig.tight_layout()
    write_atomic(path, fig.savefig)
    plt.close(fig)
    return path


#: The training-cost fields of the CSV (``train_…``) and JSON (``training_cost``) outputs.
COST_COLUMNS = ("images", "forward", "backward", "forward_equivalents")


def training_cost(cost: dict | None) -> dict | None:
    """A run's cost record with its forward-equivalents, for the CSV and JSON outputs."""
    return None if cost is None else {**cost, "forward_equivalents": forward_equivalents(cost)}


def _write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` completely or not at all."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_outputs(report: BenchReport, out: Path, *, complete: bool = True) -> dict[str, Path]:
    """``table.md``, ``table.csv``, ``table.json``, ``metric_vs_nfe.png`` and
    ``metric_vs_cost.png`` in ``out``, each written whole or not at all. ``complete=False``
    marks the table of a bench that stopped at a failing row (``table.json``'s ``complete``)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in
             ("table.md", "table.csv", "table.json", "metric_vs_nfe.png", "metric_vs_cost.png")}
    _write_text(paths["table.md"], format_markdown(report))
    names = report.result_names
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["method", "label", "sampler", "nfe", *names, "samples_per_s",
                     "run_dir", "samples_file", *[f"train_{k}" for k in COST_COLUMNS]])
    for r in report.results:
        cost = training_cost(r.cost) or {}
        writer.writerow([r.method, r.row.label, r.sampler or "", r.row.nfe,
                         *[r.metrics.get(k, "") for k in names], r.samples_per_s,
                         str(r.row.run_dir), r.samples_file,
                         *[cost.get(k, "") for k in COST_COLUMNS]])
    _write_text(paths["table.csv"], buffer.getvalue())
    record = {
        "dataset": report.dataset, "dataset_checksum": report.checksum, "n": report.n,
        "seeds": [report.seed, report.seed + report.n - 1], "batch_size": report.batch_size,
        "device": report.device, "zoo_version": zoo.__version__, "git_commit": git_commit(),
        "note": report.note, "reference": report.ref or "dataset", "complete": complete,
        "metric_names": report.metric_names,
        "metrics": {k: {"lower_is_better": zoo_metrics.lower_is_better(k)} for k in names},
        "rows": [{"method": r.method, "entry": r.entry or r.method, "label": r.row.label,
                  "sampler": r.sampler, "nfe": r.row.nfe,
                  "metrics": r.metrics, "samples_per_s": r.samples_per_s,
                  "run_dir": str(r.row.run_dir), "run_checksum": r.checksum, "run_step": r.step,
                  "run_stamp": r.stamp, "options": r.row.options, "weights": r.weights,
                  "samples_picture": r.samples_picture, "samples_file": r.samples_file,
                  "training_cost": training_cost(r.cost)}
                 for r in report.results],
        "training_cost_unit": "passes: one network evaluation on one sample (a JVP: 2 forward); "
                              "forward_equivalents = forward + 2 * backward; teachers included",
    }
    _write_text(paths["table.json"], json.dumps(record, indent=2) + "\n")
    plot_metric_vs_nfe(report, paths["metric_vs_nfe.png"])
    plot_metric_vs_cost(report, paths["metric_vs_cost.png"])
    return paths
