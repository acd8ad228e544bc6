"""How much of a `zoo tune` score is noise: runs of one method scored as a trial is (its
``tune_row``, FD against the digits validation split) on disjoint blocks of seeds, the first
block being the study's own (``VALIDATION_SEED``). Prints each run's scores, their mean and
standard deviation, and for every run after the first its paired difference from the first
(block by block: the study scores every trial on the same seeds against the same images).

    python benchmarks/validation_noise.py METHOD RUN [RUN ...] [--blocks 8] [--noise-stream torch]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import zoo.plugins
from zoo.data import load_dataset
from zoo.diffusion.random import DEFAULT_STREAM, STREAMS, noise_stream
from zoo.metrics import evaluate
from zoo.tuning import VALIDATION, VALIDATION_SEED


def block_scores(method, run_dir: str, blocks: int, stream: str) -> list[float]:
    protocol = VALIDATION["digits"]
    data = load_dataset("digits", **protocol["score"])
    row = method.tune_row(method.bench_rows(run_dir))
    run = method.load(row.run_dir)
    scores = []
    for k in range(blocks):
        seed = VALIDATION_SEED + k * protocol["n"]
        with noise_stream(stream):
            x = method.sample(run, protocol["n"], seed=seed, **row.options).x
        result = evaluate(x.float(), data, metrics=[protocol["metric"]], seed=seed,
                          finite=False)
        scores.append(float(result[protocol["result"]]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--noise-stream", default=DEFAULT_STREAM, choices=list(STREAMS),
                        help="the study's stream (the digits study of docs/tuning.md: torch)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    method = zoo.plugins.get("methods", args.method)
    first = None
    for run_dir in args.runs:
        scores = block_scores(method, run_dir, args.blocks, args.noise_stream)
        line = (f"{run_dir}: {' '.join(f'{s:.3f}' for s in scores)}; mean "
                f"{statistics.mean(scores):.3f}, sd {statistics.stdev(scores):.3f}")
        if first is None:
            first = scores
        else:
            diff = [s - f for s, f in zip(scores, first, strict=True)]
            line += (f"; minus the first run: {statistics.mean(diff):+.3f} ± "
                     f"{statistics.stdev(diff) / len(diff) ** 0.5:.3f} (s.e.), "
                     f"{sum(d > 0 for d in diff)}/{len(diff)} blocks above")
        print(line, flush=True)


if __name__ == "__main__":
    main()
