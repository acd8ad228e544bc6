"""ADM forward ÷ EDM's own DhariwalUNet forward with the same weights (Karras et al. 2022,
NVlabs/edm training/networks.py), paired and interleaved (benchmarks/paired.py). Target ≤ 1.00.
EDM's code is not part of zoo: point --edm at a checkout of NVlabs/edm (its training/, torch_utils/
and dnnlib/ are imported from there).

    OMP_NUM_THREADS=1 python benchmarks/perf_adm_vs_edm.py --edm PATH/TO/edm [--batch 8]
"""

from __future__ import annotations

import argparse
import sys

import torch
from paired import add_clock_option, describe, paired_ratio

from zoo.nets.adm import ADMUNet, dhariwal_state_dict_to_adm, dhariwal_to_adm_kwargs

#: A small ImageNet-64-like configuration (attention on 64-channel multiples, as EDM requires).
KWARGS = dict(img_resolution=64, in_channels=3, out_channels=3, label_dim=1000, model_channels=64,
              channel_mult=[1, 2, 3, 4], num_blocks=1, attn_resolutions=[32, 16, 8], dropout=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm", required=True, help="A checkout of NVlabs/edm.")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=21)
    add_clock_option(parser)
    args = parser.parse_args()
    sys.path.insert(0, args.edm)
    from training.networks import DhariwalUNet

    torch.manual_seed(0)
    edm = DhariwalUNet(**KWARGS).eval()
    for p in edm.parameters():  # EDM zero-initialises some layers: make every path count
        p.data.normal_(0, 0.05)
    adm = ADMUNet(**dhariwal_to_adm_kwargs(KWARGS)).eval()
    adm.load_state_dict(dhariwal_state_dict_to_adm(edm.state_dict()))
    x, sigma = torch.randn(args.batch, 3, 64, 64), torch.rand(args.batch)
    labels = torch.nn.functional.one_hot(torch.randint(1000, (args.batch,)), 1000).float()
    with torch.no_grad():
        gap = (adm(x, sigma, labels) - edm(x, sigma, labels)).abs().max().item()

        def ours():
            adm(x, sigma, labels)

        def theirs():
            edm(x, sigma, labels)

        result = paired_ratio(theirs, ours, rounds=args.rounds, clock=args.clock)
    print(describe(f"ADM / EDM's DhariwalUNet forward, batch {args.batch}", result))
    print(f"largest difference of the outputs: {gap:.2e}")


if __name__ == "__main__":
    main()
