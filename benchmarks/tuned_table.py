"""The table with every family at its tuned settings: reads tune/DATASET/FAMILY/best.json (written
by `zoo tune`, benchmarks/tune_study.sh), trains each run at the preset's full iterations with the
winning settings (`zoo bench --set METHOD/RUN.KEY=VALUE`) and prints the table with the tuning
cost beside the training cost. With --print-tuned it prints, instead, each method's `tuned` table
of its studies' winners (`zoo.tuned.Tuned` records), the source to paste into the method to adopt
them as presets (docs/tuning.md).

    python benchmarks/tuned_table.py --dataset toy [--tune tune] [--runs-root runs-tuned]
    python benchmarks/tuned_table.py --dataset digits --print-tuned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.bench import run_bench
from zoo.bench.report import cost_cells
from zoo.diffusion.random import DEFAULT_STREAM, STREAMS

#: A study's folder -> the method and run of the table it tunes.
FAMILIES = {"edm": ("edm", "edm"), "cm-cd": ("cm", "cm-cd"), "cm-ct": ("cm", "cm-ct"),
            "pd": ("pd", "pd"), "rf": ("rf", "rf"), "meanflow": ("meanflow", "meanflow"),
            "ect": ("ect", "ect"), "scm-sct": ("scm", "scm-sct"), "scm-scd": ("scm", "scm-scd")}


def best_records(tune_root: Path, families=None) -> dict[tuple[str, str], dict]:
    """``{(method, run): best.json record}`` of the studies found (of ``families`` only, when
    given)."""
    records = {}
    for family, (method, run) in FAMILIES.items():
        best = tune_root / family / "best.json"
        if (not families or family in families) and best.exists():
            records[method, run] = json.loads(best.read_text())
    return records


def source(value) -> str:
    """``value`` (a setting, or a dict of them) as Python source, strings double-quoted."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{source(k)}: {source(v)}" for k, v in value.items()) + "}"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def packed(items: list[str], first: str, indent: str, width: int = 100) -> list[str]:
    """``first`` followed by ``items`` joined with commas, in lines of at most ``width``
    columns, the later ones indented by ``indent``; an item is never split."""
    lines = [first]
    for k, item in enumerate(items):
        text = item + ("," if k < len(items) - 1 else "")
        if len(lines[-1]) + 1 + len(text) > width and lines[-1] not in (first, indent):
            lines.append(indent + text)
        else:
            lines[-1] += ("" if lines[-1] in (first, indent) else " ") + text
    return lines


def tuned_table_source(dataset: str, runs: dict[str, dict]) -> str:
    """One method's ``tuned`` class attribute holding its studies' winners (``{run: best.json
    record}``), as Python source for the method's class body (exact values: the settings the
    confirmations trained); each study is named by its folder (CD's and CT's studies are both
    Optuna's ``cm-digits``)."""
    lines = ["    tuned = {", f"        {source(dataset)}: {{"]
    for run, record in runs.items():
        params = [f"{source(k)}: {source(v)}" for k, v in record["params"].items()]
        lines += [f"            {source(run)}: Tuned(",
                  *packed(params, "                params={", " " * 24)]
        lines[-1] += "},"
        study = str(Path(record["storage"]).parent)
        lines += [f"                study={source(study)}, trial={record['trial']!r},",
                  f"                validation={source(record['validation'])},",
                  f"                tuning_cost_fwd={record['tuning_cost_fwd']!r}),"]
    return "\n".join([*lines, "        },", "    }"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--tune", default="tune", help="The studies' root (tune/DATASET/...).")
    parser.add_argument("--runs-root", default="runs-tuned")
    parser.add_argument("--out", default=None)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--noise-stream", default=DEFAULT_STREAM, choices=list(STREAMS),
                        help="per-sample noise, as zoo bench --noise-stream (the toy tuning "
                        "table in docs/tuning.md was sampled with torch)")
    parser.add_argument("--families", default=None,
                        help=f"Comma-separated studies to table [default: all of {list(FAMILIES)}]")
    parser.add_argument("--print-tuned", action="store_true",
                        help="Print each winner as a method's `tuned` entry; train nothing.")
    args = parser.parse_args()
    families = args.families.split(",") if args.families else None
    records = best_records(Path(args.tune) / args.dataset, families)
    if not records:
        raise SystemExit(f"no best.json under {Path(args.tune) / args.dataset}: run the studies")
    if args.print_tuned:
        by_method: dict[str, dict] = {}
        for (method, run), record in records.items():
            by_method.setdefault(method, {})[run] = record
        for method, runs in by_method.items():
            print(f"# {method}: `from zoo.tuned import Tuned`\n"
                  f"{tuned_table_source(args.dataset, runs)}\n")
        return
    settings = {f"{method}/{run}": r["params"] for (method, run), r in records.items()}
    costs = {run: r["tuning_cost_fwd"] for (_, run), r in records.items()}
    methods = list(dict.fromkeys(scope.split("/")[0] for scope in settings))
    report = run_bench(methods, args.dataset, runs_root=args.runs_root, train_missing=True,
                       out=args.out or f"bench/{args.dataset}-tuned", settings=settings,
                       jobs=args.jobs, progress=False, noise_stream=args.noise_stream)
    metric = report.metric_names[0]
    key = next(k for k in report.result_names if not k.endswith((" ±", " floor")))
    print(f"| METHOD | NFE | {key} | train Mimg | train passes (G fwd-eq) | tuning passes "
          f"(G fwd-eq) |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in report.results:
        run = Path(r.row.run_dir)
        run = run.parent.name if run.name.startswith("stage-") else run.name
        tuning = f"{costs[run] / 1e9:.4g}" if run in costs else "untuned"
        stderr = r.metrics.get(f"{key} ±")
        value = f"{r.metrics[key]:.4g}" + (f" ± {stderr:.2g}" if stderr else "")
        print(f"| {r.row.label} | {r.row.nfe} | {value} | {' | '.join(cost_cells(r.cost))} | "
              f"{tuning} |")
    print(f"\n({metric} on {report.n} samples per row; tuning on the validation split)")


if __name__ == "__main__":
    main()
