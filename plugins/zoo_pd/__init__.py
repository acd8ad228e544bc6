"""The ``pd`` method: progressive distillation (Salimans & Ho 2022) of an EDM teacher in σ-space."""

from zoo.hookspecs import hookimpl
from zoo_pd.method import (
    PDConfig,
    PDLoss,
    ProgressiveDistillation,
    pd_sigmas,
    pd_target,
    sample_pd_euler,
    stage_plan,
    truncated_snr_weight,
)

__all__ = [
    "PDConfig",
    "PDLoss",
    "ProgressiveDistillation",
    "pd_sigmas",
    "pd_target",
    "sample_pd_euler",
    "stage_plan",
    "truncated_snr_weight",
]


@hookimpl
def register_methods(register):
    register("pd", ProgressiveDistillation())
