"""The ``meanflow`` method: MeanFlow (Geng et al. 2025), one-step generation from the average
velocity, trained from scratch through the MeanFlow identity."""

from zoo.hookspecs import hookimpl
from zoo_meanflow.loss import (
    MeanFlowLoss,
    adaptive_loss,
    meanflow_target,
    sample_meanflow,
    sample_times,
)
from zoo_meanflow.method import MeanFlow, MeanFlowConfig
from zoo_meanflow.net import MeanFlowNet, TimePairEmbedding

__all__ = [
    "MeanFlow",
    "MeanFlowConfig",
    "MeanFlowLoss",
    "MeanFlowNet",
    "TimePairEmbedding",
    "adaptive_loss",
    "meanflow_target",
    "sample_meanflow",
    "sample_times",
]


@hookimpl
def register_methods(register):
    register("meanflow", MeanFlow())


sample_meanflow.parameterization = "average-velocity"  # u_θ(z, (r, t)), not a denoiser


@hookimpl
def register_samplers(register):
    register("meanflow", sample_meanflow)
