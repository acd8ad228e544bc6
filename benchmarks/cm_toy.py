"""Consistency models against their EDM teacher on the toy checkerboard: W2 by NFE.

    python benchmarks/cm_toy.py [--runs-root runs] [--dataset toy] [--n 10000] [--seed 0]

Loads RUNS_ROOT/DATASET/{edm,cm-cd,cm-ct} (train them with `zoo train edm --dataset toy`,
`zoo train cm --mode cd --dataset toy`, `zoo train cm --mode ct --dataset toy`), draws N samples
per row (sample i from seed SEED+i) and prints W2 against N fresh true samples (the same
`zoo.metrics.W2Metric` evaluation for every row), the floor (W2 between two true sets), and the
issue's acceptance checks for one-step CD.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.data import load_dataset
from zoo.metrics import W2Metric
from zoo.plugins import get


def rows(runs: Path):
    """(label, method, run directory, sample options) of the table."""
    return [
        ("EDM teacher, Heun 18 steps", "edm", runs / "edm", {"steps": 18, "sampler": "heun"}),
        ("EDM teacher, 1 Euler step", "edm", runs / "edm", {"steps": 1, "sampler": "euler"}),
        ("CD, 1 step", "cm", runs / "cm-cd", {"nfe": 1}),
        ("CD, 2 steps", "cm", runs / "cm-cd", {"nfe": 2}),
        ("CT, 1 step", "cm", runs / "cm-ct", {"nfe": 1}),
        ("CT, 2 steps", "cm", runs / "cm-ct", {"nfe": 2}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-root", type=Path, default=Path("runs"))
    parser.add_argument("--dataset", default="toy")
    parser.add_argument("--n", type=int, default=10_000, help="Five W2 sets of 2000.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    dataset, metric = load_dataset(args.dataset), W2Metric()
    w2, floor = {}, None
    print("| model | NFE | W2 ↓ | run |\n|---|---|---|---|")
    for label, name, run_dir, options in rows(args.runs_root / args.dataset):
        if not (run_dir / "checkpoint.pt").exists():
            print(f"| {label} | – | not trained | {run_dir} |")
            continue
        method = get("methods", name)
        run = method.load(run_dir)
        samples = method.sample(run, args.n, seed=args.seed, **options)
        result = metric.compute(samples.x, dataset, seed=args.seed)
        w2[label], floor = result["W2"], result["W2 floor"]
        print(f"| {label} | {samples.nfe} | {w2[label]:.4f} | {run_dir} (step {run.step}) |")
    if floor is not None:
        print(f"| floor: two independent true sets | – | {floor:.4f} | |")

    teacher, euler, cd1 = (w2.get(k) for k in (
        "EDM teacher, Heun 18 steps", "EDM teacher, 1 Euler step", "CD, 1 step"))
    if None not in (teacher, euler, cd1):
        print(f"\nCD 1 step / teacher 35 NFE = {cd1 / teacher:.2f} (want ≤ 1.5); "
              f"teacher 1 Euler step / CD 1 step = {euler / cd1:.1f} (want ≥ 5)")
    for kind in ("CD", "CT"):
        one, two = w2.get(f"{kind}, 1 step"), w2.get(f"{kind}, 2 steps")
        if None not in (one, two):
            print(f"{kind}: 2 steps {'≤' if two <= one else '>'} 1 step ({two:.4f} vs {one:.4f})")


if __name__ == "__main__":
    main()
