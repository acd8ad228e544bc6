"""How much of a `zoo tune` score is noise: runs of one method scored as a trial is (its
``tune_row``, FD against the digits validation split) on disjoint blocks of seeds
(``zoo.tuning.validation_scores``, as ``zoo tune --blocks``), the first block being a
one-block study's own. Prints each run's scores, their mean and
standard deviation, and for every run after the first its paired difference from the first
(block by block: the study scores every trial on the same seeds against the same images).

    python benchmarks/validation_noise.py METHOD RUN [RUN ...] [--blocks 8] [--noise-stream torch]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import zoo.plugins
from zoo.diffusion.random import DEFAULT_STREAM, STREAMS, noise_stream
from zoo.tuning import validation_scores


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
        with noise_stream(args.noise_stream):
            scores = validation_scores(method, run_dir, "digits", blocks=args.blocks)
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
