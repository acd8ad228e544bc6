"""Train the digits classifier behind FD-digits and write zoo/metrics/digits_classifier.pt.

    python benchmarks/train_digits_classifier.py [--seed 0] [--epochs 40] [--out PATH]

Trains on the digits train split (1500 images), deterministically for a seed, and prints the
held-out accuracy on the test split (297 images); refuses to write weights below 97%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from zoo.data import load_dataset
from zoo.metrics.digits import WEIGHTS, accuracy, train_classifier

MIN_ACCURACY = 0.97


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    start = time.perf_counter()
    model = train_classifier(train, epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    train_acc, test_acc = accuracy(model, train), accuracy(model, test)
    print(f"trained in {seconds:.1f} s; accuracy: train {train_acc:.4f} ({len(train)} images), "
          f"held-out test {test_acc:.4f} ({len(test)} images)")
    if test_acc < MIN_ACCURACY:
        raise SystemExit(f"held-out accuracy {test_acc:.4f} < {MIN_ACCURACY}; weights not written")
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
