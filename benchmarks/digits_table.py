"""The consistency-models paper's table (METHOD, NFE, FD↓, IS↑, ...) at small scale, on ``digits``.

Trains what is missing with the digits presets — the EDM teacher, CD and CT (``cm``), progressive
distillation (``pd``) — then benches every method through the one evaluator (FD/IS/KID/precision/
recall in the shipped digits classifier's feature space) from the same seeds, exactly as
``zoo bench --models cm,edm,pd --dataset digits --train-missing`` does. Writes the table, plot and
sample grids into ``--out`` and ``README-table.md``: the Markdown table with the command and the
commit that produced it, ready for the README.

    python benchmarks/digits_table.py [--runs-root runs] [--out bench/digits] [--device cuda]

The CIFAR-10 table is the same command with ``--dataset cifar10`` on a GPU (the cifar10 presets
hold the paper's settings).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from zoo.bench import format_markdown, format_table, git_commit, run_bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cm,edm,pd", help="comma-separated methods")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--out", default=None, help="default: bench/DATASET")
    parser.add_argument("--n", type=int, default=2000, help="samples per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    out = Path(args.out or Path("bench") / args.dataset)
    commit = git_commit()  # before training: the code that produced the runs
    report = run_bench(args.models.split(","), args.dataset, runs_root=args.runs_root,
                       train_missing=True, n=args.n, seed=args.seed, batch_size=args.batch_size,
                       out=out, device=args.device, echo=lambda msg: print(msg, file=sys.stderr))
    command = shlex.join(["python", "benchmarks/digits_table.py", *(argv or sys.argv[1:])])
    seeds = f"{args.seed}..{args.seed + args.n - 1}"
    (out / "README-table.md").write_text(
        f"{format_markdown(report)}\n{args.dataset}, n = {args.n} samples per row from seeds "
        f"{seeds}; produced by `{command}` at commit {commit or 'unknown'} "
        f"(device {args.device}).\n")
    print(format_table(report))
    print(f"\n{out}/README-table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
