"""The ``edm`` method: the EDM diffusion model (Karras et al. 2022), the zoo's teacher."""

from zoo.hookspecs import hookimpl
from zoo_edm.method import EDM, EDMConfig, EDMLoss

__all__ = ["EDM", "EDMConfig", "EDMLoss"]


@hookimpl
def register_methods(register):
    register("edm", EDM())
