"""ADM forward on the CPU: attention as two einsums in the channel-first layout (what the network
does on the CPU, as EDM's DhariwalUNet) ÷ torch's scaled_dot_product_attention on transposed
q, k, v (what it did before, and still does on CUDA). Paired, interleaved (benchmarks/paired.py).

    OMP_NUM_THREADS=1 python benchmarks/perf_adm.py [--batch 8] [--rounds 21]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from paired import add_clock_option, describe, paired_ratio

from zoo.nets.adm import ADMUNet, AttentionBlock


def sdpa_forward(self, x, emb=None):
    """The former attention: scaled_dot_product_attention on [B, heads, HW, d] views."""
    b, c, height, width = x.shape
    qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, -1)
    q, k, v = qkv.unbind(1)
    h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                       v.transpose(-1, -2))
    return x + self.proj_out(h.transpose(-1, -2).reshape(b, c, height, width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=21)
    add_clock_option(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    # a small ImageNet-64-like configuration: 64 px, attention at 32/16/8 px, 1000 classes
    net = ADMUNet(img_resolution=64, in_channels=3, out_channels=3, model_channels=64,
                  channel_mult=[1, 2, 3, 4], num_res_blocks=1, attn_resolutions=[32, 16, 8],
                  num_head_channels=32, label_dim=1000).eval()
    x, noise = torch.randn(args.batch, 3, 64, 64), torch.rand(args.batch)
    labels = torch.randint(1000, (args.batch,))
    einsum_forward = AttentionBlock.forward

    def run(forward):
        def call():
            AttentionBlock.forward = forward
            try:
                with torch.no_grad():
                    return net(x, noise, labels)
            finally:
                AttentionBlock.forward = einsum_forward
        return call

    same = (run(einsum_forward)() - run(sdpa_forward)()).abs().max().item()
    result = paired_ratio(run(sdpa_forward), run(einsum_forward), rounds=args.rounds,
                          clock=args.clock)
    print(describe(f"ADM forward, batch {args.batch}: einsum / SDPA attention", result))
    print(f"largest difference of the outputs: {same:.2e}")


if __name__ == "__main__":
    main()
