"""Wasserstein-2 distance between point sets by exact optimal transport (toy data)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def wasserstein2(a, b) -> float:
    """Exact W2 between two equal-size empirical distributions.

    With uniform weights and equal sizes an optimal transport plan is a permutation
    (Birkhoff–von Neumann), so the assignment problem on squared distances solves it exactly:
    W2 = sqrt(min_π (1/n) Σ_i ‖a_i − b_π(i)‖²).
    """
    a = np.asarray(torch.as_tensor(a, dtype=torch.float64).cpu())
    b = np.asarray(torch.as_tensor(b, dtype=torch.float64).cpu())
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two point sets of equal shape [n, d], got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    cost = cdist(a, b, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


class W2Metric:
    """W2 against fresh true samples, with the sampling floor (W2 between two true sets)."""

    name = "w2"
    kinds = ("points",)
    lower_is_better = {"W2": True, "W2 floor": True}

    def compute(self, samples, dataset, *, seed: int = 0) -> dict[str, float]:
        if dataset.sample_true is None:
            raise ValueError(f"W2 needs a dataset with a true sampler; {dataset.name!r} has none")
        n = len(samples)
        reference = dataset.sample_true(n, 10_000 + seed)
        floor = wasserstein2(dataset.sample_true(n, 20_000 + seed), reference)
        return {"W2": wasserstein2(samples, reference), "W2 floor": floor}
