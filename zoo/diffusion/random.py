"""Per-sample random streams, so that a sample does not depend on the batch it is drawn in."""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np
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


#: Round r's Weyl increments r·(W0, W1), in swapped order for even r; the multipliers in both
#: orders (see :func:`_philox_rounds`). Moved to a device once per generator, never per draw: a
#: host-to-device copy would wait for the GPU's queue.
_WEYL = torch.tensor([[r * PHILOX_W[1], r * PHILOX_W[0]] if r % 2 == 0 else
                      [r * PHILOX_W[0], r * PHILOX_W[1]] for r in range(PHILOX_ROUNDS)])
_MULT = torch.tensor([PHILOX_M, PHILOX_M[::-1]])


def philox_key_schedule(key: torch.Tensor) -> torch.Tensor:
    """The round keys of Philox4x32-10 for ``key`` ``[..., 2]``: ``[..., 10, 2]``, round r's key
    (k0 + r·W0, k1 + r·W1) mod 2³², even rounds' in swapped order (see :func:`_philox_rounds`)."""
    both = torch.stack([key.flip(-1), key], -2)  # [..., 2, 2]: swapped, then as given
    rounds = both.repeat(*(1,) * (key.dim() - 1), PHILOX_ROUNDS // 2, 1)
    return (rounds + _WEYL.to(key.device)) & _U32


def _philox_rounds(even: torch.Tensor, odd: torch.Tensor, schedule: torch.Tensor,
                   mult: torch.Tensor):
    """The ten rounds on the counter words split as ``even`` = (c0, c2) and ``odd`` = (c3, c1)
    (``[..., 2]`` each, broadcast against ``schedule[..., r, :]``): returns (c0, c2), (c1, c3).

    A round multiplies (c0, c2) by (M0, M1) and sets c0 = hi(c2·M1) ^ c1 ^ k0, c1 = lo(c2·M1),
    c2 = hi(c0·M0) ^ c3 ^ k1, c3 = lo(c0·M0). Keeping ``even`` and ``odd`` in opposite word
    orders, which swap every round (the multipliers and round keys swapped with them), makes
    each round seven tensor operations with one copy, however large the batch. ``mult`` is
    :data:`_MULT` on the counter's device."""
    for r in range(PHILOX_ROUNDS):
        product = even * mult[r % 2]  # < 2⁶⁴: taken modulo 2⁶⁴ in int64, halves masked out
        low = product & _U32
        even = ((product >> 32) & _U32) ^ odd ^ schedule[..., r, :]
        odd = low.flip(-1) if r < PHILOX_ROUNDS - 1 else low
    return even, odd


def philox4x32(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of ``counter`` ``[..., 4]`` under ``key`` ``[..., 2]`` (uint32 values held
    in int64, broadcast): ``[..., 4]`` uint32 words, a counter-based generator's output, computed
    with tensor operations across all of them at once."""
    even, odd = _philox_rounds(counter[..., 0::2], counter[..., [3, 1]],
                               philox_key_schedule(key), _MULT.to(counter.device))
    return torch.stack([even, odd], -1).flatten(-2)


class PhiloxGenerator:
    """Per-sample random streams without a generator per sample: sample b's normals are
    Philox4x32-10 of the counter (block j, draw d) under the key of its own seed, turned into
    normals by Box–Muller (four per block), so a sample is the same alone or in any batch, and
    a batch's draws are a few tensor operations however large the batch (one kernel sequence on
    a GPU, where :class:`StackedGenerator` launches one per sample). Its numbers differ from
    :class:`StackedGenerator`'s (EDM's per-sample ``torch.Generator`` stream)."""

    def __init__(self, seeds, device="cpu"):
        self.device = torch.device(device)
        if isinstance(seeds, range):
            seeds64 = torch.arange(seeds.start, seeds.stop, seeds.step, device=self.device)
        else:
            seeds64 = torch.from_numpy(np.asarray(seeds, dtype=np.int64)).to(self.device)
        if seeds64.ndim != 1:
            raise ValueError(f"seeds must be a sequence of integers, got shape "
                             f"{tuple(seeds64.shape)}")
        keys = torch.stack([seeds64 & _U32, (seeds64 >> 32) & _U32], -1)  # [B, 2]
        self.schedule = philox_key_schedule(keys)[:, None]  # [B, 1, rounds, 2]
        self.mult = _MULT.to(self.device)
        self.draws = 0

    def __len__(self) -> int:
        return self.schedule.shape[0]

    def randn(self, size, dtype=torch.float32) -> torch.Tensor:
        """Standard normals ``[B, *size]``: this generator's next draw."""
        size = tuple(size)
        numel = 1
        for n in size:
            numel *= n
        blocks = (numel + 3) // 4
        # counter (c0, c1, c2, c3) = (block, draw mod 2³², draw div 2³², 0), the same for every
        # sample (only the keys differ), made on the device: no host-to-device copy per draw
        draw_low, draw_high = self.draws & _U32, (self.draws >> 32) & _U32
        self.draws += 1
        even = torch.full((blocks, 2), draw_high, dtype=torch.int64, device=self.device)
        even[:, 0] = torch.arange(blocks, device=self.device)
        odd = torch.zeros(1, 2, dtype=torch.int64, device=self.device)
        odd[0, 1] = draw_low
        words_r, words_a = _philox_rounds(even, odd, self.schedule, self.mult)  # (c0,c2), (c1,c3)
        # Box–Muller: a radius from each of c0, c2 and an angle from c1, c3, uniforms in (0, 1)
        radius = torch.sqrt(-2 * torch.log((words_r.to(torch.float64) + 0.5) / 2.0**32))
        angle = (words_a.to(torch.float64) + 0.5) * (2 * torch.pi / 2.0**32)
        normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], -1)
        normals = normals.reshape(len(self), -1)
        if normals.shape[1] != numel:
            normals = normals[:, :numel]
        return normals.reshape(len(self), *size).to(dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but {len(self)} per-sample streams")
        return self.randn(x.shape[1:], dtype=x.dtype).to(x.device)


#: The per-sample streams ``generate`` may use: ``philox`` (vectorised; the default) or
#: ``torch`` (EDM's stream: one torch.Generator per sample, what EDM's and openai's samplers
#: draw, and the stream of the tables recorded before Philox became the default).
STREAMS = {"torch": StackedGenerator, "philox": PhiloxGenerator}
DEFAULT_STREAM = "philox"
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
    """The per-sample stream in force (:func:`noise_stream`; :data:`DEFAULT_STREAM` outside
    any)."""
    return _STREAM.get()


def per_sample_generator(seeds, device="cpu", stream: str | None = None):
    """A generator of the per-sample ``stream`` (:data:`STREAMS`; ``None``: the one in force)
    for ``seeds``: row b of each draw comes from ``seeds[b]`` alone."""
    return STREAMS[check_stream(stream or current_stream())](seeds, device)
