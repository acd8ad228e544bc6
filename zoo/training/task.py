"""What a method hands the trainer: a :class:`TrainingTask` (the module to optimise and its loss),
and the noise its loss draws, :class:`BatchNoise`, which depends only on the run's seed, the step
and each sample's place in the global batch."""

from __future__ import annotations

import abc

import torch
from torch import nn


def mix_seed(*ints: int) -> int:
    """Combine integers into one 63-bit seed (SplitMix64-style), deterministic across runs."""
    h = 0x9E3779B97F4A7C15
    for v in ints:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class BatchNoise:
    """The random numbers of one training step, drawn for the whole global batch from a generator
    seeded by (seed, step), then sliced to this rank's samples.

    So a run's noise does not depend on the number of processes, nor on how a process splits its
    share into passes (``part``: the rows ``[start, stop)`` of its share that one accumulation pass
    trains on), and resuming at step k draws exactly what the uninterrupted run drew.
    """

    def __init__(self, seed: int, step: int, global_batch: int, rank=0, world_size=1, device="cpu",
                 part: tuple[int, int] | None = None):
        self.generator = torch.Generator().manual_seed(mix_seed(seed, step))
        self.global_batch = global_batch
        local = global_batch // world_size
        start, stop = part or (0, local)
        self.rows = slice(rank * local + start, rank * local + stop)
        self.device = torch.device(device)

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.rows].to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal, shape [local_batch, *shape]."""
        return self._local(torch.randn(self.global_batch, *shape, generator=self.generator))

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform on [0, 1), shape [local_batch, *shape]."""
        return self._local(torch.rand(self.global_batch, *shape, generator=self.generator))

    def randint(self, low: int, high: int) -> torch.Tensor:
        """One integer in [low, high) per sample, shape [local_batch]."""
        return self._local(torch.randint(low, high, (self.global_batch,), generator=self.generator))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(*x.shape[1:]).to(x.dtype)


class TrainingTask(abc.ABC):
    """What a method gives the trainer: ``net``, the module whose parameters are optimised, and
    ``loss(net, x, labels, noise)`` returning per-sample losses (or their mean).

    ``loss`` must call the ``net`` it is given (under DDP that is the wrapped module, which is
    what synchronises gradients), not ``self.net``. ``after_step`` runs after each optimiser
    step (e.g. to update a target network); ``metrics`` adds the method's own scalars to the
    log; ``state_dict``/``load_state_dict`` carry any extra state through checkpoints;
    ``passes_per_sample`` and ``setup_passes`` declare the training cost (:mod:`zoo.training.cost`).
    """

    def __init__(self, net: nn.Module):
        self.net = net

    @abc.abstractmethod
    def loss(self, net: nn.Module, x: torch.Tensor, labels, noise: BatchNoise) -> torch.Tensor:
        """Per-sample losses [local_batch] (or their mean) for one batch."""

    def after_step(self, step: int) -> None:
        pass

    def passes_per_sample(self) -> dict[str, int]:
        """Network passes per training sample of one step, every network counted (online,
        target, teacher): ``{"forward": f, "backward": b}``, a JVP counting as two forward
        passes. By default one forward and one backward pass (a plain regression loss)."""
        return {"forward": 1, "backward": 1}

    def setup_passes(self) -> dict[str, int]:
        """Network passes made once per run, before training (e.g. a reflow round's pairs):
        ``{"forward": f, "backward": b}``; none by default."""
        return {"forward": 0, "backward": 0}

    def metrics(self, step: int) -> dict[str, float]:
        """Method-specific scalars of training step ``step`` (0-based) for the log rows and
        TensorBoard, e.g. a schedule's current values; none by default."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
