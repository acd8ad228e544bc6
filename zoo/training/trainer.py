"""The training loop shared by every method.

A method hands the trainer a :class:`TrainingTask` (the module to optimise and its loss); the
trainer owns everything else: the one data loader, optimiser and learning-rate schedule, the
evaluation EMA, gradient clipping, progress, atomic checkpoints, resume, DDP (started by
:func:`zoo.distributed.init_distributed`), bf16 or fp16 autocast (:mod:`.engine`), channels-last,
torch.compile and TF32, and the telemetry (:mod:`.monitor`): ``log.jsonl`` scalars, sample grids
and periodic metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
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
    PREVIOUS_NAME,
    CheckpointError,
    damaged_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from zoo.training.config import TrainConfig, config_to_dict, same_setting, save_config
from zoo.training.cost import add_cost, empty_cost
from zoo.training.ema import EMA, ema_beta
from zoo.training.engine import training_engine
from zoo.training.monitor import METRICS_NAME, RunMonitor, duration_text, short_run_warnings
from zoo.training.rundir import (
    LOG_NAME,
    RunLock,
    RunLockedError,
    remove_stale_temporaries,
    trim_log,
)
from zoo.training.signals import StopSignals, TrainingInterrupted
from zoo.training.task import BatchNoise, TrainingTask, mix_seed


def grad_norm(parameters) -> torch.Tensor:
    """The total 2-norm of the parameters' gradients (what ``clip_grad_norm_`` measures)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def dataset_record(dataset) -> dict:
    """What a checkpoint records of its data (and what sampling needs: shape and kind)."""
    return {"name": dataset.name, "checksum": dataset.checksum, "shape": list(dataset.shape),
            "kind": dataset.kind}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


