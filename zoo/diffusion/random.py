"""Per-sample random streams, so that a sample does not depend on the batch it is drawn in."""

from __future__ import annotations

import torch


class StackedGenerator:
    """One ``torch.Generator`` per sample, seeded from that sample's own seed.

    ``randn([3, 2])`` returns shape [B, 3, 2] where row b comes from seed ``seeds[b]`` alone,
    so drawing sample 7 alone or in a batch of 64 gives the same numbers.
    """

    def __init__(self, seeds, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, size, dtype=torch.float32) -> torch.Tensor:
        return torch.stack(
            [
                torch.randn(tuple(size), generator=g, device=self.device, dtype=dtype)
                for g in self.generators
            ]
        )

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but {len(self)} per-sample generators")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)
