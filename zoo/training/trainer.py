"""The training loop shared by every method.

A method hands the trainer a :class:`TrainingTask` (the module to optimise and its loss); the
trainer owns everything else: the one data loader, optimiser and learning-rate schedule, the
evaluation EMA, gradient clipping, progress, atomic checkpoints, resume, DDP (started by
:func:`zoo.distributed.init_distributed`), bf16 autocast, channels-last, torch.compile and TF32.
"""

from __future__ import annotations

import abc
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import zoo
from zoo import distributed
from zoo.data import BatchLoader
from zoo.training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from zoo.training.config import TrainConfig, config_to_dict, save_config
from zoo.training.ema import EMA, ema_beta


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


def _mix(*ints: int) -> int:
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

    So a run's noise does not depend on the number of processes, and resuming at step k draws
    exactly what the uninterrupted run drew.
    """

    def __init__(self, seed: int, step: int, global_batch: int, rank=0, world_size=1, device="cpu"):
        self.generator = torch.Generator().manual_seed(_mix(seed, step))
        self.global_batch = global_batch
        local = global_batch // world_size
        self.rows = slice(rank * local, (rank + 1) * local)
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
    step (e.g. to update a target network); ``state_dict``/``load_state_dict`` carry any extra
    state through checkpoints.
    """

    def __init__(self, net: nn.Module):
        self.net = net

    @abc.abstractmethod
    def loss(self, net: nn.Module, x: torch.Tensor, labels, noise: BatchNoise) -> torch.Tensor:
        """Per-sample losses [local_batch] (or their mean) for one batch."""

    def after_step(self, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Trainer:
    """Runs a :class:`TrainingTask` for ``config.iterations`` steps, writing ``run_dir``:
    ``config.json`` (resolved settings), ``checkpoint.pt`` (atomic) and ``log.jsonl``.
    """

    def __init__(self, task: TrainingTask, config: TrainConfig, dataset, run_dir, *, progress=True):
        config.validate()
        self.task, self.config, self.dataset = task, config, dataset
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = distributed.local_device(config.device)
        self.progress = progress and self.rank == 0
        self.net = task.net.to(self.device)
        if config.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.loader = BatchLoader(
            dataset,
            config.batch_size,
            seed=config.seed,
            rank=self.rank,
            world_size=self.world_size,
            hflip=config.hflip,
            device=self.device,
        )
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt_cls = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[config.optimizer]
        self.optimizer = opt_cls(
            params,
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        self.ema = EMA(
            self.net, ema_beta(config.ema_rate, config.ema_halflife_kimg, config.batch_size)
        )
        self.step = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def lr_at(self, step: int) -> float:
        c = self.config
        lr = c.lr
        if c.lr_warmup:
            lr *= min(1.0, (step + 1) / c.lr_warmup)
        if c.lr_decay == "linear":
            lr *= 1 - step / c.iterations
        return lr

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "method": self.config.method,
            "config": config_to_dict(self.config),
            "dataset": {
                "name": self.dataset.name,
                "checksum": self.dataset.checksum,
                "shape": list(self.dataset.shape),
                "kind": self.dataset.kind,
            },
            "net": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "task": self.task.state_dict(),
            "zoo_version": zoo.__version__,
        }

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.state_dict(), self.checkpoint_path)

    def restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        if state["method"] != self.config.method:
            raise CheckpointError(
                f"{self.checkpoint_path} belongs to method {state['method']!r}, "
                f"not {self.config.method!r}"
            )
        if state["dataset"]["checksum"] != self.dataset.checksum:
            raise CheckpointError(
                f"{self.checkpoint_path} was trained on different data "
                f"({state['dataset']['name']}, "
                f"checksum {state['dataset']['checksum'][:12]}) than {self.dataset.name} "
                f"(checksum {self.dataset.checksum[:12]})"
            )
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.task.load_state_dict(state["task"])
        self.step = state["step"]

    def fit(self, *, resume: bool = False, on_step=None) -> dict:
        """Train to ``config.iterations``. ``resume`` continues from ``run_dir``'s checkpoint.

        ``on_step(step, loss)`` is called after every step (progress hooks, tests).
        Returns ``{"step", "loss"}`` of the last step.
        """
        c = self.config
        if self.checkpoint_path.exists():
            if not resume:
                raise CheckpointError(
                    f"{self.run_dir} already holds a checkpoint; pass resume=True (--resume) to "
                    "continue it, or choose another run directory"
                )
            self.restore()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.run_dir / "config.json")
        net = self.net
        if self.world_size > 1:
            net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if c.compile:
            net = torch.compile(net)
        net.train()
        autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=c.precision == "bf16")
        fp32_precision = (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
        )
        if c.tf32:
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        log = open(self.run_dir / "log.jsonl", "a") if self.rank == 0 else None
        bar = tqdm(
            total=c.iterations,
            initial=self.step,
            disable=not self.progress,
            desc=f"train {c.method} on {c.dataset}",
            dynamic_ncols=True,
        )
        last_loss, window_loss, window_n, t0 = float("nan"), 0.0, 0, time.perf_counter()
        if self.step >= c.iterations:
            self.save()  # nothing to train: record the (possibly shortened) settings
        try:
            while self.step < c.iterations:
                step = self.step
                x, labels = next(self.loader)
                if c.channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                noise = BatchNoise(
                    c.seed, step, c.batch_size, self.rank, self.world_size, self.device
                )
                torch.manual_seed(_mix(c.seed, step, self.rank, 1))  # dropout and the like
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(step)
                with autocast:
                    loss = self.task.loss(net, x, labels, noise).mean()
                if not torch.isfinite(loss):
                    where = (
                        f"the last good checkpoint is kept at {self.checkpoint_path}"
                        if self.checkpoint_path.exists()
                        else "no checkpoint had been written yet"
                    )
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at iteration {step}: training stopped; {where}. "
                        "Lower --lr or set --grad-clip."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if c.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
                self.optimizer.step()
                self.ema.update(self.net)
                self.task.after_step(step)
                self.step = step + 1
                last_loss = loss.item()
                window_loss += last_loss
                window_n += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.iterations:
                    rate = window_n * c.batch_size / (time.perf_counter() - t0)
                    if self.world_size > 1:  # log the global batch's loss, not rank 0's share
                        window = torch.tensor(window_loss / self.world_size, device=self.device)
                        dist.all_reduce(window)
                        window_loss = window.item()
                    bar.set_postfix(loss=f"{window_loss / window_n:.4g}", samples_s=f"{rate:.0f}")
                    if log is not None:
                        row = {
                            "step": self.step,
                            "loss": window_loss / window_n,
                            "samples_per_s": rate,
                            "lr": self.lr_at(step),
                        }
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
                if self.step % c.checkpoint_every == 0 or self.step == c.iterations:
                    self.save()
                if on_step is not None:
                    on_step(self.step, last_loss)
        finally:
            torch.backends.cuda.matmul.fp32_precision = fp32_precision[0]
            torch.backends.cudnn.conv.fp32_precision = fp32_precision[1]
            bar.close()
            if log is not None:
                log.close()
        distributed.barrier()  # rank 0's last checkpoint is on disk when fit returns anywhere
        return {"step": self.step, "loss": last_loss if math.isfinite(last_loss) else None}
