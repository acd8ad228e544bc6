"""The one batch loader every method trains on.

The sample order is an infinite stream of dataset indices: the concatenation of per-epoch
permutations, epoch ``e``'s drawn from a generator seeded with ``seed·1_000_003 + e``. Global
batch ``s`` is stream positions ``[s·B, (s+1)·B)`` (so ``B`` may exceed the dataset size); rank
``r`` of ``W`` gets the ``r``-th contiguous ``B/W`` of it. Horizontal flips are drawn from the
same per-epoch generator, one per stream position. Batches therefore depend only on
``(seed, step)`` and the dataset: not on the method, the world size or where training resumed.
Images in memory are indexed there (on ``device``); streamed ones
(:class:`~zoo.data.hdf5.StreamedImages`) read only the batch's rows from their HDF5 file.
"""

from __future__ import annotations

import torch

from zoo.data.datasets import Dataset

EPOCH_SEED_STRIDE = 1_000_003


class BatchLoader:
    """Infinite iterator over ``(x, labels)`` batches (``labels`` is ``None`` without labels).

    ``batch_size`` is the global batch; each of the ``world_size`` ranks gets
    ``batch_size // world_size`` samples. ``hflip=True`` flips each image horizontally with
    probability 1/2 (images only).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, hflip: bool = False, device="cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by world_size {world_size}"
            )
        if hflip and dataset.kind != "image":
            raise ValueError(f"hflip is for images; dataset {dataset.name!r} holds {dataset.kind}")
        if len(dataset.x) == 0:
            raise ValueError(f"dataset {dataset.name!r} is empty")
        self.dataset = dataset
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.hflip = hflip
        self.device = torch.device(device)
        self.step = 0
        self._x = dataset.x.to(self.device) if isinstance(dataset.x, torch.Tensor) else dataset.x
        self._labels = None if dataset.labels is None else dataset.labels.to(self.device)
        self._epochs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Epoch ``epoch``'s permutation and, with hflip, its flip decisions."""
        if epoch not in self._epochs:
            n = len(self._x)
            generator = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
            order = torch.randperm(n, generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5 if self.hflip else None
            self._epochs[epoch] = (order, flips)
        return self._epochs[epoch]

    def _stream(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dataset indices (and flips) at stream positions ``[start, stop)``."""
        n = len(self._x)
        first, last = start // n, (stop - 1) // n
        self._epochs = {e: v for e, v in self._epochs.items() if first <= e <= last}
        indices, flips = [], []
        for epoch in range(first, last + 1):
            order, flip = self._epoch(epoch)
            lo, hi = max(start, epoch * n) - epoch * n, min(stop, (epoch + 1) * n) - epoch * n
            indices.append(order[lo:hi])
            if flip is not None:
                flips.append(flip[lo:hi])
        return torch.cat(indices), torch.cat(flips) if flips else None

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's share of global batch ``step``; a pure function of ``step``."""
        start = step * self.batch_size + self.rank * self.local_batch_size
        indices, flips = self._stream(start, start + self.local_batch_size)
        x = self._x[indices.to(self._x.device)].to(self.device)
        indices = indices.to(self.device)
        if flips is not None:
            x = torch.where(flips.to(self.device).view(-1, 1, 1, 1), x.flip(-1), x)
        return x, None if self._labels is None else self._labels[indices]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the batch after the one saved; the world size may differ."""
        for key in ("seed", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state has {key}={state[key]} but this loader has "
                    f"{key}={getattr(self, key)}; resuming would change the data order"
                )
        self.step = int(state["step"])
