"""The settings ``zoo tune`` searches: a method's :meth:`~zoo.methods.Method.search_space` maps
setting names to these ranges (:mod:`zoo.tuning` runs the study)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Float:
    """A real setting in [low, high], searched on a log scale with ``log``."""

    low: float
    high: float
    log: bool = False

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Int:
    """An integer setting in [low, high]."""

    low: int
    high: int
    log: bool = False

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Choice:
    """A setting taking one of ``values``."""

    values: tuple

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))


def around(value: float, factor: float = 3.0) -> Float:
    """A log-scale range from ``value / factor`` to ``value · factor``."""
    return Float(value / factor, value * factor, log=True)


def learning_and_averaging(config) -> dict:
    """What every method's search varies: the peak learning rate (3× either way of the
    preset's) and the evaluation EMA (its half-life 4× either way, or a fixed rate's distance
    from 1 likewise)."""
    space = {"lr": around(config.lr)}
    if config.ema_halflife_kimg > 0:
        space["ema_halflife_kimg"] = around(config.ema_halflife_kimg, 4.0)
    elif 0 < config.ema_rate < 1:
        gap = 1 - config.ema_rate
        space["ema_rate"] = Float(max(0.0, 1 - 4 * gap), 1 - gap / 4)
    return space
