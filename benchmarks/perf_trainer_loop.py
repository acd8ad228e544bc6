"""The shared trainer against a hand-written loop of the same loss, optimiser, batch and EMA on
the toy MLP (EDM's loss). Target ≤ 1.05.

The two alternate step by step inside one run: at each of the trainer's ``on_step`` calls one
step of the bare loop runs and is timed; a trainer step is the time between two calls less the
bare step inside. The answer is the median of the paired ratios (trainer step ÷ bare step) with
its interquartile range. The bare loop: a batch from a tensor by random indices, noise from the
global generator, ``task.loss``, Adam, the same EMA update; nothing else.

    OMP_NUM_THREADS=1 python benchmarks/perf_trainer_loop.py [--steps 400] [--batch 512]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import zoo.plugins
from zoo.data import load_dataset
from zoo.training import EMA, Trainer


class GlobalNoise:
    """The task's noise from torch's global generator: what a hand-written loop would use."""

    def randn(self, *shape):
        return torch.randn(self.batch, *shape)

    def rand(self, *shape):
        return torch.rand(self.batch, *shape)

    def randint(self, low, high):
        return torch.randint(low, high, (self.batch,))

    def randn_like(self, x):
        return torch.randn_like(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    edm = zoo.plugins.get("methods", "edm")
    config = edm.configure("toy", iterations=args.steps + 1, batch_size=args.batch,
                           checkpoint_every=10**9, log_every=100, lr_warmup=0)
    config.method = "edm"
    data = load_dataset("toy")
    trainer = Trainer(edm.make_task(config, data), config, data,
                      Path(tempfile.mkdtemp()) / "run", progress=False)
    # the bare loop: its own copy of the network, optimiser and EMA
    task = edm.make_task(config, data)
    net = task.net
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    ema, noise = EMA(net), GlobalNoise()
    noise.batch = args.batch

    def bare_step():
        x = data.x[torch.randint(len(data.x), (args.batch,))]
        loss = task.loss(net, x, None, noise).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update(net, 0.999)
        return loss.item()

    stamps, bare = [], []

    def on_step(step, loss):
        entered = time.perf_counter()
        start = time.perf_counter()
        bare_step()
        bare.append(time.perf_counter() - start)
        stamps.append((entered, time.perf_counter()))

    trainer.fit(on_step=on_step)
    ratios = [(stamps[i][0] - stamps[i - 1][1]) / bare[i] for i in range(2, len(stamps) - 1)]
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    trainer_ms = statistics.median(stamps[i][0] - stamps[i - 1][1]
                                   for i in range(2, len(stamps) - 1)) * 1e3
    print(f"trainer step / bare loop step (EDM, toy MLP, batch {args.batch}): {median:.3f} "
          f"(IQR {q1:.3f}–{q3:.3f}, {len(ratios)} paired steps; trainer {trainer_ms:.2f} ms, "
          f"bare {statistics.median(bare) * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
