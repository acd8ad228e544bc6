"""Memorisation: how many samples lie nearer to a training image than held-out images do.

A held-out image is real data the model never saw; the distance from it to its nearest training
image (pixel L2) is how close real data comes to the training set by chance. The threshold is
the ``quantile`` (5 %) of those distances, and the memorised share is the fraction of samples
whose nearest training image is nearer than it. Real data gives about ``quantile`` by
construction (the held-out images themselves give it up to rounding of the quantile); a model
that copies its training images gives 1.
"""

from __future__ import annotations

import torch


def nearest_distances(x: torch.Tensor, bank: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """Euclidean distance from each row of ``x`` ``[n, D]`` to its nearest row of ``bank``
    ``[m, D]``, in float64, ``chunk`` rows of ``x`` at a time (memory: chunk × m distances)."""
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")
    x, bank = (torch.as_tensor(t, dtype=torch.float64).flatten(1) for t in (x, bank))
    if len(bank) == 0 or x.shape[1] != bank.shape[1]:
        raise ValueError(f"need a non-empty bank with the rows' dimension; got rows "
                         f"{tuple(x.shape)} and bank {tuple(bank.shape)}")
    return torch.cat([torch.cdist(part, bank).amin(1) for part in x.split(chunk)])


def memorised_share(samples: torch.Tensor, train: torch.Tensor, held_out: torch.Tensor, *,
                    quantile: float = 0.05, chunk: int = 1024) -> tuple[float, float]:
    """``(share of samples, share of held-out images)`` whose nearest ``train`` row is nearer
    than the ``quantile`` of the held-out rows' nearest-training-row distances (linear
    interpolation between order statistics, as ``torch.quantile``). The second is the floor:
    about ``quantile`` by construction."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    if len(samples) == 0 or len(held_out) == 0:
        raise ValueError(f"need at least one sample and one held-out image, got {len(samples)} "
                         f"and {len(held_out)}")
    real = nearest_distances(held_out, train, chunk=chunk)
    threshold = torch.quantile(real, quantile)
    if threshold == 0:
        raise ValueError(f"{quantile:.0%} of the held-out images are copies of training "
                         "images: the memorisation threshold is 0")
    near = nearest_distances(samples, train, chunk=chunk) < threshold
    return near.double().mean().item(), (real < threshold).double().mean().item()
