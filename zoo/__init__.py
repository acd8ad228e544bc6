"""zoo: a PyTorch model zoo for few-step generative models.

Consistency models (Song et al., 2023), the EDM teacher (Karras et al., 2022) and progressive
distillation (Salimans & Ho, 2022), each a pluggy plugin over one shared core.
"""

from zoo.hookspecs import hookimpl  # the marker a plugin decorates its hook functions with

__version__ = "0.2.0"

#: The distribution name (pip install fewstep-zoo): PyPI's `zoo` is an unrelated 2016 project.
DISTRIBUTION = "fewstep-zoo"

#: Version of the plugin API (hook specifications and the public modules listed in
#: docs/plugin-api.md). A plugin module may declare ``ZOO_API_VERSION``; a different major
#: version is refused at load time.
API_VERSION = 2

__all__ = ["API_VERSION", "__version__", "hookimpl"]
