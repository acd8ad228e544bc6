"""Math shared by every method: preconditioning, σ grids, ODE/SDE solver steps and samplers."""

from zoo.diffusion.precond import (
    SIGMA_DATA,
    SIGMA_MAX,
    SIGMA_MIN,
    Denoiser,
    consistency_scalings,
    edm_scalings,
    expand_sigma,
)
from zoo.diffusion.random import StackedGenerator
from zoo.diffusion.schedules import append_zero, karras_sigmas, lognormal_sigmas

__all__ = [
    "SIGMA_DATA",
    "SIGMA_MAX",
    "SIGMA_MIN",
    "Denoiser",
    "StackedGenerator",
    "append_zero",
    "consistency_scalings",
    "edm_scalings",
    "expand_sigma",
    "karras_sigmas",
    "lognormal_sigmas",
]
