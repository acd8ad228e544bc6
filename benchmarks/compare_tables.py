"""Two tables of ``benchmarks/digits_table.py`` (its ``README-table.md``) side by side in one
metric: the presets as written against the tuned ones, say, row by row (METHOD and NFE), with the
change and its standard error (the two rows' errors in quadrature: both tables draw the same
seeds, so the models' errors are not independent and this is the larger, cautious one) and the
second table's tuning cost. A row of one table only shows blank cells for the other. ``--plot``
draws the rows both tables hold, each as an arrow from the first table's value to the second's.

    python benchmarks/compare_tables.py UNTUNED.md TUNED.md [--column FD297] [--names untuned,tuned]
        [--nfe 1,2] [--rows "CD (L2),EDM (Heun)@35"] [--plot comparison.png]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

TUNING = "tuning passes (G fwd-eq)"
_NUMBER = r"(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_VALUE = re.compile(rf"^\s*{_NUMBER}(?:\s*±\s*{_NUMBER})?\s*$")


def read_table(path: Path) -> tuple[list[str], dict[tuple[str, str], dict[str, str]]]:
    """The header (arrows ↓↑ dropped) and ``{(METHOD, NFE): {column: cell}}`` of the first
    Markdown table in ``path`` whose first columns are METHOD and NFE (a README with other
    tables before it will do); a label's footnote marks (¹²³...) are dropped."""
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    tables, table = [], []
    for line in [*Path(path).read_text().splitlines(), ""]:
        if line.strip().startswith("|"):
            table.append(line.strip())
        elif table:
            tables.append(table)
            table = []
    tables = [t for t in tables if len(t) >= 2]
    if not tables:
        raise SystemExit(f"{path}: no Markdown table (a README-table.md of "
                         "benchmarks/digits_table.py is one)")
    found = [t for t in tables if [c.rstrip("↓↑") for c in split(t[0])][:2] == ["METHOD", "NFE"]]
    if not found:
        raise SystemExit(f"{path}: no table's first columns are METHOD, NFE (its tables' are "
                         + "; ".join(", ".join(split(t[0])[:2]) for t in tables) + ")")
    table = found[0]
    header = [c.rstrip("↓↑") for c in split(table[0])]
    rows = {}
    for line in table[2:]:
        cells = dict(zip(header, split(line), strict=False))
        rows[cells["METHOD"].rstrip("¹²³⁴⁵⁶⁷⁸⁹⁰"), cells["NFE"]] = cells
    return header, rows


def parse(cell: str, where: str = "") -> tuple[float, float | None] | None:
    """``"0.2954 ± 0.024"`` -> (0.2954, 0.024); ``"0.3"`` -> (0.3, None); blank or ``—`` ->
    None; anything else (``nan``, a word) is an error naming ``where`` it stands."""
    if cell in (None, "", "—"):
        return None
    match = _VALUE.match(cell)
    if not match:
        raise SystemExit(f"{where}: {cell!r} is not a number (or a number ± its error)")
    return float(match[1]), (float(match[2]) if match[2] else None)


def selected(key: tuple[str, str], nfe=None, rows=None) -> bool:
    """Whether the row ``key`` (METHOD, NFE) is kept: the floor always; else, of the labels in
    ``rows`` (all when None), those at the NFE in ``nfe`` (all when None), and any row named
    ``LABEL@NFE`` in ``rows`` whatever ``nfe`` says."""
    label, steps = key
    if steps == "—" or f"{label}@{steps}" in (rows or ()):
        return True
    return (rows is None or label in rows) and (nfe is None or steps in nfe)


def read_column(path: Path, column: str, nfe=None, rows=None) -> tuple[list[str], dict]:
    """:func:`read_table` of a table that has ``column`` (else an error naming the columns), its
    rows :func:`selected` by ``nfe`` and ``rows``."""
    header, found = read_table(path)
    if column not in header:
        raise SystemExit(f"{path}: no column {column!r}; its columns are {', '.join(header[2:])}")
    return header, {k: v for k, v in found.items() if selected(k, nfe, rows)}


