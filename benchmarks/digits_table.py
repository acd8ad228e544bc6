"""The consistency-models paper's table (METHOD, NFE, FD↓, ...) at small scale, on ``digits``,
with real data's floor as its first row.

Trains what is missing with the digits presets (the EDM teacher, then every student), benches
every row through the one evaluator from the same seeds, exactly as
``zoo bench --models cm,edm,pd,rf,meanflow,ect,scm --dataset digits --train-missing`` does
(``--rescore``: recompute the table from the bench's saved samples instead, as
``zoo bench --rescore``), and writes into ``--out``, beside the bench's own outputs:

- ``README-table.md``: the table for the README: one row per method and NFE and a first row
  ``real data (floor)``, the floors (``zoo.metrics.held_out``): FD297-digits and FD∞-digits
  (against the training split), FD∞-digits held-out, memorised-digits, each ``value ± standard
  error`` over the disjoint sets of 297 samples; then FD-digits of all n samples, KID,
  precision, recall and IS in the digits classifier's feature space, samples/s and the
  training cost (million images, billion forward-equivalent passes, teachers included) and,
  where a row's settings were tuned, the tuning cost (``zoo bench``'s column). The
  floor row gives KID and precision of the held-out split (their expectations do not depend on
  n); FD-digits, recall and IS of 297 images are not comparable with those of n samples and
  stay blank. With the command and the commit that produced it.
- ``fd297_vs_nfe.png`` and ``fd297_vs_cost.png``: ``--plot-metric`` (FD297-digits) against
  NFE (the floor dashed) and against training cost.

    python benchmarks/digits_table.py [--models cm,edm,pd,rf,meanflow,ect,scm] [--runs-root runs]
        [--out bench/digits] [--device cpu] [--jobs auto] [--rescore] [--untuned]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

from zoo.bench import format_table, rescore_bench, run_bench
from zoo.bench.report import cost_cells, git_commit, plot_metric_vs_cost, plot_metric_vs_nfe
from zoo.cli import training_jobs
from zoo.data import load_dataset
from zoo.diffusion.random import DEFAULT_STREAM, STREAMS
from zoo.metrics import evaluate, lower_is_better

MODELS = "cm,edm,pd,rf,meanflow,ect,scm"
#: The README table's metric columns: (result key, header); "±" keys join their value's cell.
COLUMNS = (
    ("FD297-digits", "FD297"),
    ("FD∞-digits", "FD∞"),
    ("FD∞-digits held-out", "FD∞ held-out"),
    ("memorised-digits", "memorised"),
    ("FD-digits", "FD-digits (all n)"),
    ("KID-digits", "KID"),
    ("precision-digits", "precision"),
    ("recall-digits", "recall"),
    ("IS-digits", "IS"),
)
#: Held-out results whose expectation does not depend on n: the floor row shows them.
N_FREE = ("KID-digits", "precision-digits")


def cell(metrics: dict, key: str) -> str:
    """``value ± standard error`` (4 and 2 significant digits), the value alone, or blank."""
    if key not in metrics:
        return ""
    stderr = metrics.get(f"{key} ±")
    return f"{metrics[key]:.4g}" + ("" if stderr is None else f" ± {stderr:.2g}")


def floor_metrics(report, held_out_fd: dict) -> dict:
    """The ``data (held-out)`` row: the floors the held-out metrics report (``… floor``, the
    same in every row) and the held-out split's n-free results (:data:`N_FREE`)."""
    first = report.results[0].metrics
    floors = {key: first[f"{key} floor"] for key, _ in COLUMNS if f"{key} floor" in first}
    return {**floors, **{k: held_out_fd[k] for k in N_FREE if k in held_out_fd}}


