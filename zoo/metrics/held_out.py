"""Digits metrics with a real-data floor: FD comparable across sample sizes, and memorisation.

Models are trained on the digits training split (1,500 images); the other 297 images (the
``test`` split) are held out. Both metrics below compute their floor — what real data the model
never saw scores, measured exactly as the samples are — and report it beside the samples' value
(``… floor``, the same in every row, as W2's floor):

- ``fdinf-digits`` (:class:`HeldOutFDMetric`): FD in the digits classifier's feature space
  (as FD-digits) on disjoint random sets of 297 samples (:data:`HeldOutFDMetric.SET_SIZE`, the
  held-out split's size), :func:`zoo.metrics.frechet.fd_of_sets`:

  - ``FD297-digits``: mean FD of the sets against the training split; floor: the held-out split
    (one set of 297) against the training split;
  - ``FD∞-digits``: mean FD∞ of the sets (Chong & Forsyth 2020) against the training split;
    floor: the held-out split's FD∞, computed the same way;
  - ``FD∞-digits held-out``: the same against the held-out split; floor: the training split's
    images (five sets of 297) against the held-out split.

  ``… ±``: the standard error of the mean over the sets (absent with one set, e.g. fewer than
  594 samples); the floor is one set, and varies about as much as one set of samples does
  (± · √sets).
- ``memorisation-digits`` (:class:`MemorisationMetric`): ``memorised-digits``, the share of
  samples whose nearest training image (pixel L2) is nearer than the 5th percentile of the
  held-out images' nearest-training-image distances (:mod:`zoo.metrics.memorisation`); floor:
  the held-out images' own share, 5 % by construction.

Both measure against the digits splits themselves: they take samples of models trained on the
training split (the dataset ``digits`` as benched) and ignore ``--ref``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zoo.metrics.fidelity import to_uint8
from zoo.metrics.frechet import fd_of_sets, mean_and_stderr, statistics
from zoo.metrics.memorisation import memorised_share

DATA_RANGE = (-1.0, 1.0)


def digits_splits(dataset, metric: str):
    """``(training split, held-out split)`` of digits; ``dataset`` must be the training split."""
    from zoo.data import load_dataset

    if dataset.name != "digits":
        raise ValueError(f"metric {metric!r} measures digits samples against the digits "
                         f"training and held-out splits; dataset {dataset.name!r} is not digits")
    train = load_dataset("digits", split="train")
    if dataset.checksum != train.checksum:
        raise ValueError(f"metric {metric!r} measures against the digits training split (the "
                         f"split models train on; checksum {train.checksum[:16]}…); this digits "
                         f"dataset (checksum {dataset.checksum[:16]}…, {len(dataset)} images) is "
                         "another split: evaluate against load_dataset('digits') (split 'train')")
    return train, load_dataset("digits", split="test")


def is_digits_training_split(dataset) -> bool:
    """Whether ``dataset`` is the digits training split (the held-out metrics apply)."""
    try:
        digits_splits(dataset, "")
    except ValueError:
        return False
    return True


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the uint8 values they are saved and measured as, ``[n, C·H·W]``."""
    return to_uint8(torch.as_tensor(x).detach().float().cpu(), DATA_RANGE).flatten(1)


