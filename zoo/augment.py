"""EDM's non-leaking geometric augmentation (Karras et al. 2022, Appendix F.2; the pipeline of
Karras et al. 2020, "Training GANs with limited data", restricted to geometric transforms).

Each image is transformed with probability ``p`` per transform (x-flip: always, as a fair coin,
whenever ``p`` > 0 — EDM's train.py sets its multiplier to 1e8), and the network is told what
was done through 9 *augmentation labels*; at sampling the labels are zero ("no augmentation"),
so the transforms cannot leak into the generated distribution. The transforms and labels, in
the order of EDM's ``AugmentPipe``:

=================  =====================================  ==================================
transform          parameter                              labels
=================  =====================================  ==================================
x-flip             f ∈ {0, 1}                              f
y-flip             f ∈ {0, 1}                              f
isotropic scale    s = 2^(0.2·w), w ~ N(0, 1)              w
rotation           θ ~ U(−π, π)                            cos θ − 1, sin θ
anisotropic scale  2^(±0.2·w) along an axis at angle r     w·cos r, w·sin r
                   (r ~ U(−π, π) with probability ½, else 0)
translation        (w_x, w_y)·0.125·size, w ~ N(0, I)      w_x, w_y
=================  =====================================  ==================================

A transform that is not applied has parameter w = 0 (θ = 0), hence labels 0. The geometric
transforms are composed into one affine map per image and resampled bilinearly with reflection
at the borders (EDM resamples at twice the resolution with symmetric wavelet filters; see
docs/reproduction.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Number of augmentation labels (SongUNet's ``augment_dim``).
AUGMENT_DIM = 9
#: The labels left without y-flips and rotations (``orientation=False``): x-flip, isotropic
#: scale, anisotropic scale (2) and translation (2).
ORIENTATION_FREE_LABELS = (0, 2, 5, 6, 7, 8)
SCALE_STD = 0.2  # log2 standard deviation of the isotropic and anisotropic scalings
TRANSLATE_STD = 0.125  # of the image size


def _coin(noise, prob: float) -> torch.Tensor:
    """One bool per sample: True with probability ``prob``."""
    return noise.rand() < prob


def rotation(theta: torch.Tensor) -> torch.Tensor:
    """[N, 2, 2] counter-clockwise rotation matrices by ``theta`` (in the x-right, y-down frame
    of image pixels this turns the picture clockwise on screen)."""
    c, s = theta.cos(), theta.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def forward_matrix(scale, theta, aniso, aniso_angle, shift) -> torch.Tensor:
    """The [N, 3, 3] affine map from input to output pixel coordinates (origin at the image
    centre), in EDM's order: isotropic scaling by ``scale``, rotation by ``theta``, scaling by
    ``aniso`` and 1/``aniso`` along the axes turned by ``aniso_angle``, translation by ``shift``
    pixels."""
    n = scale.shape[0]
    diag = torch.stack([aniso, 1 / aniso], -1)
    a = rotation(aniso_angle) @ torch.diag_embed(diag) @ rotation(-aniso_angle)
    a = scale.view(n, 1, 1) * (a @ rotation(theta))
    m = torch.eye(3, dtype=scale.dtype, device=scale.device).repeat(n, 1, 1)
    m[:, :2, :2] = a
    m[:, :2, 2] = shift
    return m


def warp(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` [N, C, H, W] so that output pixel q shows input pixel matrix⁻¹·q
    (pixel coordinates with the origin at the image centre), bilinearly, reflecting at the
    borders."""
    n, _, h, w = images.shape
    inverse = torch.linalg.inv(matrix.double()).to(images.dtype)
    # grid_sample's normalised coordinates (align_corners=False): u = (2·x_pixel + 1)/W − 1,
    # i.e. centred pixel coordinates times 2/W.
    to_unit = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=images.dtype,
                                      device=images.device))
    from_unit = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=images.dtype,
                                        device=images.device))
    theta = (to_unit @ inverse @ from_unit)[:, :2, :]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def augment(images: torch.Tensor, p: float, noise, *,
            orientation: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM's geometric augmentation with probability ``p`` (CIFAR-10: 0.12).

    ``noise`` draws the random numbers, one per sample per call: ``rand()``, ``randn()`` and
    ``randint(low, high)`` shaped [N] (the trainer's :class:`~zoo.training.BatchNoise`, so a
    resumed run augments exactly as the uninterrupted one). Returns the images and their
    [N, 9] labels (module docstring). ``p`` = 0 returns the images unchanged and zero labels.
    ``orientation=False`` never y-flips or rotates and returns the 6 labels of the others
    (:data:`ORIENTATION_FREE_LABELS`): the pipeline of MeanFlow's official code.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"augment p must be in [0, 1], got {p}")
    if images.ndim != 4:
        raise ValueError(f"augment takes images [N, C, H, W], got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    keep = list(range(AUGMENT_DIM)) if orientation else list(ORIENTATION_FREE_LABELS)
    if p == 0:
        return images, images.new_zeros(n, len(keep))
    p_orient = p if orientation else 0.0
    zero = images.new_zeros(n)

    def gated(value: torch.Tensor, prob: float) -> torch.Tensor:
        return torch.where(_coin(noise, prob).to(value.device), value, zero)

    xflip = gated(noise.randint(0, 2).to(images), 1.0)
    yflip = gated(noise.randint(0, 2).to(images), p_orient)
    images = torch.where(xflip.view(n, 1, 1, 1) > 0, images.flip(3), images)
    images = torch.where(yflip.view(n, 1, 1, 1) > 0, images.flip(2), images)

    scale_w = gated(noise.randn().to(images), p)
    theta = gated((noise.rand().to(images) * 2 - 1) * math.pi, p_orient)
    aniso_w = gated(noise.randn().to(images), p)
    aniso_angle = gated((noise.rand().to(images) * 2 - 1) * math.pi, 0.5)
    shift_on = _coin(noise, p).to(images.device)
    shift_w = torch.stack([noise.randn().to(images), noise.randn().to(images)], -1)
    shift_w = torch.where(shift_on.view(n, 1), shift_w, 0)

    labels = torch.stack([
        xflip, yflip, scale_w, theta.cos() - 1, theta.sin(),
        aniso_w * aniso_angle.cos(), aniso_w * aniso_angle.sin(), shift_w[:, 0], shift_w[:, 1],
    ], -1)
    shift = shift_w * TRANSLATE_STD * torch.tensor([w, h], dtype=images.dtype,
                                                   device=images.device)
    matrix = forward_matrix((scale_w * SCALE_STD).exp2(), theta, (aniso_w * SCALE_STD).exp2(),
                            aniso_angle, shift)
    moved = labels[:, 2:].ne(0).any(1)  # a geometric transform other than the flips
    if moved.any():
        images = images.clone()
        images[moved] = warp(images[moved], matrix[moved])
    return images, labels[:, keep]
