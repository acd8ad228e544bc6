"""A bench's outputs: the table (terminal, Markdown, CSV, JSON), the metric against NFE and
against training cost as PNGs, each written atomically into the output folder it holds."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import zoo
from zoo import metrics as zoo_metrics
from zoo.bench.results import BenchError, BenchReport
from zoo.files import sha256_file
from zoo.training.cost import forward_equivalents
from zoo.viz import write_atomic


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
    training cost (teachers included) and, where a row's settings were tuned, the tuning cost
    (teachers' studies included; "—" for the presets as written); ``value ± standard error``
    cells, and a first row ``real data (floor)`` holding the metrics' floors when they report
    any."""
    names = [k for k in report.result_names if not k.endswith((STDERR, FLOOR))]
    tuned = any(r.tuning_fwd for r in report.results)
    header = ["METHOD", "NFE", *[f"{k}{_arrow(k)}" for k in names], "samples/s", "train Mimg",
              "train passes (G fwd-eq)", *["tuning passes (G fwd-eq)"] * tuned]

    def cell(metrics: dict, key: str) -> str:
        if key not in metrics:
            return ""
        stderr = metrics.get(key + STDERR)
        return _fmt(metrics[key]) + ("" if stderr is None else f" ± {stderr:.2g}")

    floors = {k: r.metrics[k + FLOOR] for r in reversed(report.results) for k in names
              if k + FLOOR in r.metrics}
    cells = [["real data (floor)", "—", *[cell(floors, k) for k in names], "", "", "",
               *[""] * tuned]] * bool(floors)
    cells += [[r.row.label + (" [raw weights]" if r.weights == "raw" else ""), str(r.row.nfe),
               *[cell(r.metrics, k) for k in names], f"{r.samples_per_s:.0f}",
               *cost_cells(r.cost),
               *[_fmt(r.tuning_fwd / 1e9) if r.tuning_fwd else "—"] * tuned]
              for r in report.results]
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
    decade a log axis may have no major tick, and its minor labels overlap (cost-matched rows);
    ``"linear"`` too where a cost is zero (untrained weights), which a log axis would drop."""
    return "log" if min(costs) > 0 and max(costs) >= 10 * min(costs) else "linear"


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
                     "run_dir", "samples_file", *[f"train_{k}" for k in COST_COLUMNS],
                     "tuning_forward_equivalents"])
    for r in report.results:
        cost = training_cost(r.cost) or {}
        writer.writerow([r.method, r.row.label, r.sampler or "", r.row.nfe,
                         *[r.metrics.get(k, "") for k in names], r.samples_per_s,
                         str(r.row.run_dir), r.samples_file,
                         *[cost.get(k, "") for k in COST_COLUMNS], r.tuning_fwd])
    _write_text(paths["table.csv"], buffer.getvalue())
    record = {
        "dataset": report.dataset, "dataset_checksum": report.checksum, "n": report.n,
        "seeds": [report.seed, report.seed + report.n - 1], "noise_stream": report.noise_stream,
        "batch_size": report.batch_size,
        "device": report.device, "zoo_version": zoo.__version__, "git_commit": git_commit(),
        "note": report.note, "reference": report.ref or "dataset", "complete": complete,
        # which reference file the numbers were measured against, byte for byte
        "reference_sha256": sha256_file(report.ref) if report.ref else None,
        "metric_names": report.metric_names,
        "metrics": {k: {"lower_is_better": zoo_metrics.lower_is_better(k)} for k in names},
        "rows": [{"method": r.method, "entry": r.entry or r.method, "label": r.row.label,
                  "sampler": r.sampler, "nfe": r.row.nfe,
                  "metrics": r.metrics, "samples_per_s": r.samples_per_s,
                  "run_dir": str(r.row.run_dir), "run_checksum": r.checksum, "run_step": r.step,
                  "run_stamp": r.stamp, "options": r.row.options, "weights": r.weights,
                  "samples_picture": r.samples_picture, "samples_file": r.samples_file,
                  "training_cost": training_cost(r.cost), "tuning_fwd": r.tuning_fwd}
                 for r in report.results],
        "training_cost_unit": "passes: one network evaluation on one sample (a JVP: 2 forward); "
                              "forward_equivalents = forward + 2 * backward; teachers included; "
                              "tuning_fwd: forward-equivalents of the zoo tune studies that chose "
                              "the row's settings and its teachers' (0: the preset as written)",
    }
    _write_text(paths["table.json"], json.dumps(record, indent=2) + "\n")
    plot_metric_vs_nfe(report, paths["metric_vs_nfe.png"])
    plot_metric_vs_cost(report, paths["metric_vs_cost.png"])
    return paths
