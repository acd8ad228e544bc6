"""Pictures people would rather see than read: sample grids and 2D scatter plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None) -> Path:
    """Save images in [−1, 1] (N, C, H, W) as one PNG grid, upscaled so small images are legible."""
    from torchvision.utils import make_grid, save_image

    x = x.detach().float().cpu().clamp(-1, 1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(x)))))
    scale = max(1, 64 // x.shape[-1])
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return path


def save_scatter(
    x: torch.Tensor, path, title: str = "", reference: torch.Tensor | None = None
) -> Path:
    """Scatter plot of 2D points (and optionally true samples beside them) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    if reference is not None:
        r = reference.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    lim = max(1.5, float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 1.5)
    ax.set_xlim(-min(lim, 3), min(lim, 3))
    ax.set_ylim(-min(lim, 3), min(lim, 3))
    if title:
        ax.set_title(title, fontsize=9)
    if reference is not None:
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_samples_picture(x: torch.Tensor, kind: str, path, title: str = "") -> Path:
    """A grid for images, a scatter plot for points."""
    if kind == "image":
        return save_image_grid(x, path)
    return save_scatter(x, path, title)


def save_samples_file(x: torch.Tensor, info: dict, path) -> Path:
    """Samples as .npz with ``samples`` and ``info`` (JSON: model, sampler, NFE, seeds...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=x.detach().cpu().numpy(), info=np.array(json.dumps(info)))
    return path
