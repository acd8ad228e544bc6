"""Tuned presets: the settings ``zoo tune`` chose for a run of a dataset's preset, applied over
the preset by :meth:`zoo.methods.Method.configure` with where they came from; :func:`untuned`
gives the preset as written back (``zoo train --untuned``, ``zoo bench --untuned``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Tuned:
    """The settings ``zoo tune`` chose for one run of a dataset's preset (the searched ones of
    its study's ``best.json``) and where they came from: the study (its folder, e.g.
    ``tune/digits/cm-cd``: one name per study), the trial, its validation score (metric ->
    value) and the study's cost in forward-equivalent passes."""

    params: dict
    study: str
    trial: int
    validation: dict
    tuning_cost_fwd: float

    def apply(self, config, overrides=()):
        """``config`` with these settings but those given in ``overrides``; its ``tuned`` field
        records their provenance and the preset's values they replaced. A config tuned already,
        or whose overrides give every setting, is returned as it is."""
        params = {k: v for k, v in self.params.items() if k not in overrides}
        if config.tuned or not params:
            return config
        return dataclasses.replace(config, **params, tuned={
            "study": self.study, "trial": self.trial, "validation": self.validation,
            "tuning_cost_fwd": self.tuning_cost_fwd,
            "untuned": {k: getattr(config, k) for k in params}})


def untuned(config):
    """``config`` with the preset's own values where its tuned settings replaced them
    (:meth:`Tuned.apply`): what ``zoo train --untuned`` and ``zoo bench --untuned`` train."""
    return dataclasses.replace(config, **config.tuned.get("untuned", {}), tuned={})


def check_tuned(name: str, tuned: dict, config_class) -> None:
    """A method's ``tuned`` table holds :class:`Tuned` records of its config's settings, by
    dataset and run name."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    for dataset, runs in tuned.items():
        for run, found in runs.items():
            unknown = sorted(set(getattr(found, "params", {})) - fields)
            if not isinstance(found, Tuned) or unknown:
                raise ValueError(f"method {name!r}: tuned[{dataset!r}][{run!r}] must be a "
                                 "zoo.tuned.Tuned of its config's settings"
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
