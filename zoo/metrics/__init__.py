"""Metrics shared by every method: one evaluator for all (used by :mod:`zoo.bench`).

Registered metrics (``evaluate(samples, dataset, metrics=[...])``):

- ``w2`` (points): ``W2``, exact Wasserstein-2 against fresh true samples, and ``W2 floor``,
  W2 between two independent true sets (the sampling noise a perfect model still shows).
- ``fd-digits`` (1×8×8 digits): ``FD-digits``, ``IS-digits``, ``KID-digits``,
  ``precision-digits``, ``recall-digits`` in the feature space of the shipped digits classifier.
- ``fdinf-digits`` and ``memorisation-digits`` (the digits training split): FD comparable with
  the held-out split's floor (``FD297-digits``, ``FD∞-digits``, ``FD∞-digits held-out``) and
  the share of samples nearer to a training image than held-out images are
  (``memorised-digits``), each with its floor (:mod:`zoo.metrics.held_out`).
- ``fid`` (CIFAR-10, image folders): ``FID``, ``IS``, ``KID``, ``precision``, ``recall`` with
  torch-fidelity's Inception (weights: :func:`zoo.metrics.fidelity.inception_weights`).

A plugin adds a metric with ``register(name, metric)`` in its ``register_metrics`` hook (any
object satisfying :class:`Metric`), and a feature space by calling
:func:`register_feature_extractor` there and registering a :class:`FidelityMetric` over it.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from zoo import plugins
from zoo.hookspecs import hookimpl
from zoo.metrics.digits import DigitsMetric
from zoo.metrics.fidelity import (
    FidelityMetric,
    InceptionMetric,
    InceptionWeightsError,
    register_feature_extractor,
)
from zoo.metrics.held_out import HeldOutFDMetric, MemorisationMetric, is_digits_training_split
from zoo.metrics.w2 import W2Metric, wasserstein2

__all__ = [
    "Evaluation",
    "FidelityMetric",
    "HeldOutFDMetric",
    "InceptionWeightsError",
    "MemorisationMetric",
    "Metric",
    "MetricResultError",
    "W2Metric",
    "check_metric_result",
    "check_samples",
    "default_metrics",
    "evaluate",
    "lower_is_better",
    "register_feature_extractor",
    "wasserstein2",
]


@runtime_checkable
class Metric(Protocol):
    """A sample-quality metric. ``kinds``: the dataset kinds it applies to ("points", "image").

    ``compute(samples, dataset, *, seed)`` returns named numbers, e.g. ``{"W2": 0.031}``; metrics
    with a batched feature pass also take ``batch_size``. ``lower_is_better`` maps each result
    name to its direction (for tables: ↓ / ↑). A metric that needs more than two samples
    declares ``min_samples`` (:func:`min_samples` reads it; the trainer checks ``eval_n``).
    """

    name: str
    kinds: tuple[str, ...]
    lower_is_better: dict[str, bool]

    def compute(self, samples: torch.Tensor, dataset, *, seed: int = 0) -> dict[str, float]:
        """Measure ``samples`` against ``dataset``."""


@hookimpl
def register_metrics(register):
    register("w2", W2Metric())
    register("fd-digits", DigitsMetric())
    register("fdinf-digits", HeldOutFDMetric())
    register("memorisation-digits", MemorisationMetric())
    register("fid", InceptionMetric())


def min_samples(name: str) -> int:
    """The fewest samples the registered metric ``name`` measures (its ``min_samples``, else 2)."""
    from zoo.plugins import get

    return getattr(get("metrics", name), "min_samples", 2)


def default_metrics(dataset) -> list[str]:
    """The metrics a bench reports for ``dataset``: W2 (points); FD-digits & co. for digits, and
    on its training split also the held-out ones (FD297/FD∞ and memorisation, with floors);
    else FID."""
    if dataset.kind == "points":
        return ["w2"]
    if dataset.name != "digits":
        return ["fid"]
    held_out = is_digits_training_split(dataset)
    # the first is what the bench plots: FD297, which real data's floor row measures alike
    return [*(["fdinf-digits", "memorisation-digits"] if held_out else []), "fd-digits"]


def check_metric(name: str, obj) -> None:
    """What registering a metric needs: ``name``, ``kinds``, ``lower_is_better``, ``compute``."""
    missing = [a for a in ("name", "kinds", "lower_is_better", "compute") if not hasattr(obj, a)]
    if missing:
        raise TypeError(f"metric {name!r} lacks {', '.join(missing)} (a zoo.metrics.Metric has "
                        "name, kinds, lower_is_better and compute)")


class MetricResultError(ValueError):
    """A metric returned something other than names mapped to finite numbers."""


def metric_source(name: str) -> str:
    """``metric 'w2' (plugin zoo.metrics (fewstep-zoo))``: which metric of which plugin."""
    from zoo import plugins

    try:
        return f"metric {name!r} (plugin {plugins.registry('metrics').source(name)})"
    except KeyError:
        return f"metric {name!r}"


def check_metric_result(name: str, values, *, finite: bool = True) -> dict[str, float]:
    """``values`` as ``{str: float}``, or :class:`MetricResultError` naming the metric and its
    plugin: a metric must return a mapping of names to real numbers, finite ones unless
    ``finite`` is False (a NaN, a tensor or a list never enters a table)."""
    if not isinstance(values, Mapping):
        raise MetricResultError(f"{metric_source(name)} returned a {type(values).__name__}, not "
                                "a mapping of result names to numbers")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise MetricResultError(f"{metric_source(name)} returned the key {key!r}; result "
                                    "names are strings")
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating,
                                                             np.integer)):
            raise MetricResultError(
                f"{metric_source(name)} returned {key!r} = {value!r} "
                f"({type(value).__name__}); a result is a real number (float(...) it)")
        value = float(value)
        if finite and not math.isfinite(value):
            raise MetricResultError(f"{metric_source(name)} returned {key!r} = {value}: a "
                                    "non-finite result never enters a table")
        out[key] = value
    return out


def check_samples(samples: torch.Tensor, dataset) -> None:
    """Raise ``ValueError`` unless ``samples`` are shaped ``[n, *dataset.shape]``."""
    if samples.dim() != len(dataset.shape) + 1 or tuple(samples.shape[1:]) != dataset.shape:
        raise ValueError(f"samples of shape {tuple(samples.shape)} do not match dataset "
                         f"{dataset.name!r}, whose items have shape {dataset.shape}: expected "
                         f"[n, {', '.join(map(str, dataset.shape))}]")


class Evaluation:
    """The registered ``metrics`` (default: :func:`default_metrics`) of samples fed batch by
    batch (:meth:`add`), e.g. while a bench row samples 50,000 images. Metrics with a
    ``stream`` method (feature spaces, :class:`FidelityMetric`) keep only the features; the
    others get all samples at :meth:`result`. Extractors and references are set up once, so one
    evaluation serves many rows (:meth:`reset` between them).

    ``ref``: a reference file for the feature-space metrics
    (:func:`zoo.metrics.fidelity.read_reference`) instead of the dataset; ``distributed``: every
    rank feeds the same batches and extracts features of its share (:class:`FeatureStream`).
    ``batch_size`` only sets the feature pass's memory use; the numbers do not depend on it.
    Every metric's result is checked (:func:`check_metric_result`): names to real numbers,
    finite ones unless ``finite`` is False.
    """

    def __init__(self, dataset, metrics: list[str] | None = None, *, seed: int = 0,
                 batch_size: int = 256, ref=None, distributed: bool = False,
                 finite: bool = True):
        from zoo import plugins

        names = default_metrics(dataset) if metrics is None else list(metrics)
        if not names:
            raise ValueError("no metrics to evaluate; give at least one metric name")
        self.dataset, self.seed, self.batch_size = dataset, seed, batch_size
        self.finite = finite
        self.metrics: list[tuple[str, Metric]] = []
        for name in names:
            metric = plugins.get("metrics", name)
            if not isinstance(metric, Metric):
                raise TypeError(f"metric {name!r} ({type(metric).__name__}) lacks name, kinds, "
                                "lower_is_better or compute")
            if dataset.kind not in metric.kinds:
                raise ValueError(f"metric {name!r} applies to "
                                 f"{' or '.join(metric.kinds)} datasets; dataset "
                                 f"{dataset.name!r} is of kind {dataset.kind!r}")
            self.metrics.append((name, metric))
        if ref is not None and not any(hasattr(m, "stream") for _, m in self.metrics):
            raise ValueError(f"--ref applies to feature-space metrics (e.g. fid, fd-digits); "
                             f"{', '.join(names)} take none")
        self.streams = {i: m.stream(dataset, ref=ref, batch_size=batch_size,
                                    distributed=distributed)
                        for i, (_, m) in enumerate(self.metrics) if hasattr(m, "stream")}
        self.reset()

    def reset(self) -> None:
        """Forget the samples fed so far."""
        for stream in self.streams.values():
            stream.reset()
        self.samples: list[torch.Tensor] = []

    def add(self, samples: torch.Tensor) -> None:
        """Feed a batch shaped like the dataset's items, in its value range."""
        samples = torch.as_tensor(samples)
        check_samples(samples, self.dataset)
        for stream in self.streams.values():
            stream.add(samples)
        if len(self.streams) < len(self.metrics):
            self.samples.append(samples.detach().cpu())

    def result(self) -> dict[str, float]:
        """Every metric's results for the samples fed since :meth:`reset`, merged."""
        results: dict[str, float] = {}
        sources: dict[str, str] = {}
        for i, (name, metric) in enumerate(self.metrics):
            if i in self.streams:
                values = self.streams[i].result(self.seed)
            else:
                samples = torch.cat(self.samples)
                options = ({"batch_size": self.batch_size}
                           if _takes(metric.compute, "batch_size") else {})
                values = metric.compute(samples, self.dataset, seed=self.seed, **options)
            values = check_metric_result(name, values, finite=self.finite)
            for key, value in values.items():
                if key in results:
                    raise ValueError(f"metrics {sources[key]!r} and {name!r} both report {key!r}")
                results[key], sources[key] = value, name
        return results


def evaluate(samples: torch.Tensor, dataset, *, metrics: list[str] | None = None, seed: int = 0,
             batch_size: int = 256, ref=None, finite: bool = True) -> dict[str, float]:
    """Run each registered metric named in ``metrics`` (default: :func:`default_metrics`) on
    ``samples`` (shaped like the dataset's items, in its value range) and merge their results;
    see :class:`Evaluation` (``finite=False`` lets a diverged model's samples score inf or NaN,
    as training's periodic measurements record them)."""
    samples = torch.as_tensor(samples)
    check_samples(samples, dataset)
    evaluation = Evaluation(dataset, metrics, seed=seed, batch_size=batch_size, ref=ref,
                            finite=finite)
    evaluation.add(samples)
    return evaluation.result()


def lower_is_better(name: str) -> bool | None:
    """Direction of result ``name`` (e.g. "FID": True, "IS": False); None for unknown names."""
    from zoo import plugins

    for _, metric in plugins.registry("metrics").items():
        if name in getattr(metric, "lower_is_better", {}):
            return metric.lower_is_better[name]
    return None


def _takes(fn, parameter: str) -> bool:
    params = inspect.signature(fn).parameters
    return parameter in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


plugins.add_object_check("metrics", check_metric)
