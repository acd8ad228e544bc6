"""Pictures people would rather see than read: sample grids and 2D scatter plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from zoo.files import temporary_file

#: What a picture may be written as (``--out``).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_output(path, suffixes, option: str, *, overwrite: bool = True) -> Path:
    """An output file path checked before any work: its extension one of ``suffixes``, its
    folder created, and (``overwrite`` False) no file there yet (an error names the option,
    what was wrong and what is accepted)."""
    path = Path(path)
    if not overwrite and path.is_file():
        raise ValueError(f"{option} {path} exists; pass --overwrite to replace it, or choose "
                         "another file")
    if path.suffix.lower() not in suffixes:
        what = f"unknown extension {path.suffix!r}" if path.suffix else "no file extension"
        raise ValueError(f"{option} {path}: {what}; accepted: {', '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    return check_folder(path.parent, option) / path.name


def check_folder(path, option: str) -> Path:
    """Create the folder ``path`` (and its parents) now, or say why it cannot be written to."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option}: cannot create the folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"{option}: the folder {path} is not writable")
    return path


def write_atomic(path, write) -> Path:
    """``write(tmp)`` to a temporary file beside ``path`` (same extension), then rename it:
    the file is complete or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: The most images a grid shows (the first ones): a picture of 50,000 samples helps nobody.
MAX_GRID = 100


def save_image_grid(x: torch.Tensor, path, nrow: int | None = None,
                    labels: list[str] | None = None) -> Path:
    """Save the first :data:`MAX_GRID` images in [−1, 1] (N, C, H, W) as one PNG grid, upscaled
    so small images are legible; ``labels`` (one row of images) are written above them."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid, save_image

    x = x[:MAX_GRID].detach().float().cpu().clamp(-1, 1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(x)))))
    scale = max(1, 64 // x.shape[-1])
    if scale > 1:
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    if not labels:
        return write_atomic(path, lambda tmp: save_image(grid, tmp))
    pixels = (grid * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    picture = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + 14), "white")
    picture.paste(Image.fromarray(pixels), (0, 14))
    draw = ImageDraw.Draw(picture)
    for i, label in enumerate(labels):
        draw.text((2 + i * (x.shape[-1] + 2), 2), label, fill="black")
    return write_atomic(path, picture.save)


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
    try:
        return write_atomic(path, fig.savefig)
    finally:
        plt.close(fig)


def save_samples_picture(x: torch.Tensor, kind: str, path, title: str = "") -> Path:
    """A grid for images, a scatter plot for points."""
    if kind == "image":
        return save_image_grid(x, path)
    return save_scatter(x, path, title)


def save_samples_file(x: torch.Tensor, info: dict, path) -> Path:
    """Samples as .npz with ``samples`` and ``info`` (JSON: model, sampler, NFE, seeds...)."""
    samples = x.detach().cpu().numpy()

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez adds no second ".npz"
            np.savez(f, samples=samples, info=np.array(json.dumps(info)))

    return write_atomic(path, write)
