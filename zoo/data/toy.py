"""2D toy distributions with exact samplers: a checkerboard and a Gaussian mixture.

The training set is ``n`` points drawn with ``seed``; ``sample_true(n, seed)`` draws from another
stream (generator seed ``2·seed + 1`` against ``2·seed`` for the training set), so fresh true
samples never repeat the training points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from zoo.data.datasets import Dataset, sha256_of

CHECKERBOARD_CELLS = 4  # a 4×4 board on [-1, 1]², every other cell filled: std ≈ 0.58 per axis
GMM_COMPONENTS = 8
GMM_RADIUS = 0.7  # component means on a circle; with GMM_STD the data std is ≈ 0.5 per axis
GMM_STD = 0.06


def checkerboard_sample(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points uniform on the filled cells ((row + col) even) of the board on [-1, 1]²."""
    cells = CHECKERBOARD_CELLS
    col = torch.randint(0, cells, (n,), generator=generator)
    row = 2 * torch.randint(0, cells // 2, (n,), generator=generator) + col % 2
    corner = torch.stack([col, row], dim=1).float() * (2 / cells) - 1
    return corner + torch.rand(n, 2, generator=generator) * (2 / cells)


def gmm_sample(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points from an equal-weight mixture of isotropic Gaussians on a circle."""
    component = torch.randint(0, GMM_COMPONENTS, (n,), generator=generator)
    angle = component.float() * (2 * math.pi / GMM_COMPONENTS)
    means = GMM_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
    return means + GMM_STD * torch.randn(n, 2, generator=generator)


def _toy_dataset(name: str, sample: Callable, n: int, seed: int) -> Dataset:
    if n < 1:
        raise ValueError(f"dataset {name!r}: n must be >= 1, got {n}")

    def sample_true(count: int, seed: int) -> torch.Tensor:
        return sample(count, torch.Generator().manual_seed(2 * seed + 1))

    x = sample(n, torch.Generator().manual_seed(2 * seed))
    return Dataset(name, x, None, sha256_of(x), "points", sample_true=sample_true)


def checkerboard(n: int = 50_000, seed: int = 0) -> Dataset:
    """``n`` training points of the 4×4 checkerboard, drawn with ``seed``."""
    return _toy_dataset("checkerboard", checkerboard_sample, n, seed)


def gmm(n: int = 50_000, seed: int = 0) -> Dataset:
    """``n`` training points of the 8-component Gaussian mixture, drawn with ``seed``."""
    return _toy_dataset("gmm", gmm_sample, n, seed)
