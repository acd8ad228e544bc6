"""Zero-shot image editing with a consistency function f(x, σ) (Song et al. 2023, Algorithm 4,
Section 6 and Appendix D): inpainting, colorization, super-resolution, stroke-guided generation,
denoising and interpolation, with no retraining.

Algorithm 4 works in the coordinates of an orthogonal linear map A (A⁻¹ = Aᵀ), where a binary mask
Ω marks the components to generate and 1 − Ω those known from the reference y. Over a decreasing
sequence σ_1 > … > σ_N it alternates

    x ← f(x, σ_n),   x ← A⁻¹[(A y) ⊙ (1 − Ω) + (A x) ⊙ Ω],   x ← x + √(σ_{n+1}² − σ_min²)·z,

starting from x = A⁻¹[(A y) ⊙ (1 − Ω)] + σ_1·z. The known components of the result equal those
of y exactly. Every transform here keeps the image's shape: its output is an image-shaped array
of components, so a mask is an image-shaped 0/1 tensor.

Images are ``[B, C, H, W]`` in [−1, 1]; randomness comes from a per-sample generator
(:mod:`zoo.diffusion.random`), so an edit does not depend on its batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from zoo.diffusion import SIGMA_MAX, SIGMA_MIN, karras_sigmas
from zoo.diffusion.random import per_sample_generator
from zoo.diffusion.samplers import check_sigmas

#: ITU-R BT.601 luma weights (the paper's colour transform, Appendix D).
LUMA = (0.2989, 0.5870, 0.1140)
#: Default number of σ in an editing sequence per preset scale (see :func:`default_sigmas`).
EDIT_STEPS = {"toy": 10, "digits": 10, "cifar10": 40}


def orthogonal_completion(v: torch.Tensor) -> torch.Tensor:
    """An orthogonal matrix Q (float64) whose first row is v/‖v‖: QR of [v, e_2, …, e_n]."""
    v = v.double() / v.double().norm()
    basis = torch.eye(len(v), dtype=torch.float64)
    basis[:, 0] = v
    q, _ = torch.linalg.qr(basis)
    q = q * torch.sign(q[:, :1].T @ v)  # QR may flip the first column's sign
    return q.T.contiguous()


class Identity:
    """A = I: the components are the pixels (inpainting, stroke-guided generation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, c: torch.Tensor) -> torch.Tensor:
        return c

    def __repr__(self) -> str:
        return "Identity()"


