"""Scores that outlive a bench: the finished rows an interrupted bench keeps, and ``zoo bench
--rescore``, the table recomputed from the rows' saved samples with other metrics."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from zoo.bench.report import write_outputs
from zoo.bench.results import (
    BenchError,
    BenchReport,
    RowResult,
    evaluation_of,
    protocol_note,
    row_result_from_record,
)
from zoo.bench.sample import read_row_samples
from zoo.data import Dataset, load_dataset
from zoo.diffusion.random import DEFAULT_STREAM
from zoo.methods import BenchRow


def previous_rows(out: Path, data: Dataset, n: int, seed: int, ref, metric_names,
                  noise_stream: str = DEFAULT_STREAM) -> list:
    """The rows of an earlier bench in ``out`` that this one may keep: [] when there is none;
    refused (:class:`BenchError`) when it measured other data, n, seeds, noise stream (a table
    without the record: ``torch``, the only one then), reference or metrics, whose rows cannot
    share one table."""
    table = out / "table.json"
    if not table.exists():
        return []
    try:
        record = json.loads(table.read_text())
        theirs = {"dataset checksum": record["dataset_checksum"], "n": record["n"],
                  "first seed": record["seeds"][0], "reference": record["reference"],
                  "metrics": record.get("metric_names"),
                  # tables written before the stream was recorded all used torch's
                  "noise stream": record.get("noise_stream", "torch")}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError) as exc:
        raise BenchError(f"{table} is not a readable bench table ({type(exc).__name__}: {exc}); "
                         f"move {out} aside or choose another --out") from None
    ours = {"dataset checksum": data.checksum, "n": n, "first seed": seed,
            "reference": str(ref) if ref else "dataset", "metrics": metric_names,
            "noise stream": noise_stream}
    differ = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
    if differ:
        detail = "; ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        same_stream = (f", or pass --noise-stream {theirs['noise stream']} to add to it"
                       if list(differ) == ["noise stream"] else "")
        raise BenchError(f"--out {out} holds another bench's results ({detail}): its rows "
                         f"cannot share a table with this one. Choose another --out, or move "
                         f"it aside (mv {out} {out}.old){same_stream}")
    return [row_result_from_record(r) for r in record["rows"]]


def same_row(done: RowResult, row: BenchRow, record: dict, weights: str, out: Path) -> bool:
    """Whether an earlier bench's finished row measured exactly this row: the same checkpoint
    file, settings and weights, its samples file still there."""
    return (done.checksum == record["checksum"] and done.step == record["step"]
            and done.stamp == record["stamp"] and done.weights == weights
            and done.row.options == row.options and Path(done.row.run_dir) == Path(row.run_dir)
            and (not done.samples_file or (out / done.samples_file).exists()))


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
        from zoo.metrics.fidelity import use_inception_weights

        use_inception_weights(inception_weights)
    evaluation = evaluation_of(data, metrics, seed=first, batch_size=batch_size, ref=ref)
    report = BenchReport(dataset, data.checksum, record["n"], first, batch_size, record["device"],
                         note=protocol_note(data, record["n"]), ref=str(ref) if ref else None,
                         metric_names=[name for name, _ in evaluation.metrics],
                         noise_stream=record.get("noise_stream", "torch"))
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
