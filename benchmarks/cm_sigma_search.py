"""Greedy search of the intermediate σ of multistep consistency sampling (Algorithm 1).

    python benchmarks/cm_sigma_search.py --run runs/toy/cm-cd [--method cm|ect|scm] [--steps 2]
        [--n 2000] [--repeats 8]

``--method``: the run's method, whose ``sample`` takes the σ (cm, ect) or, for scm, the TrigFlow
times t = arctan(σ/σ_d) (Eq. 30 of Lu & Song 2024) of the same σ.

As the paper chooses its few-step schedules: for step 2 try every candidate σ and keep the one
with the best validation metric, then the same for step 3 given step 2, and so on. Validation
here means sample seeds and reference sets disjoint from the ones `benchmarks/cm_toy.py` and
`zoo bench` report: repeat r draws samples from seeds 1_000_000·(r+1) + i; points: W2 against true
samples drawn with seed r + 1; images: FD-digits against the held-out digits test split. The
metric is averaged over REPEATS (W2 of 2000 points varies by about ±0.015 from set to set). The
result is what the presets' ``sample_sigmas`` record (plugins/zoo_cm/method.py).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from zoo.data import load_dataset
from zoo.plugins import get

CANDIDATES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0)
VALIDATION_SEED = 1_000_000


def validation_metric(run):
    """(metric name, callable (samples, repeat) -> value) of the run's dataset kind."""
    if run.dataset["kind"] == "points":
        dataset = load_dataset(run.config.dataset, **run.config.dataset_options)
        w2 = get("metrics", "w2")
        return "W2", lambda x, r: w2.compute(x, dataset, seed=r + 1)["W2"]
    reference = load_dataset(run.config.dataset, split="test")
    fd = get("metrics", "fd-digits")
    return "FD-digits", lambda x, r: fd.compute(x, reference, seed=r + 1)["FD-digits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="A trained run directory.")
    parser.add_argument("--method", default="cm", choices=("cm", "ect", "scm"))
    parser.add_argument("--steps", type=int, default=2, help="Search σ for steps 2..STEPS.")
    parser.add_argument("--n", type=int, default=2000, help="Samples per evaluation.")
    parser.add_argument("--repeats", type=int, default=8, help="Validation sets to average.")
    parser.add_argument("--candidates", default=",".join(map(str, CANDIDATES)))
    args = parser.parse_args()

    method = get("methods", args.method)
    run = method.load(args.run)
    name, metric = validation_metric(run)

    def sample(sigmas, seed):
        if args.method != "scm":
            return method.sample(run, args.n, seed=seed, sigmas=sigmas)
        times = ",".join(f"{math.atan(s / run.config.sigma_data):.9g}" for s in sigmas[1:])
        return method.sample(run, args.n, seed=seed, times=times or None)

    def evaluate(sigmas):
        return sum(metric(sample(sigmas, VALIDATION_SEED * (r + 1)).x, r)
                   for r in range(args.repeats)) / args.repeats

    sigmas = [run.config.sigma_max]
    print(f"{args.run} (step {run.step}); validation {name}, {args.n} samples, "
          f"mean of {args.repeats}")
    print(f"  σ = {sigmas}: {name} {evaluate(sigmas):.4f}")
    for _ in range(2, args.steps + 1):
        scores = {s: evaluate(sigmas + [s]) for s in map(float, args.candidates.split(","))
                  if s < sigmas[-1]}
        for s, v in scores.items():
            print(f"  σ = {sigmas + [s]}: {name} {v:.4f}")
        sigmas.append(min(scores, key=scores.get))
        print(f"  best: {sigmas} ({name} {scores[sigmas[-1]]:.4f})")
    print(f"sample_sigmas = \"{','.join(f'{s:g}' for s in sigmas)}\"")


if __name__ == "__main__":
    main()
