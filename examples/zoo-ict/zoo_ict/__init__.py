"""zoo-ict: Improved Consistency Training (Song & Dhariwal 2023) as a third-party zoo plugin.

An example of a plugin in its own distribution: its ``pyproject.toml`` declares the entry point
``[project.entry-points.zoo] ict = "zoo_ict"``, and this module implements the hooks with zoo's
public API only (docs/plugins.md).
"""

import zoo

from zoo_ict.method import ICTConfig, ImprovedConsistencyTrainingMethod

#: The zoo plugin API this plugin was written against (``zoo.API_VERSION``).
ZOO_API_VERSION = 2

__all__ = ["ICTConfig", "ImprovedConsistencyTrainingMethod"]


@zoo.hookimpl
def register_methods(register):
    register("ict", ImprovedConsistencyTrainingMethod())
