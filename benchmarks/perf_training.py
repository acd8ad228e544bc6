"""Training-step efficiency: one step of the shared trainer ÷ the sum of its network passes timed
alone. Target ≤ 1.10.

Per method, the passes of one step on the same batch (B samples of 8×8 digits, ddpmpp-small):
  EDM (Karras et al. 2022):        online forward + backward
  CD, Heun teacher (Song et al.):  online fwd+bwd, 2 teacher and 1 target forwards (no grad)
  CT:                              online fwd+bwd, 1 target forward (no grad)
  PD (Salimans & Ho 2022):         online fwd+bwd, 2 teacher forwards (no grad)
"Alone" is the bare network F(x, c_noise) with random inputs; the step is the interval between
the trainer's ``on_step`` calls (loader, noise, preconditioning, loss, Adam, EMA, target update
included), median over the measured steps. Everything in one run; the machine may be shared.

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


def step_time(method_name, config, data, run_dir, steps, warmup=2) -> float:
    method = zoo.plugins.get("methods", method_name)
    config.method = method.name
    config.iterations = warmup + steps + 1  # the last step writes a checkpoint: not timed
    stamps = []
    trainer = Trainer(method.make_task(config, data), config, data, run_dir, progress=False)
    trainer.fit(on_step=lambda step, loss: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(stamps[warmup:-2], stamps[warmup + 1:-1],
                                                   strict=True))


def pass_times(net, batch, shape, reps) -> tuple[float, float]:
    """Median (forward + backward, forward without grad) of the bare network."""
    x, noise = torch.randn(batch, *shape), torch.rand(batch)

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        net(x, noise).square().mean().backward()

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.no_grad():
        nograd = [timed(lambda: net(x, noise)) for _ in range(reps + 1)][1:]
    train = [timed(fwd_bwd) for _ in range(reps + 1)][1:]
    return statistics.median(train), statistics.median(nograd)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    common = dict(network="ddpmpp-small", batch_size=args.batch, checkpoint_every=10_000,
                  log_every=10_000, lr=1e-4)
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
          f"medians of {args.steps} steps")
    print(f"{'method':22s} {'step ms':>8s} {'passes ms':>9s} {'ratio':>6s}")
    for name, (method_name, config) in configs.items():
        step = step_time(method_name, config, data, root / name, args.steps)
        train, nograd = pass_times(net, args.batch, data.shape, args.steps)
        passes = train + PASSES[name] * nograd
        label = {"edm": "EDM", "cd": "CD (Heun teacher)", "ct": "CT", "pd": "PD"}[name]
        print(f"{label:22s} {1e3 * step:8.1f} {1e3 * passes:9.1f} {step / passes:6.3f}")


if __name__ == "__main__":
    main()
