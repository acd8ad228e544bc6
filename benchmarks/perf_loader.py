"""The loader: time to deliver one batch ÷ one training step. Target ≤ 0.05.

The batch is ``next(BatchLoader)`` (the one loader every method trains on: per-epoch
permutation, contiguous share of the global batch, flips for images); the step is the shared
trainer's EDM step on the same data and batch (median interval between ``on_step`` calls).
Both measured in one run:

    OMP_NUM_THREADS=1 python benchmarks/perf_loader.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

import zoo.plugins
from zoo.data import BatchLoader, load_dataset
from zoo.training import Trainer

CASES = {  # dataset: (network, global batch, hflip)
    "digits": ("ddpmpp-small", 128, True),
    "toy": ("mlp", 512, False),
}


def step_time(trainer) -> float:
    """Median interval between the trainer's steps (the first and the checkpointing last out)."""
    stamps = []
    trainer.fit(on_step=lambda step, loss: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(stamps[1:-2], stamps[2:-1], strict=True))


def main():
    edm = zoo.plugins.get("methods", "edm")
    root = Path(tempfile.mkdtemp(prefix="zoo-perf-loader-"))
    print(f"{torch.get_num_threads()} thread(s); batch = median of 200 batches, "
          "step = median of 8 EDM steps")
    print(f"{'dataset':8s} {'network':13s} {'batch':>5s} {'batch ms':>9s} {'step ms':>8s} "
          f"{'ratio':>6s}")
    for name, (network, batch, hflip) in CASES.items():
        data = load_dataset(name)
        loader = BatchLoader(data, batch, seed=0, hflip=hflip)
        deliver = []
        for _ in range(201):
            start = time.perf_counter()
            next(loader)
            deliver.append(time.perf_counter() - start)
        config = edm.configure(name, network=network, batch_size=batch, hflip=hflip,
                               iterations=11, checkpoint_every=10_000, log_every=10_000)
        config.method = "edm"
        step = step_time(Trainer(edm.make_task(config, data), config, data, root / name,
                                 progress=False))
        batch_t = statistics.median(deliver[1:])
        print(f"{name:8s} {network:13s} {batch:5d} {1e3 * batch_t:9.3f} {1e3 * step:8.1f} "
              f"{batch_t / step:6.4f}")


if __name__ == "__main__":
    main()