def comparison(a: Path, b: Path, column: str, names: tuple[str, str], nfe=None,
               rows=None) -> str:
    """The Markdown table of ``column`` in ``a`` and ``b`` (the rows :func:`selected` by ``nfe``
    and ``rows``), in ``a``'s row order then ``b``'s new rows."""
    (_, rows_a), (header_b, rows_b) = (read_column(a, column, nfe, rows),
                                       read_column(b, column, nfe, rows))
    tuning = TUNING in header_b
    out = [["row", "NFE", *names, f"change ({names[1]} − {names[0]})",
            *[f"tuning passes (G fwd-eq, {names[1]})"] * tuning]]
    out.append(["---", *["---:"] * (len(out[0]) - 1)])
    for key in [*rows_a, *[k for k in rows_b if k not in rows_a]]:
        cell_a = rows_a.get(key, {}).get(column, "")
        cell_b = rows_b.get(key, {}).get(column, "")
        x, y = parse(cell_a, f"{a}, {key}"), parse(cell_b, f"{b}, {key}")
        change = ""
        if x and y:
            change = f"{y[0] - x[0]:+.3g}"
            if x[1] is not None and y[1] is not None:
                change += f" ± {math.hypot(x[1], y[1]):.2g}"
        out.append([*key, cell_a, cell_b, change,
                    *[rows_b.get(key, {}).get(TUNING, "")] * tuning])
    return "\n".join("| " + " | ".join(row) + " |" for row in out) + "\n"


def plot_comparison(a: Path, b: Path, column: str, names: tuple[str, str], path: Path,
                    nfe=None, rows=None) -> Path:
    """Every row of both tables (the floor's dashed line apart) on an axis of ``column`` (log
    where every value is positive): a dot at the first table's value, an arrow to the second's,
    each with its error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (_, rows_a), (_, rows_b) = read_column(a, column, nfe, rows), read_column(b, column, nfe, rows)
    pairs = [(key, parse(rows_a[key].get(column), f"{a}, {key}"),
              parse(rows_b[key].get(column), f"{b}, {key}")) for key in rows_a if key in rows_b]
    floor = [x for (_, steps), x, _ in pairs if steps == "—" and x]
    pairs = [(f"{label}, {steps} NFE", x, y) for (label, steps), x, y in pairs
             if steps != "—" and x and y]
    if not pairs:
        raise SystemExit(f"{a} and {b} share no row with a value of {column}")
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(pairs) + 1.2), dpi=120)
    for i, (_, x, y) in enumerate(pairs):
        ax.annotate("", (y[0], i), (x[0], i), arrowprops={"arrowstyle": "->", "color": "0.5"})
        ax.errorbar(x[0], i, xerr=x[1], fmt="o", color="C0", ms=4,
                    label=names[0] if i == 0 else None)
        ax.errorbar(y[0], i, xerr=y[1], fmt="s", color="C1", ms=4,
                    label=names[1] if i == 0 else None)
    if floor:
        ax.axvline(floor[0][0], color="0.4", linestyle="--", label="real data (floor)")
    ax.set_yticks(range(len(pairs)), [label for label, _, _ in pairs], fontsize=7)
    ax.invert_yaxis()
    if all(v[0] > 0 for _, x, y in pairs for v in (x, y)):
        ax.set_xscale("log")  # else linear: FD∞, KID can be negative
    errors = any(v[1] is not None for _, x, y in pairs for v in (x, y))
    ax.set_xlabel(column + " (± standard error)" * errors)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the first table (README-table.md)")
    parser.add_argument("b", type=Path, help="the second table")
    parser.add_argument("--column", default="FD297")
    parser.add_argument("--names", default="untuned,tuned",
                        help="the two tables' names, comma-separated [untuned,tuned]")
    parser.add_argument("--nfe", default=None,
                        help="only the rows at these NFE, comma-separated [all]")
    parser.add_argument("--rows", default=None,
                        help="only these rows, comma-separated: LABEL (at the --nfe ones) or "
                        "LABEL@NFE (that row whatever --nfe says) [all]")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the rows to this PNG")
    args = parser.parse_args(argv)
    names = tuple(args.names.split(","))
    if len(names) != 2:
        parser.error(f"--names takes two names separated by a comma, got {args.names!r}")
    nfe = args.nfe.split(",") if args.nfe else None
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    print(comparison(args.a, args.b, args.column, names, nfe, rows), end="")
    if args.plot:
        plot_comparison(args.a, args.b, args.column, names, args.plot, nfe, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
