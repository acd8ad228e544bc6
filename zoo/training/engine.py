"""The network as it trains: DDP across processes, torch.compile, train mode, autocast (bf16, or
fp16 with the trainer's loss scaling), the CPU thread policy and TF32, all undone on exit."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from zoo.training.config import TrainConfig
from zoo.training.threads import choose_threads


@contextlib.contextmanager
def training_engine(net: nn.Module, config: TrainConfig, device: torch.device, world_size: int):
    """Yields ``(net as it trains, autocast context, threads, why those threads)``."""
    threads_before = torch.get_num_threads()
    threads, why = choose_threads(config.threads, sum(p.numel() for p in net.parameters()),
                                  device)
    fp32_precision = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
    )
    torch.set_num_threads(threads)
    try:
        trained = net
        if world_size > 1:
            trained = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            trained = torch.compile(trained)
        trained.train()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        autocast = torch.autocast(device.type, dtype or torch.bfloat16, enabled=dtype is not None)
        if config.tf32:
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        yield trained, autocast, threads, why
    finally:
        torch.backends.cuda.matmul.fp32_precision = fp32_precision[0]
        torch.backends.cudnn.conv.fp32_precision = fp32_precision[1]
        torch.set_num_threads(threads_before)
