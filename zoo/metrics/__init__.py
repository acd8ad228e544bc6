"""Metrics shared by every method (one evaluator for all; see :mod:`zoo.bench`)."""

from __future__ import annotations

from zoo.hookspecs import hookimpl
from zoo.metrics.w2 import W2Metric, wasserstein2

__all__ = ["Metric", "W2Metric", "wasserstein2"]


class Metric:
    """A sample-quality metric. ``kinds``: the dataset kinds it applies to ("points", "image").

    ``compute(samples, dataset, *, seed)`` returns named numbers, e.g. ``{"W2": 0.031}``;
    ``lower_is_better`` maps each name to its direction (for tables: ↓ / ↑).
    """

    name: str = ""
    kinds: tuple[str, ...] = ()
    lower_is_better: dict[str, bool] = {}

    def compute(self, samples, dataset, *, seed: int = 0) -> dict[str, float]:
        raise NotImplementedError


@hookimpl
def register_metrics(register):
    register("w2", W2Metric())
