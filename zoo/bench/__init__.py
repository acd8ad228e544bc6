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

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from zoo import distributed
from zoo.bench.plan import (
    ModelEntry,
    bench_data,
    parse_models,
    parse_settings,
    prepare_runs,
    resolve_methods,
    resume_overrides,
    sort_rows,
    training_order,
)
from zoo.bench.report import (
    cost_axis_scale,
    format_markdown,
    format_table,
    lock_output,
    write_outputs,
)
from zoo.bench.results import (
    DEFAULT_N,
    PICTURE_N,
    PUBLISHED_N,
    BenchError,
    BenchInterrupted,
    BenchReport,
    RowResult,
    default_n,
    evaluation_of,
    protocol_note,
)
from zoo.bench.sample import (
    SAVE_SAMPLES,
    export_formats,
    measure_row,
    read_row_samples,
    row_failure,
)
from zoo.bench.score import previous_rows, rescore_bench, same_row
from zoo.diffusion import random as streams

__all__ = [
    "DEFAULT_N", "PICTURE_N", "PUBLISHED_N", "SAVE_SAMPLES", "BenchError", "BenchInterrupted",
    "BenchReport", "ModelEntry", "RowResult", "cost_axis_scale", "default_n", "export_formats",
    "format_markdown", "format_table", "parse_models", "parse_settings", "prepare_runs",
    "protocol_note", "read_row_samples", "rescore_bench", "resume_overrides", "run_bench",
    "training_order",
]


def run_bench(models: list[str], dataset: str, *, runs_root="runs", train_missing=False,
              n=None, seed=0, batch_size=500, out=None, device="cpu", inception_weights=None,
              progress=True, echo=print, weights="ema", settings=None,
              metrics=None, ref=None, save_samples="auto", sampler_options=None,
              jobs=1, noise_stream=streams.DEFAULT_STREAM, untuned=False) -> BenchReport:
    """Prepare the runs of the ``models`` entries (``METHOD`` or ``METHOD:SAMPLER``,
    :func:`parse_models`, with ``sampler_options`` by entry), training missing ones with
    ``settings`` (:func:`prepare_runs`), sample and evaluate every row with the runs'
    ``weights`` (``"ema"`` or ``"raw"``) through the registered ``metrics`` (default: the
    dataset's, :func:`zoo.metrics.default_metrics`; feature spaces against ``ref``, a reference
    file, when given), and write the outputs into ``out`` (default ``bench/<dataset>``; rank 0
    alone under torchrun, except the PNG exports); ``n`` defaults by the dataset's metric
    (:func:`default_n`); ``save_samples`` (:data:`SAVE_SAMPLES`, :func:`export_formats`) keeps
    every row's samples for :func:`rescore_bench` and external evaluators; every row draws its
    noise from the per-sample ``noise_stream`` (:data:`zoo.diffusion.random.STREAMS`), which
    the table records. The presets are the tuned ones where a method holds them
    (:attr:`zoo.methods.Method.tuned`), as written with ``untuned``. Returns the report."""
    streams.check_stream(noise_stream)
    entries = parse_models(models, sampler_options)
    methods = resolve_methods([e.method for e in entries])
    data = bench_data(dataset, methods, Path(runs_root), ref)
    n = default_n(data) if n is None else n
    if n < 2:
        raise BenchError(f"--n must be >= 2, got {n}")
    formats = export_formats(save_samples, data, n)
    if inception_weights:
        from zoo.metrics.fidelity import use_inception_weights

        use_inception_weights(inception_weights)
    # everything the bench will need is checked before any training: the metrics and their
    # weights, the output folder (writable, not another bench's, not in use)
    evaluation = evaluation_of(data, metrics, seed=seed, batch_size=batch_size, ref=ref,
                               distributed=True)
    out = Path(out) if out else Path("bench") / dataset
    metric_names = [name for name, _ in evaluation.metrics]
    lock = earlier = None
    if distributed.is_main():
        lock = lock_output(out)
    try:
        earlier = (previous_rows(out, data, n, seed, ref, metric_names, noise_stream)
                   if lock else [])
        rows, records = prepare_runs(methods, dataset, data, Path(runs_root),
                                     train_missing=train_missing, device=device,
                                     progress=progress, echo=echo, settings=settings,
                                     entries=entries, jobs=jobs, untuned_presets=untuned)
        report = BenchReport(dataset, data.checksum, n, seed, batch_size, device,
                             note=protocol_note(data, n), ref=str(ref) if ref else None,
                             metric_names=metric_names, noise_stream=noise_stream)
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
                with streams.noise_stream(noise_stream):
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