class HeldOutFDMetric:
    """FD297-digits, FD∞-digits and FD∞-digits held-out with their floors (module docstring).

    ``SUBSETS``: random subsets drawn at each size below the set's for FD∞. The sets and
    subsets come from ``seed``; which samples fall into which set does not depend on their
    order (:func:`zoo.metrics.frechet.disjoint_sets` orders them by their pixels first).
    """

    name = "fdinf-digits"
    kinds = ("image",)
    SET_SIZE = 297
    min_samples = SET_SIZE
    SUBSETS = 20
    lower_is_better = {
        "FD297-digits": True, "FD297-digits ±": None, "FD297-digits floor": True,
        "FD∞-digits": True, "FD∞-digits ±": None, "FD∞-digits floor": True,
        "FD∞-digits held-out": True, "FD∞-digits held-out ±": None,
        "FD∞-digits held-out floor": True,
    }

    def __init__(self) -> None:
        self._extractor = None
        self._floors: dict = {}  # they depend only on the splits, the seed and the settings

    def features(self, u8: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The digits classifier's 64-d features (as FD-digits uses) of uint8 images, float64."""
        if self._extractor is None:
            from zoo.metrics.digits import EXTRACTOR, DigitsFeatureExtractor

            self._extractor = DigitsFeatureExtractor(EXTRACTOR, ["features"])
        with torch.no_grad():
            parts = [self._extractor(part.view(-1, 1, 8, 8))[0] for part in u8.split(batch_size)]
        return torch.cat(parts).double()

    def sets(self, features, keys, reference, seed: int):
        """FD and FD∞ of each disjoint set of :data:`SET_SIZE` against ``reference``."""
        return fd_of_sets(features, keys, reference, size=self.SET_SIZE, seed=seed,
                          subsets=self.SUBSETS)

    def floors(self, train, held_out, seed: int, batch_size: int) -> dict:
        """The references (statistics of both splits) and the floors, computed once."""
        key = (train.checksum, held_out.checksum, seed, self.SET_SIZE, self.SUBSETS)
        if key not in self._floors:
            u8 = {"train": pixels(train.x), "held-out": pixels(held_out.x)}
            features = {k: self.features(v, batch_size) for k, v in u8.items()}
            refs = {k: statistics(v) for k, v in features.items()}
            fd, fd_inf = self.sets(features["held-out"], u8["held-out"], refs["train"], seed)
            _, fd_inf_held_out = self.sets(features["train"], u8["train"], refs["held-out"], seed)
            self._floors[key] = {"references": refs, "FD297-digits floor": fd.mean(),
                                 "FD∞-digits floor": fd_inf.mean(),
                                 "FD∞-digits held-out floor": fd_inf_held_out.mean()}
        return self._floors[key]

    def compute(self, samples, dataset, *, seed: int = 0, batch_size: int = 256) -> dict:
        train, held_out = digits_splits(dataset, self.name)
        if len(held_out) != self.SET_SIZE:
            raise ValueError(f"metric {self.name!r} measures sets of {self.SET_SIZE}, the "
                             f"held-out split's size, but that split holds {len(held_out)}")
        if len(samples) < self.SET_SIZE:
            raise ValueError(f"metric {self.name!r} measures sets of {self.SET_SIZE} samples "
                             f"(the held-out split's size); got {len(samples)} samples, need at "
                             f"least {self.SET_SIZE} (several sets give a standard error: e.g. "
                             "2000 samples make 6 sets)")
        floors = self.floors(train, held_out, seed, batch_size)
        refs = floors["references"]
        if torch.isfinite(torch.as_tensor(samples)).all():
            u8 = pixels(samples)
            features = self.features(u8, batch_size)
            fd, fd_inf = self.sets(features, u8, refs["train"], seed)
            _, fd_inf_held_out = self.sets(features, u8, refs["held-out"], seed)
        else:  # non-finite samples score worst, as in FD-digits
            fd = fd_inf = fd_inf_held_out = np.array([math.inf])
        result: dict[str, float] = {}
        for name, values in (("FD297-digits", fd), ("FD∞-digits", fd_inf),
                             ("FD∞-digits held-out", fd_inf_held_out)):
            mean, stderr = mean_and_stderr(values)
            result[name] = mean
            if stderr is not None:
                result[f"{name} ±"] = stderr
            result[f"{name} floor"] = float(floors[f"{name} floor"])
        return result


class MemorisationMetric:
    """``memorised-digits`` and its floor (module docstring); ``QUANTILE``: the held-out
    distance quantile taken as the threshold."""

    name = "memorisation-digits"
    kinds = ("image",)
    QUANTILE = 0.05
    lower_is_better = {"memorised-digits": True, "memorised-digits floor": True}

    def compute(self, samples, dataset, *, seed: int = 0, batch_size: int = 256) -> dict:
        train, held_out = digits_splits(dataset, self.name)
        samples = torch.as_tensor(samples)
        finite = bool(torch.isfinite(samples).all())
        share, floor = memorised_share(pixels(samples), pixels(train.x), pixels(held_out.x),
                                       quantile=self.QUANTILE, chunk=batch_size)
        return {"memorised-digits": share if finite else math.nan,
                "memorised-digits floor": floor}
