"""The ``scm`` method: sCM (Lu & Song 2024), continuous-time consistency training (sCT) and
distillation (sCD) in the TrigFlow parameterisation, with tangent normalisation, tangent warm-up
and adaptive weighting, started from an ``edm`` run."""

from zoo.hookspecs import hookimpl
from zoo_scm.loss import (
    SCMLoss,
    adaptive_weighted_loss,
    normalize_tangent,
    scm_tangent,
    tangent_warmup,
)
from zoo_scm.method import SCM, SCMConfig
from zoo_scm.trigflow import (
    AdaptiveWeight,
    TrigFlowConsistency,
    edm_from_trigflow,
    sample_times,
    teacher_velocity,
    trigflow_from_edm,
)

ZOO_API_VERSION = 2

__all__ = [
    "SCM",
    "AdaptiveWeight",
    "SCMConfig",
    "SCMLoss",
    "TrigFlowConsistency",
    "adaptive_weighted_loss",
    "edm_from_trigflow",
    "normalize_tangent",
    "sample_times",
    "scm_tangent",
    "tangent_warmup",
    "teacher_velocity",
    "trigflow_from_edm",
]


@hookimpl
def register_methods(register):
    register("scm", SCM())
