"""The ``cm`` method: Consistency Models (Song et al. 2023), distilled from an ``edm`` teacher
(CD) or trained alone (CT), with the continuous-time objectives CD∞ and CT∞."""

from zoo.hookspecs import hookimpl
from zoo_cm.method import CMConfig, ConsistencyModels

__all__ = ["CMConfig", "ConsistencyModels"]


@hookimpl
def register_methods(register):
    register("cm", ConsistencyModels())
