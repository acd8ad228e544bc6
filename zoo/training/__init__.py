"""The one training loop every method uses: optimiser, EMA, checkpoints, resume, progress."""

from zoo.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from zoo.training.config import TrainConfig, config_from_dict, config_to_dict, setting
from zoo.training.ema import EMA
from zoo.training.signals import TrainingInterrupted
from zoo.training.task import BatchNoise, TrainingTask
from zoo.training.trainer import NonFiniteLossError, Trainer

__all__ = [
    "EMA",
    "BatchNoise",
    "CheckpointError",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "TrainingTask",
    "config_from_dict",
    "config_to_dict",
    "load_checkpoint",
    "save_checkpoint",
    "setting",
]
