"""Per-sample random streams, so that a sample does not depend on the batch it is drawn in."""

from __future__ import annotations

import contextlib
import contextvars

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


# Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"): the
# multipliers and Weyl key increments of Random123.
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
_U32 = 0xFFFFFFFF


def philox4x32(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of ``counter`` ``[..., 4]`` under ``key`` ``[..., 2]`` (uint32 values held
    in int64, broadcast): ``[..., 4]`` uint32 words, a counter-based generator's output, computed
    with tensor operations across all of them at once (products of two 32-bit words taken
    modulo 2⁶⁴ in int64, their halves masked out)."""
    c0, c1, c2, c3 = counter.unbind(-1)
    k0, k1 = key.unbind(-1)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & _U32, (k1 + PHILOX_W[1]) & _U32
        p0, p1 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        c0, c1, c2, c3 = (((p1 >> 32) & _U32) ^ c1 ^ k0, p1 & _U32,
                          ((p0 >> 32) & _U32) ^ c3 ^ k1, p0 & _U32)
    return torch.stack([c0, c1, c2, c3], -1)


class PhiloxGenerator:
    """Per-sample random streams without a generator per sample: sample b's normals are
    Philox4x32-10 of the counter (block j, draw d) under the key of its own seed, turned into
    normals by Box–Muller (four per block), so a sample is the same alone or in any batch, and
    a batch's draws are a few tensor operations however large the batch (one kernel sequence on
    a GPU, where :class:`StackedGenerator` launches one per sample). Its numbers differ from
    :class:`StackedGenerator`'s (EDM's per-sample ``torch.Generator`` stream)."""

    def __init__(self, seeds, device="cpu"):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        seeds64 = torch.tensor(self.seeds, dtype=torch.int64, device=self.device)
        self.keys = torch.stack([seeds64 & _U32, (seeds64 >> 32) & _U32], -1)  # [B, 2]
        self.draws = 0

    def __len__(self) -> int:
        return len(self.seeds)

    def randn(self, size, dtype=torch.float32) -> torch.Tensor:
        """Standard normals ``[B, *size]``: this generator's next draw."""
        size = tuple(size)
        numel = 1
        for n in size:
            numel *= n
        blocks = (numel + 3) // 4
        counter = torch.zeros(len(self), blocks, 4, dtype=torch.int64, device=self.device)
        counter[..., 0] = torch.arange(blocks, device=self.device)
        counter[..., 1] = self.draws & _U32
        counter[..., 2] = (self.draws >> 32) & _U32
        self.draws += 1
        words = philox4x32(counter, self.keys[:, None, :]).to(torch.float64)
        uniform = (words + 0.5) / 2.0**32  # in (0, 1): the logarithm below is finite
        radius = torch.sqrt(-2 * torch.log(uniform[..., 0::2]))
        angle = 2 * torch.pi * uniform[..., 1::2]
        normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], -1)
        return normals.reshape(len(self), -1)[:, :numel].reshape(len(self), *size).to(dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but {len(self)} per-sample streams")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


#: The per-sample streams ``generate`` may use: ``torch`` (EDM's stream: one torch.Generator
#: per sample; the default, the stream every recorded table used) or ``philox`` (vectorised).
STREAMS = {"torch": StackedGenerator, "philox": PhiloxGenerator}
DEFAULT_STREAM = "torch"
_STREAM = contextvars.ContextVar("zoo_noise_stream", default=DEFAULT_STREAM)


def check_stream(name: str) -> str:
    if name not in STREAMS:
        raise ValueError(f"noise stream {name!r}; accepted: {', '.join(STREAMS)}")
    return name


@contextlib.contextmanager
def noise_stream(name: str):
    """Within the block, ``generate`` draws from the per-sample stream ``name`` (:data:`STREAMS`)
    unless a call names its own: ``zoo sample`` and ``zoo bench --noise-stream`` set it, so a
    method's ``sample`` needs no option of its own."""
    token = _STREAM.set(check_stream(name))
    try:
        yield
    finally:
        _STREAM.reset(token)


def current_stream() -> str:
    """The per-sample stream in force (:func:`noise_stream`; ``torch`` outside any)."""
    return _STREAM.get()
