"""torch.distributed for the zoo: start from torchrun's environment, rank helpers, and sharded
sampling whose result equals one process's.

``torchrun`` (https://pytorch.org/docs/stable/elastic/run.html) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every worker; :func:`init_distributed`
reads them (env:// rendezvous) and picks NCCL when CUDA is available, gloo otherwise. The trainer
then wraps the network in DDP by itself. See docs/distributed.md for the commands.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether the torchrun environment variables are present."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes checkpoints, logs and reports."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_distributed(backend: str | None = None, timeout_s: float = 1800) -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns ``(rank, world)``.

    Without those variables, or when already initialised, it changes nothing. ``backend``
    defaults to ``nccl`` with CUDA (each process then uses GPU ``LOCAL_RANK``) and ``gloo`` on
    CPU.
    """
    if is_distributed() or not launched_by_torchrun():
        return rank(), world_size()
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return rank(), world_size()


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` where CUDA is available, else ``cpu``; any other name unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def local_device(device) -> torch.device:
    """``device`` with this process's GPU index filled in (``cuda`` → ``cuda:LOCAL_RANK``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def shard(items: list) -> list:
    """This rank's contiguous share of ``items``: ranks get ⌈n/W⌉ items, the last ones fewer."""
    per_rank = -(-len(items) // world_size())
    return items[rank() * per_rank : (rank() + 1) * per_rank]


def _collective_device() -> torch.device:
    """Where collective tensors live: this process's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_max(value: int) -> int:
    """The largest ``value`` over all ranks (e.g. the NFE, when some rank sampled nothing)."""
    if not is_distributed():
        return value
    t = torch.tensor(value, dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def gather_samples(local: torch.Tensor, total: int) -> torch.Tensor:
    """Concatenate every rank's :func:`shard` of the samples in rank order, on every rank.

    ``local`` is this rank's ``[n_r, ...]``; the result is ``[total, ...]`` on ``local``'s device,
    in the order of the sharded list. Shards are padded to equal size for ``all_gather``.
    """
    if not is_distributed():
        return local
    per_rank = -(-total // world_size())
    device = _collective_device()
    padded = local.new_zeros(per_rank, *local.shape[1:], device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:total].to(local.device)
