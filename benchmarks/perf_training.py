"""Training-step efficiency: one step of the shared trainer ÷ the sum of its network passes timed
alone. Target ≤ 1.10.

Per method, the passes of one step on the same batch (B samples of 8×8 digits, ddpmpp-small):
  EDM (Karras et al. 2022):        online forward + backward
  CD, Heun teacher (Song et al.):  online fwd+bwd, 2 teacher and 1 target forwards (no grad)
  CT:                              online fwd+bwd, 1 target forward (no grad)
  PD (Salimans & Ho 2022):         online fwd+bwd, 2 teacher forwards (no grad)
"Alone" is the bare network F(x, c_noise) with random inputs; the step is the interval between
the trainer's ``on_step`` calls (loader, noise, preconditioning, loss, Adam, EMA, target update
included). The passes are timed inside each ``on_step`` call, right after the step they pair
with, so load changes shift both; the answer is the median of the per-step ratios with its
interquartile range.

    OMP_NUM_THREADS=1 python benchmarks/perf_training.py [--batch 64] [--steps 8]
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
from zoo.training import Trainer

PASSES = {"edm": 0, "cd": 3, "ct": 1, "pd": 2}  # forwards without grad besides the online pass


def paired_ratios(method_name, config, data, run_dir, steps, net, extra_forwards,
                  warmup=2) -> list[tuple[float, float]]:
    """``(step seconds, passes seconds)`` per step: at each of the trainer's ``on_step`` calls
    the bare passes of one step (forward + backward, ``extra_forwards`` forwards without grad)
    run and are timed, so both see the same load; a trainer step is the time between two calls
    less the passes timed inside."""
    method = zoo.plugins.get("methods", method_name)
    config.method = method.name
    config.iterations = warmup + steps + 1  # the last step writes a checkpoint: not timed
    x, noise = torch.randn(config.batch_size, *data.shape), torch.rand(config.batch_size)

    def passes():
        net.zero_grad(set_to_none=True)
        net(x, noise).square().mean().backward()
        with torch.no_grad():
            for _ in range(extra_forwards):
                net(x, noise)

    marks = []

    def on_step(step, loss):
        entered = time.perf_counter()
        passes()
        marks.append((entered, time.perf_counter()))

    trainer = Trainer(method.make_task(config, data), config, data, run_dir, progress=False)
    trainer.fit(on_step=on_step)
    return [(marks[i][0] - marks[i - 1][1], marks[i][1] - marks[i][0])
            for i in range(warmup + 1, len(marks) - 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    common = dict(network="ddpmpp-small", batch_size=args.batch, checkpoint_every=10_000,
                  log_every=10_000, lr=1e-4, lr_warmup=0)
    data = load_dataset("digits")
    root = Path(tempfile.mkdtemp(prefix="zoo-perf-training-"))
    teacher = root / "edm-teacher"
    edm = zoo.plugins.get("methods", "edm")
    edm.train(edm.configure("digits", **common, iterations=1), teacher, progress=False)
    cm, pd = zoo.plugins.get("methods", "cm"), zoo.plugins.get("methods", "pd")
    configs = {
        "edm": ("edm", edm.configure("digits", **common)),
        "cd": ("cm", cm.configure("digits", **common, mode="cd", teacher=str(teacher),
                                  solver="heun", distance="l2")),
        "ct": ("cm", cm.configure("digits", **common, mode="ct", distance="l2")),
        "pd": ("pd", pd.configure("digits", **common, teacher=str(teacher))),
    }
    net = edm.build_net(configs["edm"][1], data.shape).train()
    print(f"digits 8×8, ddpmpp-small, batch {args.batch}, {torch.get_num_threads()} thread(s), "
          f"{args.steps} steps, each paired with its passes timed alone right after it")
    print(f"{'method':22s} {'step ms':>8s} {'passes ms':>9s} {'ratio':>6s} {'IQR':>13s}")
    for name, (method_name, config) in configs.items():
        pairs = paired_ratios(method_name, config, data, root / name, args.steps, net,
                              PASSES[name])
        ratios = [step / bare for step, bare in pairs]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        step = statistics.median(p[0] for p in pairs)
        bare = statistics.median(p[1] for p in pairs)
        label = {"edm": "EDM", "cd": "CD (Heun teacher)", "ct": "CT", "pd": "PD"}[name]
        print(f"{label:22s} {1e3 * step:8.1f} {1e3 * bare:9.1f} {median:6.3f} "
              f"{q1:6.3f}–{q3:.3f}")

if __name__ == "__main__":
    main()