class ColorTransform:
    """A = Q per pixel, Q orthogonal 3×3 with first row the normalised luma weights: component 0
    is the luminance (up to the factor 1/‖w‖), components 1 and 2 span the chroma."""

    def __init__(self, weights=LUMA):
        self.matrix = orthogonal_completion(torch.tensor(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"the colour transform needs 3 channels (RGB), got {x.shape[1]}")
        return torch.einsum("ij,bjhw->bihw", self.matrix.to(x), x)

    def inverse(self, c: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ji,bjhw->bihw", self.matrix.to(c), c)

    def __repr__(self) -> str:
        return "ColorTransform()"


class PatchTransform:
    """A = Q on every k×k patch of every channel, Q orthogonal k²×k² with first row 1/k·(1, …, 1):
    component 0 of a patch is k·(its mean). Components are written back in the patch's k² pixel
    positions (row-major), so component 0 sits at the patch's top-left pixel."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"patch size must be >= 1, got {k}")
        self.k = k
        self.matrix = orthogonal_completion(torch.ones(k * k))

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.k
        if h % k or w % k:
            raise ValueError(f"scale factor {k} does not divide the image size {h}×{w}")
        return x.reshape(b, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5).reshape(
            b, c, h // k, w // k, k * k)

    def _image(self, p: torch.Tensor) -> torch.Tensor:
        b, c, hk, wk, _ = p.shape
        k = self.k
        return p.reshape(b, c, hk, wk, k, k).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hk * k, wk * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._image(self._patches(x) @ self.matrix.to(x).T)

    def inverse(self, c: torch.Tensor) -> torch.Tensor:
        return self._image(self._patches(c) @ self.matrix.to(c))

    def mean_mask(self, shape) -> torch.Tensor:
        """1 at the component of each patch that holds its mean, 0 elsewhere; shape (C, H, W)."""
        mask = torch.zeros(shape)
        mask[:, :: self.k, :: self.k] = 1
        return mask

    def __repr__(self) -> str:
        return f"PatchTransform(k={self.k})"


def default_sigmas(scale: str, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
    """The editing sequence for a preset scale: the first ``EDIT_STEPS[scale]`` points of a
    Karras grid (ρ = 7) of ``EDIT_STEPS[scale] + 1`` points from σ_max to σ_min.

    σ_min itself is left out: f(x, σ_min) = x, so a step there changes nothing. The paper edits
    LSUN with 40 points of its ρ-grid (Appendix D); small images need fewer (10 on digits).
    """
    n = EDIT_STEPS.get(scale, EDIT_STEPS["digits"])
    return karras_sigmas(n + 1, sigma_min, sigma_max)[:-1].tolist()


def _check_images(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if y.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(y.shape)}")
    if mask.shape[-3:] != y.shape[-3:] or mask.ndim not in (3, 4):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not match images of shape "
                         f"{tuple(y.shape)} (expected {tuple(y.shape[1:])} or {tuple(y.shape)})")
    return mask.to(y)


@torch.no_grad()
def edit(f, y, transform, mask, sigmas, *, generator, sigma_min=SIGMA_MIN, clip=(-1.0, 1.0),
         start=None):
    """Algorithm 4: generate the components Ω of A·x, keep the others equal to those of y.

    ``f(x, σ)`` is the consistency function, ``transform`` A (``forward``/``inverse``), ``mask``
    Ω (1 = generate) of shape (C, H, W) or y's, ``sigmas`` the decreasing σ_1 > … > σ_N ≥ σ_min.
    The first step denoises ``start`` + σ_1·z, where ``start`` defaults to the known part
    A⁻¹[(A y) ⊙ (1 − Ω)] (stroke-guided generation passes the strokes themselves). The denoised
    estimate is clipped to ``clip`` before the known components are put back, so they are exact.
    One NFE per σ.
    """
    mask = _check_images(y, mask)
    sigmas = check_sigmas(sigmas, sigma_min=sigma_min)
    known = transform.forward(y) * (1 - mask)

    def replace(x):
        return transform.inverse(known + transform.forward(x) * mask)

    x = transform.inverse(known) if start is None else start
    for i, sigma in enumerate(sigmas):
        noise = sigma if i == 0 else math.sqrt(sigma**2 - sigma_min**2)
        x = f(x + noise * generator.randn_like(x), sigma)
        if clip is not None:
            x = x.clamp(*clip)
        x = replace(x)
    return x


def inpaint(f, y, mask, sigmas, *, generator, sigma_min=SIGMA_MIN, clip=(-1.0, 1.0)):
    """Fill the pixels where ``mask`` is 1 (A = I, Ω = mask); the others stay y's exactly."""
    return edit(f, y, Identity(), mask, sigmas, generator=generator, sigma_min=sigma_min,
                clip=clip)


def colorize(f, y, sigmas, *, generator, sigma_min=SIGMA_MIN, clip=(-1.0, 1.0)):
    """Colour an RGB image keeping its luminance (A = the colour transform, Ω = chroma axes).

    ``y`` is [B, 3, H, W] (a grey image repeated over 3 channels has luminance equal to its grey
    level) or [B, 1, H, W], repeated.
    """
    if y.ndim == 4 and y.shape[1] == 1:
        y = y.expand(-1, 3, -1, -1)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"colorization works on RGB images [B, 3, H, W], got {tuple(y.shape)}")
    mask = torch.ones(y.shape[1:])
    mask[0] = 0
    return edit(f, y, ColorTransform(), mask, sigmas, generator=generator, sigma_min=sigma_min,
                clip=clip)


def upsample_nearest(low: torch.Tensor, k: int) -> torch.Tensor:
    """Each low-resolution pixel repeated over a k×k patch: the reference of super-resolution."""
    return low.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def super_resolve(f, low, k, sigmas, *, generator, sigma_min=SIGMA_MIN, clip=(-1.0, 1.0)):
    """Upscale ``low`` [B, C, h, w] by ``k``: A = the per-patch transform, Ω = all but the mean,
    so every k×k patch of the result averages to the low-resolution pixel exactly."""
    if low.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(low.shape)}")
    transform = PatchTransform(k)
    y = upsample_nearest(low, k)
    mask = 1 - transform.mean_mask(y.shape[1:])
    return edit(f, y, transform, mask, sigmas, generator=generator, sigma_min=sigma_min, clip=clip)


