"""Per-sample noise: one-step consistency sampling of the toy MLP with the torch stream (EDM's
per-sample torch.Generator) and with the vectorised Philox stream, each against a bare loop
(the same Denoiser, noise from one torch.randn for the batch: what sampling costs without
per-sample streams). Ratios are paired and interleaved (benchmarks/paired.py).

    OMP_NUM_THREADS=1 python benchmarks/perf_noise.py [--batch 256 4096] [--rounds 21]
"""

from __future__ import annotations

import argparse

import torch
from paired import add_clock_option, describe, paired_ratio

from zoo.diffusion import Denoiser
from zoo.diffusion.samplers import generate, sample_consistency
from zoo.nets import build_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--rounds", type=int, default=21)
    add_clock_option(parser)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = build_network("mlp", (2,), hidden=64, num_layers=3).to(args.device)
    denoiser = Denoiser(net, "consistency", sigma_min=0.002).eval()
    sigmas = [80.0]  # one step from σ_max
    for batch in args.batch:
        bare, streams = timed_calls(denoiser, batch, sigmas[0], args.device)
        for stream, sampled in streams.items():
            result = paired_ratio(bare, sampled, rounds=args.rounds, clock=args.clock)
            print(describe(f"batch {batch}, {stream} stream / bare loop", result), flush=True)


def timed_calls(denoiser, batch: int, sigma: float, device: str):
    """The bare loop (one torch.randn for the batch, one denoiser call) and one-step sampling
    through ``generate`` with each stream, as calls to time."""

    @torch.no_grad()
    def bare():
        x = torch.randn(batch, 2, device=device) * sigma
        denoiser(x, torch.full((batch,), sigma, device=device))

    def sampled(stream):
        return lambda: generate(denoiser, sample_consistency, [sigma], (2,), range(batch),
                                batch_size=batch, device=device, stream=stream, sigma_min=0.002)

    return bare, {stream: sampled(stream) for stream in ("torch", "philox")}

if __name__ == "__main__":
    main()
