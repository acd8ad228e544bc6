"""The ``ect`` method: easy consistency tuning (Geng et al. 2024), consistency training started
from an ``edm`` run's weights with a Δt that shrinks over training."""

from zoo.hookspecs import hookimpl
from zoo_ect.loss import EasyConsistencyTuning, ect_dt, ect_stage, mapping_n, pseudo_huber
from zoo_ect.method import ECT, ECTConfig

ZOO_API_VERSION = 2

__all__ = ["ECT", "ECTConfig", "EasyConsistencyTuning", "ect_dt", "ect_stage", "mapping_n",
           "pseudo_huber"]


@hookimpl
def register_methods(register):
    register("ect", ECT())