def readme_table(report, floors: dict) -> str:
    """The Markdown table: the floor row first, then every bench row, with the cost columns."""
    tuned = any(r.tuning_fwd for r in report.results)
    header = ["METHOD", "NFE", *[f"{name}{arrow(key)}" for key, name in COLUMNS], "samples/s",
              "train Mimg", "train passes (G fwd-eq)", *["tuning passes (G fwd-eq)"] * tuned]
    rows = [["real data (floor)", "—", *[cell(floors, k) for k, _ in COLUMNS], "", "", "",
             *[""] * tuned]]
    rows += [[r.row.label, str(r.row.nfe), *[cell(r.metrics, k) for k, _ in COLUMNS],
              f"{r.samples_per_s:.0f}", *cost_cells(r.cost),
              *[f"{r.tuning_fwd / 1e9:.4g}" if r.tuning_fwd else "—"] * tuned]
             for r in report.results]
    align = ["---", *["---:"] * (len(header) - 1)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows]) + "\n"


def arrow(key: str) -> str:
    return {True: "↓", False: "↑", None: ""}[lower_is_better(key)]


def with_primary(report, key: str):
    """``report`` with ``key`` first in every row's metrics: the bench's plots draw the first."""
    if any(key not in r.metrics for r in report.results):
        raise SystemExit(f"--plot-metric {key!r}: not in every row; the rows report "
                         f"{', '.join(report.metric_names)}")
    results = [dataclasses.replace(r, metrics={key: r.metrics[key], **r.metrics})
               for r in report.results]
    return dataclasses.replace(report, results=results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help=f"comma-separated methods [{MODELS}]")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--out", default="bench/digits")
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rescore", action="store_true",
                        help="recompute the table from the bench's saved samples in --out")
    parser.add_argument("--plot-metric", default="FD297-digits")
    parser.add_argument("--jobs", default="auto",
                        help="runs trained at once, as zoo bench --jobs [auto]")
    parser.add_argument("--noise-stream", default=DEFAULT_STREAM, choices=list(STREAMS),
                        help="per-sample noise, as zoo bench --noise-stream (the README's "
                        "untuned digits table was sampled with torch)")
    parser.add_argument("--untuned", action="store_true",
                        help="the presets as written, as zoo bench --untuned (under another "
                        "--runs-root than the tuned ones)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    commit = git_commit()  # before training: the code that produced the runs
    echo = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.rescore:
        report = rescore_bench("digits", out=out, batch_size=args.batch_size)
    else:
        report = run_bench(args.models.split(","), "digits", runs_root=args.runs_root,
                           train_missing=True, n=args.n, seed=args.seed,
                           batch_size=args.batch_size, out=out, device=args.device, echo=echo,
                           jobs=training_jobs(args.jobs, args.device),
                           noise_stream=args.noise_stream, untuned=args.untuned)
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    floors = floor_metrics(report, evaluate(test.x, train, metrics=["fd-digits"],
                                            seed=report.seed))
    plotted = with_primary(report, args.plot_metric)
    stem = args.plot_metric.split("-")[0].lower().replace("∞", "inf")
    plot_metric_vs_nfe(plotted, out / f"{stem}_vs_nfe.png")
    plot_metric_vs_cost(plotted, out / f"{stem}_vs_cost.png")
    command = shlex.join(["python", "benchmarks/digits_table.py", *(argv or sys.argv[1:])])
    seeds = f"{report.seed}..{report.seed + report.n - 1}"
    (out / "README-table.md").write_text(
        f"{readme_table(report, floors)}\ndigits, n = {report.n} samples per row from seeds "
        f"{seeds}; ± is the standard error over the {report.n // 297} disjoint sets of 297 "
        "samples. Floor row: the 297 held-out images against the training split (FD297, FD∞, "
        "memorised, KID, precision) and the training images against the held-out split (FD∞ "
        "held-out), measured as the samples are; one set of 297 varies by about ± · √sets. "
        f"Produced by `{command}` at commit {commit or 'unknown'} "
        f"(device {report.device}).\n")
    print(format_table(report))
    print(f"\n{out}/README-table.md, {stem}_vs_nfe.png, {stem}_vs_cost.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
