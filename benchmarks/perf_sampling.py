"""Sampling overhead: time of k-NFE sampling ÷ (k × one bare network forward, same batch).

Target ≤ 1.05. Rows: EDM Heun, 18 steps = 35 NFE (Karras et al. 2022,
Algorithm 1), and consistency sampling with 1 and 2 steps (Song et al. 2023, Algorithm 1), each
through ``zoo.diffusion.samplers.generate`` (per-sample seeded noise included). "Bare forward"
is the raw network F(c_in·x, c_noise) alone, without preconditioning or solver.

Side by side, a reference: EDM's deterministic sampler written out here from Algorithm 1 of
the EDM paper (x_{i+1} = x_i + (t_{i+1} − t_i)·½(d_i + d'_i), the last step Euler), on the same
denoiser and the same x_T; the ratio is our ``sample_heun`` time ÷ the reference's. Every ratio
pairs its two sides round by round (benchmarks/paired.py): the median of the per-round ratios
with its interquartile range, flagged where the halves of the rounds disagree.

    OMP_NUM_THREADS=1 python benchmarks/perf_sampling.py [--batch 64] [--rounds 21]
"""

from __future__ import annotations

import argparse
import time

import torch
from paired import add_clock_option, paired_ratio

from zoo.diffusion import Denoiser, append_zero, karras_sigmas
from zoo.diffusion.samplers import generate, sample_consistency, sample_heun
from zoo.nets import build_network


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def reference_heun(denoiser, x, t):
    """EDM Algorithm 1 (deterministic, S_churn = 0), transcribed from the paper's pseudocode."""
    for i in range(len(t) - 1):
        d = (x - denoiser(x, t[i])) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoiser(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t[i]) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def measure(case, name, shape, args):
    """Time one network's rows and print them."""
    net = build_network(name, shape).eval()
    edm, cm = Denoiser(net, "edm"), Denoiser(net, "consistency")
    x = torch.randn(args.batch, *shape)
    noise = torch.full((args.batch,), 0.25)
    heun = append_zero(karras_sigmas(18, 0.002, 80.0, 7.0))
    seeds = range(args.batch)
    rows = {
        "EDM Heun (18 steps)": (35, lambda: generate(edm, sample_heun, heun, shape, seeds,
                                                     batch_size=args.batch)),
        "CM 1 step": (1, lambda: generate(cm, sample_consistency, [80.0], shape, seeds,
                                          batch_size=args.batch)),
        "CM 2 steps": (2, lambda: generate(cm, sample_consistency, [80.0, 0.8], shape,
                                           seeds, batch_size=args.batch)),
        "ours: sample_heun": (35, lambda: sample_heun(edm, x * 80, heun)),
        "ref: EDM Algorithm 1": (35, lambda: reference_heun(edm, x * 80, heun.tolist())),
    }
    with torch.no_grad():
        for row, (nfe, fn) in rows.items():
            if row.startswith(("ours", "ref")):
                continue

            def forwards(nfe=nfe):
                for _ in range(nfe):
                    net(x, noise)

            result = paired_ratio(forwards, fn, rounds=args.rounds, clock=args.clock)
            print(f"{case:20s} {row:22s} {nfe:4d} {1e3 * result['b_s']:9.2f} "
                  f"{1e3 * result['a_s']:9.2f} {result['ratio']:6.3f} "
                  f"{result['q1']:6.3f}–{result['q3']:.3f}"
                  + ("" if result["stable"] else "  unstable: more --rounds"))
        ours, ref = rows["ours: sample_heun"][1], rows["ref: EDM Algorithm 1"][1]
        result = paired_ratio(ref, ours, rounds=args.rounds, clock=args.clock)
    same = torch.allclose(sample_heun(edm, x * 80, heun),
                          reference_heun(edm, x * 80, heun.tolist()), atol=1e-4)
    print(f"{case:20s} {'ours ÷ EDM Alg. 1 ref':22s} {35:4d} {1e3 * result['b_s']:9.2f} "
          f"{1e3 * result['a_s']:9.2f} {result['ratio']:6.3f}  (same samples: {same})")

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=21,
                        help="Paired rounds per ratio (benchmarks/paired.py).")
    add_clock_option(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {  # name: (network, data shape)
        "digits ddpmpp-small": ("ddpmpp-small", (1, 8, 8)),
        "toy mlp": ("mlp", (2,)),
    }
    print(f"batch {args.batch}, {torch.get_num_threads()} thread(s), medians of {args.rounds} "
          f"paired, interleaved rounds, {args.clock} clock")
    print(f"{'network':20s} {'sampler':22s} {'NFE':>4s} {'ms':>9s} {'k×fwd ms':>9s} {'ratio':>6s} "
          f"{'IQR':>13s}")
    for case, (name, shape) in cases.items():
        measure(case, name, shape, args)


if __name__ == "__main__":
    main()
