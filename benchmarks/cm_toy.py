"""The toy table's conclusions on trained runs: W2 of CD, CT and PD against the EDM teacher.

    python benchmarks/cm_toy.py [--runs-root runs] [--dataset toy] [--n 10000] [--seed 0]

Loads RUNS_ROOT/DATASET/{edm,cm-cd,cm-ct,pd} (trained by `zoo bench --models cm,edm,pd
--dataset toy --train-missing`, or one by one with `zoo train`), draws N samples per row (sample
i from seed SEED+i) and prints W2 against fresh true samples (the bench's `zoo.metrics.W2Metric`:
five sets of 2000 by default, mean ± standard error), the floor (W2 between two true sets), and
the checks the README's toy table rests on: one-step CD within 1.25× of the teacher at 35 NFE,
the teacher's one Euler step at least 5× worse than one-step CD, PD within 0.01 of the floor
at 1 and 2 steps, and CT's second step improving on its first. Only the rows those checks need
are drawn (the bench also draws EDM at 3-19 NFE and PD at 4-32).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.data import load_dataset
from zoo.metrics import W2Metric
from zoo.plugins import get

CD_OVER_TEACHER = 1.25  # CD at 1 step / EDM at 35 NFE, at most
EULER_OVER_CD = 5.0  # EDM at 1 Euler step / CD at 1 step, at least
PD_ABOVE_FLOOR = 0.01  # PD at 1 and 2 steps above the floor, at most


def rows(runs: Path):
    """(label, method, run directory, sample options) of the table."""
    pd = {row.nfe: row.run_dir for row in get("methods", "pd").bench_rows(runs / "pd")}
    return [
        ("EDM teacher, Heun 18 steps", "edm", runs / "edm", {"steps": 18, "sampler": "heun"}),
        ("EDM teacher, 1 Euler step", "edm", runs / "edm", {"steps": 1, "sampler": "euler"}),
        ("CD, 1 step", "cm", runs / "cm-cd", {"nfe": 1}),
        ("CD, 2 steps", "cm", runs / "cm-cd", {"nfe": 2}),
        ("CT, 1 step", "cm", runs / "cm-ct", {"nfe": 1}),
        ("CT, 2 steps", "cm", runs / "cm-ct", {"nfe": 2}),
        ("PD, 1 step", "pd", pd.get(1, runs / "pd"), {}),
        ("PD, 2 steps", "pd", pd.get(2, runs / "pd"), {}),
    ]


def checks(w2: dict[str, float], floor: float) -> list[tuple[str, bool]]:
    """The table's conclusions as (statement with its numbers, holds) for the rows present."""
    out = []
    teacher, euler, cd1 = (w2.get(k) for k in (
        "EDM teacher, Heun 18 steps", "EDM teacher, 1 Euler step", "CD, 1 step"))
    if None not in (teacher, cd1):
        out.append((f"CD 1 step / teacher 35 NFE = {cd1 / teacher:.2f} "
                    f"(want ≤ {CD_OVER_TEACHER})", cd1 <= CD_OVER_TEACHER * teacher))
    if None not in (euler, cd1):
        out.append((f"teacher 1 Euler step / CD 1 step = {euler / cd1:.1f} "
                    f"(want ≥ {EULER_OVER_CD:g})", euler >= EULER_OVER_CD * cd1))
    for label in ("PD, 1 step", "PD, 2 steps"):
        if label in w2:
            out.append((f"{label} − floor = {w2[label] - floor:.4f} (want ≤ {PD_ABOVE_FLOOR})",
                        w2[label] - floor <= PD_ABOVE_FLOOR))
    one, two = w2.get("CT, 1 step"), w2.get("CT, 2 steps")
    if None not in (one, two):
        out.append((f"CT 2 steps < 1 step ({two:.4f} vs {one:.4f})", two < one))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--n", type=int, default=10_000, help="Five W2 sets of 2000.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset, metric = load_dataset(args.dataset), W2Metric()
    w2, floor = {}, None
    print("| model | NFE | W2 ↓ | W2 ± | run |\n|---|---|---|---|---|")
    for label, name, run_dir, options in rows(args.runs_root / args.dataset):
        if not (run_dir / "checkpoint.pt").exists():
            print(f"| {label} | – | not trained | | {run_dir} |")
            continue
        method = get("methods", name)
        run = method.load(run_dir)
        samples = method.sample(run, args.n, seed=args.seed, **options)
        result = metric.compute(samples.x, dataset, seed=args.seed)
        w2[label], floor = result["W2"], result["W2 floor"]
        stderr = result.get("W2 ±", float("nan"))
        print(f"| {label} | {samples.nfe} | {w2[label]:.4f} | {stderr:.4f} | {run_dir} "
              f"(step {run.step}) |", flush=True)
    if floor is None:
        return
    print(f"| floor: two independent true sets | – | {floor:.4f} | | |\n")
    for statement, holds in checks(w2, floor):
        print(f"{'ok  ' if holds else 'FAIL'} {statement}")


if __name__ == "__main__":
    main()
