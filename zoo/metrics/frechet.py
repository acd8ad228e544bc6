"""Fréchet distances comparable across sample sizes: FD on equal-size sets and FD∞.

FD between a set of n features and a fixed reference is biased upwards by about c/n (the
estimated mean and covariance of n points scatter around the true ones), so FDs of sets of
different sizes cannot be compared. Two remedies, both on sets of one size N:

- **FD at N**: split the samples into ``n // N`` disjoint random sets of N and average their FDs
  (the spread over sets gives the standard error);
- **FD∞** (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to
  find them", CVPR): FD at several sizes n, a least-squares line FD = a + b/n, extrapolated to
  1/n → 0 (the intercept a). Within one set the sizes are random subsets of it (the set itself at
  n = N): subsets of a finite set follow FD_set + b(1/n − 1/N), so the intercept,
  FD_set − b/N, removes the set's own bias as well.

Only the samples' side is corrected: the reference (mean and covariance of a whole split) keeps
its own finite-size bias, the same constant in every row that uses it.
"""

from __future__ import annotations

import numpy as np
import torch

from zoo.metrics.fidelity import _fid

#: Subset sizes span N/3 … N, evenly spaced in 1/n (the variable of the fit).
SMALLEST_FRACTION = 1 / 3
GRID_POINTS = 6


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean and (unbiased) covariance of features ``[n, D]`` in float64, as torch-fidelity
    computes them for FID."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(torch.as_tensor(features, dtype=torch.float64).cpu())


def frechet_distance(features: torch.Tensor, reference: dict[str, np.ndarray]) -> float:
    """FD between the Gaussian fit to ``features`` and ``reference`` (``{"mu", "sigma"}``)."""
    return _fid(statistics(features), reference)


def subset_sizes(size: int) -> np.ndarray:
    """The sizes FD∞ is fitted over for a set of ``size``: :data:`GRID_POINTS` sizes from
    ``size`` · :data:`SMALLEST_FRACTION` to ``size``, evenly spaced in 1/n (duplicates dropped)."""
    inverse = np.linspace(1 / size, 1 / (size * SMALLEST_FRACTION), GRID_POINTS)
    return np.unique(np.round(1 / inverse).astype(int))


def extrapolate(sizes, values) -> float:
    """The intercept a of the least-squares line ``values ≈ a + b / sizes``: the value at
    1/n → 0 (Chong & Forsyth 2020)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1 or len(sizes) < 2 or len(np.unique(sizes)) < 2:
        raise ValueError(f"extrapolating to 1/n → 0 needs values at two or more distinct sizes; "
                         f"got sizes {sizes.tolist()}")
    _, intercept = np.polyfit(1 / sizes, np.asarray(values, dtype=np.float64), 1)
    return float(intercept)


def disjoint_sets(keys: torch.Tensor, size: int, seed: int) -> list[torch.Tensor]:
    """Indices of ``len(keys) // size`` disjoint random sets of ``size`` rows (the rest unused).

    The rows are first put in lexicographic order of ``keys`` (e.g. each sample's uint8 pixels),
    then permuted with ``seed``: the sets depend on which samples there are, not on their order.
    """
    if len(keys) < size:
        raise ValueError(f"need at least {size} samples for one set of {size}, got {len(keys)}")
    columns = torch.as_tensor(keys).flatten(1).cpu().numpy()
    canonical = torch.from_numpy(np.lexsort(columns.T[::-1]).copy())
    order = canonical[torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed))]
    count = len(keys) // size
    return list(order[: count * size].view(count, size))


def set_fd(features: torch.Tensor, reference: dict[str, np.ndarray], *, subsets: int,
           generator: torch.Generator) -> tuple[float, float]:
    """``(FD, FD∞)`` of one set of features against ``reference``: FD of the whole set, and the
    intercept (:func:`extrapolate`) of the mean FD of ``subsets`` random subsets at each of
    :func:`subset_sizes` (the set itself at its own size)."""
    size, sizes = len(features), subset_sizes(len(features))
    means = [np.mean([frechet_distance(features[torch.randperm(size, generator=generator)[:n]],
                                       reference) for _ in range(subsets)])
             for n in sizes[:-1]]
    whole = frechet_distance(features, reference)
    return whole, extrapolate(sizes, [*means, whole])


def fd_of_sets(features: torch.Tensor, keys: torch.Tensor, reference: dict[str, np.ndarray], *,
               size: int, seed: int, subsets: int) -> tuple[np.ndarray, np.ndarray]:
    """FD and FD∞ (:func:`set_fd`) of each of the disjoint sets of ``size`` (:func:`disjoint_sets`
    by ``keys``, e.g. pixels) that ``features`` split into: two arrays, one value per set."""
    generator = torch.Generator().manual_seed(seed)
    values = [set_fd(features[index], reference, subsets=subsets, generator=generator)
              for index in disjoint_sets(keys, size, seed)]
    return np.array([v[0] for v in values]), np.array([v[1] for v in values])


def mean_and_stderr(values: np.ndarray) -> tuple[float, float | None]:
    """The mean over sets and its standard error (None for a single set: no spread to measure)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    return mean, float(np.std(values, ddof=1) / np.sqrt(len(values)))