class Trainer:
    """Runs a :class:`TrainingTask` for ``config.iterations`` steps, writing ``run_dir``:
    ``checkpoint.pt`` (atomic; the one before it kept as ``checkpoint-prev.pt``), ``config.json``
    (the settings of that checkpoint, written after it), ``log.jsonl`` and, when asked,
    ``snapshots/`` of the EMA weights, ``samples/`` grids, ``metrics.jsonl`` and ``tensorboard/``.
    One process owns the directory at a time (:class:`RunLock`).

    ``sample_fn(module, n, *, step, device)`` returns the samples of seeds 0…n−1 from ``module``
    (the EMA denoiser) the way the method samples; the grids and metrics need it (a method's
    :meth:`~zoo.methods.Method.make_trainer` passes it).
    """

    def __init__(self, task: TrainingTask, config: TrainConfig, dataset, run_dir, *, progress=True,
                 echo=None, sample_fn=None):
        config.validate()
        self.task, self.config, self.dataset = task, config, dataset
        self.run_dir = Path(run_dir)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = distributed.local_device(config.device)
        self.progress = progress and self.rank == 0
        self._echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.monitor = RunMonitor(config, dataset, self.run_dir, sample_fn=sample_fn,
                                  rank=self.rank, echo=self.echo)
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
        self.ema = EMA(self.net)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        #: training images and network passes so far (:mod:`zoo.training.cost`); None for a
        #: run resumed from a checkpoint that has no such record
        self.cost: dict | None = add_cost(empty_cost(), task.setup_passes())
        #: the loss summed over the steps since the last log row, kept in checkpoints
        self.log_window = {"loss": 0.0, "steps": 0}

    def echo(self, message: str) -> None:
        if self.rank == 0:
            self._echo(message)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def lr_at(self, step: int) -> float:
        """Linear warm-up to the peak ``lr`` over ``lr_warmup`` steps, then constant or a linear
        decay from the peak to 0 at the last iteration."""
        c = self.config
        lr = c.lr
        if c.lr_warmup and step < c.lr_warmup:
            return lr * (step + 1) / c.lr_warmup
        if c.lr_decay == "linear":
            lr *= (c.iterations - step) / max(c.iterations - c.lr_warmup, 1)
        return lr

    def ema_beta_at(self, step: int) -> float:
        """β of the evaluation EMA's update after ``step`` (ramp-up by the samples seen)."""
        c = self.config
        return ema_beta(c.ema_rate, c.ema_halflife_kimg, c.batch_size, c.ema_rampup,
                        step * c.batch_size, step + 1 if c.ema_num_updates else 0)

    def _record(self) -> dict:
        return {
            "step": self.step,
            "method": self.config.method,
            "config": config_to_dict(self.config),
            "dataset": dataset_record(self.dataset),
            "zoo_version": zoo.__version__,
            "cost": self.cost,
        }

    def state_dict(self) -> dict:
        return {
            **self._record(),
            "net": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "task": self.task.state_dict(),
            "log_window": dict(self.log_window),
        }

    def save(self) -> None:
        """The checkpoint, then the config that belongs to it (rank 0)."""
        if self.rank == 0:
            save_checkpoint(self.state_dict(), self.checkpoint_path,
                            previous=self.run_dir / PREVIOUS_NAME)
            save_config(self.config, self.run_dir / "config.json")

    def save_snapshot(self) -> Path | None:
        """The EMA weights at this step in ``snapshots/snapshot-stepNNNNNNN.pt`` (a checkpoint
        that ``zoo sample --run`` loads), keeping the newest ``snapshot_keep``."""
        if self.rank != 0:
            return None
        folder = self.run_dir / "snapshots"
        path = save_checkpoint({**self._record(), "ema": self.ema.state_dict()},
                               folder / f"snapshot-step{self.step:07d}.pt")
        keep = self.config.snapshot_keep
        if keep:
            for old in sorted(folder.glob("snapshot-*.pt"))[:-keep]:
                old.unlink()
        return path

    def _due(self, every_kimg: float) -> bool:
        """Whether this step ends an interval of ``every_kimg`` thousand samples (0: never), or
        is the last step."""
        every = every_kimg * 1000
        if not every:
            return False
        b = self.config.batch_size
        return (self.step * b) // every > ((self.step - 1) * b) // every or (
            self.step == self.config.iterations)

    def restore(self) -> Path:
        """Load the latest readable checkpoint (falling back to the previous one, saying so);
        returns its path. Refuses checkpoints of another method, data or run settings."""
        state, path, note = load_latest_checkpoint(self.run_dir, map_location=self.device)
        if note:
            self.echo(f"warning: {note}")
        if state["method"] != self.config.method:
            raise CheckpointError(
                f"{path} belongs to method {state['method']!r}, not {self.config.method!r}"
            )
        if state["dataset"]["checksum"] != self.dataset.checksum:
            raise CheckpointError(
                f"{path} was trained on different data "
                f"({state['dataset']['name']}, "
                f"checksum {state['dataset']['checksum'][:12]}) than {self.dataset.name} "
                f"(checksum {self.dataset.checksum[:12]})"
            )
        ours = json.loads(json.dumps(config_to_dict(self.config)))
        theirs = json.loads(json.dumps(state["config"]))
        differ = [k for k in type(self.config).RESUME_FIXED if k in theirs
                  and not same_setting(k, theirs[k], ours.get(k))]
        if differ:
            raise CheckpointError(
                f"{path} was trained with other run-defining settings: "
                + "; ".join(f"{k}={theirs[k]!r}, asked {ours.get(k)!r}" for k in differ)
            )
        if "optimizer" not in state:
            raise CheckpointError(f"{path} holds weights only (a snapshot or an import), not a "
                                  "resumable training state")
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # fp16 runs: the loss scale reached
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.task.load_state_dict(state["task"])
        self.step = state["step"]
        self.cost = state.get("cost")
        # the steps since the last log row (a run saved before this was kept: none)
        self.log_window = state.get("log_window", {"loss": 0.0, "steps": 0})
        return path

    def fit(self, *, resume: bool = False, on_step=None) -> dict:
        """Train to ``config.iterations``. ``resume`` continues from ``run_dir``'s checkpoint
        (or starts, when it has none). The run directory is locked for the duration.

        ``on_step(step, loss)`` is called after every step (progress hooks, tests).
        Returns ``{"step", "loss"}`` of the last step. SIGINT/SIGTERM checkpoint the current step
        and raise :class:`TrainingInterrupted`.
        """
        lock = RunLock(self.run_dir) if self.rank == 0 else None
        refused = None
        if lock is not None:
            try:
                lock.acquire()
            except RunLockedError as exc:
                refused = exc
        if distributed.all_max(int(refused is not None)):
            raise refused or RunLockedError(f"{self.run_dir} is in use by another process")
        try:
            return self._fit(resume, on_step)
        finally:
            if lock is not None:
                lock.release()

    def _start(self, resume: bool) -> Path | None:
        """Continue the checkpoint or start anew (writing step 0); the checkpoint resumed."""
        if self.rank == 0:
            for path in remove_stale_temporaries(self.run_dir):
                self.echo(f"removed {path}, left by a write that was killed")
        # rank 0 looks, every rank waits for its answer: a rank looking by itself after rank 0
        # has written the step-0 checkpoint below would refuse it as a previous run's
        exists = self.rank == 0 and any(
            (self.run_dir / n).exists() for n in (CHECKPOINT_NAME, PREVIOUS_NAME))
        exists = bool(distributed.all_max(int(exists)))
        if exists and not resume:
            damage = damaged_checkpoints(self.run_dir) if self.rank == 0 else None
            raise CheckpointError(damage or (
                f"{self.run_dir} already holds a checkpoint; pass resume=True (--resume) to "
                "continue it, or choose another run directory"))
        if exists:
            path = self.restore()
            self.echo(f"resuming {self.run_dir} from step {self.step} ({path.name})")
            for name in (LOG_NAME, METRICS_NAME):
                if self.rank == 0 and trim_log(self.run_dir, self.step, name):
                    self.echo(f"{name}: dropped the rows after step {self.step}")
            return path
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for name in (LOG_NAME, METRICS_NAME):  # they belonged to no checkpoint
                (self.run_dir / name).unlink(missing_ok=True)
        self.save()  # step 0: the run is resumable (and its settings recorded) from the start
        return None

    def _log_step(self, step: int) -> bool:
        """Whether the log gets a row after ``step`` steps."""
        return step % self.config.log_every == 0 or step == self.config.iterations

    def _fit(self, resume: bool, on_step) -> dict:
        c = self.config
        resumed_from = self._start(resume)
        if self.step >= c.iterations:
            self.echo(
                f"{self.run_dir} already finished at step {self.step} (iterations={c.iterations});"
                f" pass --iterations larger than {self.step} to extend it"
            )
            distributed.barrier()
            return {"step": self.step, "loss": None}
        if self.rank == 0:  # the others would print the same
            for warning in short_run_warnings(self.config, self.lr_at, self.ema_beta_at):
                self.echo(f"warning: {warning}")
        engine = training_engine(self.net, self.config, self.device, self.world_size)
        with engine as (net, autocast, threads, why):
            log = open(self.run_dir / LOG_NAME, "a") if self.rank == 0 else None
            self.monitor.open(self.step)
            if log is not None:
                start = {"event": "start", "step": self.step, "threads": threads,
                         "threads_reason": why, "world_size": self.world_size,
                         "device": str(self.device),
                         "resumed_from": resumed_from and resumed_from.name,
                         "zoo_version": zoo.__version__}
                log.write(json.dumps(start) + "\n")
                log.flush()
            # a bar on a terminal; elsewhere (a batch job's log) one plain line per log row
            interactive = sys.stderr.isatty()
            bar = tqdm(
                total=c.iterations,
                initial=self.step,
                disable=not self.progress or not interactive,
                desc=f"train {c.method} on {c.dataset}",
                dynamic_ncols=True,
            )
            # the log's loss averages every step since the last row, those before a resume too
            last_loss, t0 = float("nan"), time.perf_counter()
            window_loss, window_n = self.log_window["loss"], self.log_window["steps"]
            resumed_steps = window_n  # trained before this start: not in the samples/s
            try:
                with StopSignals(self.echo) as stop:
                    while self.step < c.iterations:
                        logged = self._log_step(self.step + 1)
                        last_loss, norm = self._train_step(net, autocast, *next(self.loader),
                                                           measure_grad=logged)
                        window_loss += last_loss
                        window_n += 1
                        bar.update(1)
                        if logged:
                            rate = ((window_n - resumed_steps) * c.batch_size
                                    / (time.perf_counter() - t0))
                            if self.world_size > 1:  # the global batch's loss, not rank 0's share
                                window = torch.tensor(window_loss / self.world_size,
                                                      device=self.device)
                                dist.all_reduce(window)
                                window_loss = window.item()
                            bar.set_postfix(loss=f"{window_loss / window_n:.4g}",
                                            samples_s=f"{rate:.0f}")
                            eta = (c.iterations - self.step) * c.batch_size / rate
                            if self.progress and not interactive:
                                self.echo(f"{c.method} step {self.step}/{c.iterations} loss "
                                          f"{window_loss / window_n:.4g} samples/s {rate:.0f} "
                                          f"eta {duration_text(eta)}")
                            if log is not None:
                                self.monitor.write_row(log, {
                                    "step": self.step,
                                    "loss": window_loss / window_n,
                                    "samples_per_s": rate,
                                    "eta_s": eta,
                                    "lr": self.lr_at(self.step - 1),
                                    "grad_norm": norm.item(),
                                    **{f"train_{k}": v for k, v in (self.cost or {}).items()},
                                }, "train", self.task.metrics(self.step - 1))
                            window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
                            resumed_steps = 0
                        paused = time.perf_counter()
                        if self._due(c.sample_every_kimg):
                            self.monitor.write_grid(self.ema.module, self.step, self.device)
                        if self._due(c.eval_every_kimg):
                            self.monitor.measure(self.ema.module, self.step, self.device)
                        t0 += time.perf_counter() - paused  # samples/s counts training only
                        if self._due(c.snapshot_every_kimg):
                            self.save_snapshot()
                        signum = distributed.all_max(stop.signum or 0)
                        if (signum or self.step % c.checkpoint_every == 0
                                or self.step == c.iterations):
                            self.log_window = {"loss": window_loss, "steps": window_n}
                            self.save()
                        if signum:
                            raise TrainingInterrupted(signum, self.step, self.checkpoint_path)
                        if on_step is not None:
                            on_step(self.step, last_loss)
            finally:
                bar.close()
                if log is not None:
                    log.close()
                self.monitor.close()
        distributed.barrier()  # rank 0's last checkpoint is on disk when fit returns anywhere
        return {"step": self.step, "loss": last_loss if math.isfinite(last_loss) else None}

    def throughput(self, steps: int = 5, warmup: int = 2) -> float:
        """Samples per second of ``steps`` real training steps (after ``warmup`` untimed ones,
        e.g. compilation) on random data of the dataset's shape, set up as :meth:`fit` trains.
        Writes nothing; the weights and the step count do change."""
        c = self.config
        local = c.batch_size // self.world_size
        gen = torch.Generator().manual_seed(c.seed)
        x = (torch.rand(local, *self.dataset.shape, generator=gen) * 2 - 1).to(self.device)
        labels = self.dataset.labels
        if labels is not None:
            labels = labels[torch.randint(len(labels), (local,), generator=gen)].to(self.device)
        engine = training_engine(self.net, self.config, self.device, self.world_size)
        with engine as (net, autocast, _, _):
            for i in range(warmup + steps):
                if i == warmup:
                    start = time.perf_counter()
                self._train_step(net, autocast, x, labels, measure_grad=False)  # syncs: .item()
            return steps * c.batch_size / (time.perf_counter() - start)

    def _train_step(self, net, autocast, x, labels, *, measure_grad: bool):
        """One optimiser step at ``self.step`` on the batch ``(x, labels)`` (then
        ``self.step += 1``); returns the loss and the gradients' total norm before clipping
        (a tensor: always with ``grad_clip``, else only when ``measure_grad``; else None)."""
        c, step = self.config, self.step
        if c.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # dropout and the like: this process's generators only (torch.manual_seed also seeds
        # every accelerator backend, queueing their lazy seeding with a stack trace each step)
        seed = mix_seed(c.seed, step, self.rank, 1)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            index = torch.cuda.current_device() if self.device.index is None else self.device.index
            torch.cuda.default_generators[index].manual_seed(seed)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.zero_grad(set_to_none=True)
        # the per-process batch in passes of batch_gpu samples (EDM's --batch-gpu): each pass
        # draws its rows of the step's noise and adds its share of the mean's gradient; DDP
        # reduces the gradients once, after the last pass
        local = len(x)
        size = min(c.batch_gpu or local, local)
        loss = 0.0
        for start in range(0, local, size):
            rows = slice(start, start + size)
            noise = BatchNoise(c.seed, step, c.batch_size, self.rank, self.world_size,
                               self.device, part=(start, start + size))
            last = start + size >= local
            sync = contextlib.nullcontext() if last or self.world_size == 1 else net.no_sync()
            with sync:
                with autocast:
                    part = self.task.loss(net, x[rows], None if labels is None else labels[rows],
                                          noise).mean()
                if not torch.isfinite(part):
                    self._non_finite(part, step)
                # fp16: the loss scaled so its gradients do not underflow (GradScaler)
                self.scaler.scale(part * (size / local) if size < local else part).backward()
            loss = loss + part.detach() * (size / local)
        norm = None
        self.scaler.unscale_(self.optimizer)  # the true gradients for clipping and the norm
        if c.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.net.parameters(), c.grad_clip)
        elif measure_grad:
            norm = grad_norm(self.net.parameters())
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) on inf/NaN gradients
        self.scaler.update()
        self.ema.update(self.net, self.ema_beta_at(step))
        self.task.after_step(step)
        if self.cost is not None:
            passes = self.task.passes_per_sample()
            self.cost = add_cost(self.cost, {"images": c.batch_size,
                                             **{k: c.batch_size * v for k, v in passes.items()}})
        self.step = step + 1
        return loss.item(), norm

    def _non_finite(self, loss: torch.Tensor, step: int):
        where = (
            f"the last good checkpoint is kept at {self.checkpoint_path}"
            if self.checkpoint_path.exists()
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"loss is {loss.item()} at iteration {step}: training stopped; {where}. "
            "Lower --lr or set --grad-clip."
        )