def stroke_guided(f, strokes, sigmas, *, generator, sigma_min=SIGMA_MIN, clip=(-1.0, 1.0)):
    """SDEdit with a consistency model: noise the stroke painting to σ_1 = ``sigmas[0]`` and
    run Algorithm 4 with A = I, Ω = 1 (plain multistep sampling from strokes + σ_1·z). A smaller
    σ_1 follows the strokes more closely, a larger one gives a more realistic image."""
    mask = torch.ones(strokes.shape[1:])
    return edit(f, strokes, Identity(), mask, sigmas, generator=generator, sigma_min=sigma_min,
                clip=clip, start=strokes)


@torch.no_grad()
def denoise(f, noisy, sigma, *, clip=(-1.0, 1.0)):
    """One evaluation f(x_σ, σ) of an image with known Gaussian noise level σ; the identity at
    σ = σ_min by the boundary condition (clipping aside)."""
    x = f(noisy, sigma)
    return x if clip is None else x.clamp(*clip)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha) -> torch.Tensor:
    """Spherical interpolation per sample: sin((1−α)θ)/sin θ·z0 + sin(αθ)/sin θ·z1, θ the angle
    between z0 and z1 (linear where they are parallel)."""
    alpha = torch.as_tensor(alpha, dtype=z0.dtype).reshape(-1, *([1] * (z0.ndim - 1)))
    a, b = z0.flatten(1), z1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = cos.clamp(-1, 1).acos().reshape(-1, *([1] * (z0.ndim - 1)))
    sin = theta.sin()
    parallel = sin.abs() < 1e-6
    w0 = torch.where(parallel, 1 - alpha, ((1 - alpha) * theta).sin() / sin.where(~parallel, 1))
    w1 = torch.where(parallel, alpha, (alpha * theta).sin() / sin.where(~parallel, 1))
    return w0 * z0 + w1 * z1


@torch.no_grad()
def interpolate(f, z0, z1, alphas, *, sigma_max=SIGMA_MAX, clip=(-1.0, 1.0)):
    """One-step samples f(σ_max·z_α, σ_max) along the slerp z_α between latents z0 and z1
    ([C, H, W] each, unit Gaussian noise); returns [len(alphas), C, H, W]. At α = 0 and 1 these
    are the one-step samples of z0 and z1."""
    alphas = torch.as_tensor(alphas, dtype=z0.dtype)
    z = slerp(z0.expand(len(alphas), *z0.shape), z1.expand(len(alphas), *z1.shape), alphas)
    x = f(sigma_max * z, sigma_max)
    return x if clip is None else x.clamp(*clip)


# ---------------------------------------------------------------- images on disk (``zoo edit``)

TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "interpolate")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_files(path) -> list[Path]:
    """``path`` itself, or the images in the folder ``path`` (sorted, not recursive)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    return [path]


def read_image(path, channels: int, size: tuple[int, int], *, resize: bool = False,
               allow_grey: bool = True) -> torch.Tensor:
    """An image file as [channels, H, W] in [−1, 1]: L for 1 channel, RGB for 3.

    ``size`` = (H, W) must match unless ``resize`` (then Lanczos resizing); a grey picture for
    a colour model is refused unless ``allow_grey``.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    rgb = np.asarray(image)
    if channels == 3 and not allow_grey and (rgb == rgb[..., :1]).all():
        raise ValueError(f"{path} is a grey image but the model makes colour (RGB) images; "
                         "colour it first with --task colorize")
    if (image.height, image.width) != tuple(size):
        if not resize:
            raise ValueError(f"{path} is {image.height}×{image.width} but this task needs "
                             f"{size[0]}×{size[1]}; pass --resize to resize it")
        image = image.resize(tuple(size)[::-1], Image.Resampling.LANCZOS)
    image = image.convert("L" if channels == 1 else "RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 127.5 - 1
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def read_mask(path, size: tuple[int, int]) -> torch.Tensor:
    """A mask image as [1, H, W] of 0/1: white (≥ 50 % grey) marks the pixels to generate."""
    from PIL import Image

    with Image.open(path) as image:
        mask = np.asarray(image.convert("L"))
    if mask.shape != tuple(size):
        raise ValueError(f"mask {path} is {mask.shape[0]}×{mask.shape[1]} but the image is "
                         f"{size[0]}×{size[1]}: they must be the same size")
    return torch.from_numpy(mask >= 128).float()[None]


def edit_files(f, task, inputs, *, shape, sigmas, sigma_min, sigma_max, seed=0, mask=None,
               scale=None, sigma=None, seed2=None, frames=8, resize=False):
    """Run ``task`` on image files for ``zoo edit``: returns ``(names, rows)``, one row of panels
    ``[P, C, H, W]`` per input (input, [mask,] result), input i edited with seed ``seed + i``.

    ``sigmas`` is the editing sequence (stroke-guided generation starts at ``sigma`` and keeps
    the smaller ones); ``sigma`` is also the known noise level for denoising.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    channels, height, width = shape
    if task == "interpolate":
        gen = per_sample_generator([seed, seed + 1 if seed2 is None else seed2])
        z = gen.randn(shape)
        row = interpolate(f, z[0], z[1], torch.linspace(0, 1, frames), sigma_max=sigma_max)
        return ["interpolation"], [row]
    if inputs is None:
        raise ValueError(f"--task {task} needs --input (an image or a folder of images)")
    if task == "colorize" and channels != 3:
        raise ValueError(f"colorization needs a colour (RGB) model; this one makes {channels}-"
                         "channel images")
    files = image_files(inputs)
    size = (height, width)
    if task == "superres":
        if not scale or scale < 2:
            raise ValueError("--task superres needs --scale K (an integer >= 2)")
        if height % scale or width % scale:
            raise ValueError(f"scale factor {scale} does not divide the model's image size "
                             f"{height}×{width}")
        size = (height // scale, width // scale)
    if task in ("stroke", "denoise") and sigma is None:
        raise ValueError(f"--task {task} needs --sigma ("
                         + ("the noise level to start from" if task == "stroke" else
                            "the noise level of the input") + ")")
    if sigma is not None and not sigma_min <= sigma <= sigma_max:
        raise ValueError(f"--sigma must lie in [{sigma_min}, {sigma_max}], got {sigma}")
    y = torch.stack([read_image(p, channels, size, resize=resize,
                                allow_grey=task == "colorize") for p in files])
    gen = per_sample_generator(range(seed, seed + len(files)))
    options = dict(generator=gen, sigma_min=sigma_min)
    if task == "inpaint":
        if mask is None:
            raise ValueError("--task inpaint needs --mask (white = pixels to fill)")
        omega = read_mask(mask, size).expand(channels, -1, -1)
        panels = [y, omega.expand_as(y) * 2 - 1, inpaint(f, y, omega, sigmas, **options)]
    elif task == "colorize":
        grey = ColorTransform().forward(y)[:, :1] * math.sqrt(sum(w * w for w in LUMA))
        panels = [grey.expand_as(y), colorize(f, y, sigmas, **options)]
    elif task == "superres":
        panels = [upsample_nearest(y, scale), super_resolve(f, y, scale, sigmas, **options)]
    elif task == "stroke":
        start = [sigma] + [s for s in sigmas if s < sigma]
        panels = [y, stroke_guided(f, y, start, **options)]
    else:
        panels = [y, denoise(f, y, sigma)]
    return [p.stem for p in files], list(torch.stack(panels, 1))


#: The panels of each task's row (interpolation: one per frame, labelled by its t).
PANELS = {"inpaint": ("input", "mask", "result"), "colorize": ("observed", "result"),
          "superres": ("observed", "result"), "stroke": ("input", "result"),
          "denoise": ("input", "result")}
#: The tasks that follow a σ sequence (``--sigmas``); denoising and interpolation do not.
SIGMA_TASKS = ("inpaint", "colorize", "superres", "stroke")


def save_row(row: torch.Tensor, path, task: str) -> Path:
    """Panels side by side (input, [mask,] result) as one PNG, upscaled when small, each
    labelled (:data:`PANELS`)."""
    from zoo.viz import save_image_grid

    labels = PANELS.get(task) or [f"t={t:.2f}" for t in torch.linspace(0, 1, len(row)).tolist()]
    return save_image_grid(row, path, nrow=len(row), labels=list(labels))
