"""The ``rf`` method: rectified flow / flow matching (Liu, Gong & Liu 2022) with Euler sampling
and reflow (2-rectified flow)."""

from zoo.hookspecs import hookimpl
from zoo_rf.flow import (
    RectifiedFlowLoss,
    ReflowPairs,
    VelocityField,
    euler_grid,
    interpolate,
    make_pairs,
    sample_rf_euler,
    velocity_target,
)
from zoo_rf.method import RectifiedFlow, RFConfig

ZOO_API_VERSION = 2

__all__ = [
    "RFConfig",
    "RectifiedFlow",
    "RectifiedFlowLoss",
    "ReflowPairs",
    "VelocityField",
    "euler_grid",
    "interpolate",
    "make_pairs",
    "sample_rf_euler",
    "velocity_target",
]


@hookimpl
def register_methods(register):
    register("rf", RectifiedFlow())


sample_rf_euler.parameterization = "velocity"  # a velocity field v(x, t), t = 1 − s


@hookimpl
def register_samplers(register):
    register("rf-euler", sample_rf_euler)
