"""What a run shows while it trains, beside its checkpoints: the log rows and their TensorBoard
and Weights & Biases scalars, sample grids (``samples/``) and periodic measurements of the
dataset's metrics (``metrics.jsonl``), all from the evaluation EMA, all written by rank 0."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zoo.metrics import default_metrics, evaluate, min_samples
from zoo.training.config import TrainConfig, config_to_dict
from zoo.training.ema import initialisation_weight
from zoo.viz import save_samples_picture

METRICS_NAME = "metrics.jsonl"
SAMPLES_DIR = "samples"
TENSORBOARD_DIR = "tensorboard"


def duration_text(seconds: float) -> str:
    """``2d 3h 4m``, ``5h 6m`` or ``7m 8s``."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m" if h else f"{m}m {s}s"


def short_run_warnings(config: TrainConfig, lr_at, ema_beta_at) -> list[str]:
    """What a run's settings hide (a preset made for a long run, tried short): an evaluation EMA
    that after the last step still holds more than 1 % of the initial weights (Πβ over every
    update, whichever form its rate takes), and a learning-rate warm-up longer than the run."""
    warnings = []
    left = initialisation_weight([ema_beta_at(step) for step in range(config.iterations)])
    if left > 0.01:
        warnings.append(
            f"after the {config.iterations} iterations this run trains, {left:.0%} of its "
            "evaluation EMA will still be the initial weights. Sample with --weights raw, or "
            "set --ema-num-updates, --ema-rampup or a shorter --ema-halflife-kimg / lower "
            "--ema-rate.")
    if config.lr_warmup >= config.iterations:
        warnings.append(
            f"the {config.lr_warmup}-iteration learning-rate warm-up is longer than the "
            f"{config.iterations} iterations this run trains: the lr ends at "
            f"{lr_at(config.iterations - 1):.3g}, short of its peak {config.lr:g}. Set a "
            "shorter --lr-warmup for a short run.")
    return warnings


def summary_writer_class():
    """torch's TensorBoard ``SummaryWriter``, or a clear error naming the package to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError(
            "--tensorboard needs the tensorboard package, which is not installed: "
            "pip install tensorboard (or pip install 'fewstep-zoo[tensorboard]'), or drop "
            "--tensorboard"
        ) from None
    return SummaryWriter


def eval_samples(config: TrainConfig, dataset) -> int:
    """Samples per ``eval_every_kimg`` measurement: ``eval_n``, or 5000 for FID, else 2000."""
    return config.eval_n or (5000 if "fid" in default_metrics(dataset) else 2000)


class RunMonitor:
    """The telemetry of one run in ``run_dir``. ``sample_fn(module, n, *, step, device)``
    returns the samples of seeds 0…n−1 from ``module`` the way the method samples (grids and
    metrics need it). Everything it needs is checked when it is made: the sampler, enough
    samples for the metrics, TensorBoard installed."""

    def __init__(self, config: TrainConfig, dataset, run_dir: Path, *, sample_fn, rank: int,
                 echo):
        if sample_fn is None and (config.sample_every_kimg or config.eval_every_kimg):
            raise ValueError("sample_every_kimg and eval_every_kimg need the method's sampler: "
                             "build the trainer with Method.make_trainer")
        if config.eval_every_kimg:
            n = eval_samples(config, dataset)
            short = [f"{m} needs {k}" for m in default_metrics(dataset)
                     if n < (k := min_samples(m))]
            if short:
                raise ValueError(f"eval_n={config.eval_n} gives {n} samples per measurement, too "
                                 f"few: {'; '.join(short)}; pass eval_n >= "
                                 f"{max(map(min_samples, default_metrics(dataset)))} or 0 (the "
                                 "default)")
        self.writer_class = summary_writer_class() if config.tensorboard else None
        self.writer = None
        self.wandb = self.wandb_run = None
        if config.wandb_project:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("--wandb-project needs the wandb package, which is not "
                                   "installed: pip install wandb, or drop --wandb-project"
                                   ) from None
            self.wandb = wandb
        self.config, self.dataset, self.run_dir = config, dataset, Path(run_dir)
        self.sample_fn, self.rank, self.echo = sample_fn, rank, echo

    def open(self, step: int) -> None:
        """Start TensorBoard at ``step`` (rank 0): what a killed run logged after its
        checkpoint is dropped (``purge_step``)."""
        if self.writer_class is not None and self.rank == 0:
            self.writer = self.writer_class(str(self.run_dir / TENSORBOARD_DIR), purge_step=step)
        if self.wandb is not None and self.rank == 0:
            # one W&B run per run directory: a resumed run continues it
            run_id = hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
            self.wandb_run = self.wandb.init(
                project=self.config.wandb_project, id=run_id, resume="allow",
                name=self.run_dir.name, dir=str(self.run_dir),
                config=json.loads(json.dumps(config_to_dict(self.config))))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def write_row(self, file, row: dict, group: str, extra: dict | None = None) -> None:
        """``row`` (with a method's ``extra`` scalars) as one JSON line of ``file`` and, with
        TensorBoard, its numbers as the scalars ``group/NAME`` at ``row["step"]``."""
        clash = sorted(set(extra or {}) & set(row))
        if clash:
            raise ValueError(f"the task's metrics reuse the log's names: {', '.join(clash)}")
        row = {**row, **(extra or {})}
        file.write(json.dumps(row) + "\n")
        file.flush()
        scalars = {f"{group}/{name}": value for name, value in row.items()
                   if name != "step" and isinstance(value, (int, float))}
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, row["step"])
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=row["step"])

    def write_grid(self, module, step: int, device) -> Path | None:
        """``samples/grid-stepNNNNNNN.png``: ``sample_n`` samples of fixed seeds from
        ``module`` (a scatter plot for points), also in TensorBoard; rank 0 writes it (every
        rank samples)."""
        kind = self.dataset.kind
        n = self.config.sample_n or (64 if kind == "image" else 1000)
        x = self.sample_fn(module, n, step=step, device=device)
        if self.rank != 0:
            return None
        path = save_samples_picture(x, kind, self.run_dir / SAMPLES_DIR /
                                    f"grid-step{step:07d}.png", title=f"step {step}")
        if self.writer is not None:
            picture = np.asarray(Image.open(path).convert("RGB"))
            self.writer.add_image("samples", picture, step, dataformats="HWC")
        if self.wandb_run is not None:
            self.wandb_run.log({"samples": self.wandb.Image(str(path))}, step=step)
        return path

    def measure(self, module, step: int, device) -> dict | None:
        """The dataset's default metrics (:func:`zoo.metrics.evaluate`) on ``eval_n`` samples of
        fixed seeds from ``module``, appended to ``metrics.jsonl`` (and TensorBoard) by rank 0,
        which returns the row."""
        c = self.config
        n = eval_samples(c, self.dataset)
        start = time.perf_counter()
        x = self.sample_fn(module, n, step=step, device=device)
        if self.rank != 0:
            return None
        row = {"step": step, "kimg": step * c.batch_size / 1000, "n": n}
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        if bad:
            row["nonfinite_samples"] = bad
            self.echo(f"warning: step {step}: {bad} of {n} samples are not finite; "
                      "metrics skipped")
        else:
            row.update(evaluate(x, self.dataset, finite=False))  # a diverged run scores inf
        row["seconds"] = time.perf_counter() - start
        with open(self.run_dir / METRICS_NAME, "a") as f:
            self.write_row(f, row, "eval")
        return row
