"""Gallery of zero-shot editing with consistency models (Song et al. 2023, Algorithm 4, Section 6):
one figure per task under docs/img/editing/ and the numbers of docs/editing.md.

Digits (1-channel 8×8, held-out ``split="test"``): inpainting, super-resolution, stroke-guided
generation, denoising, interpolation. Colour (colorization, and super-resolution again): 16×16
crops cut from the two photos scikit-learn ships (``load_sample_images``: china.jpg,
flower.jpg), training crops from the left 80 % of each photo, test crops from the right 20 %.

A consistency model is loaded from ``--digits-run`` / ``--rgb-run`` if it holds a checkpoint,
else distilled there (CD) from the EDM teacher in ``--digits-teacher`` / ``--rgb-teacher``, which
is trained first if missing; all with the dataset's presets (about an hour on one CPU core for the
colour pair, the longest part):

    OMP_NUM_THREADS=1 python benchmarks/editing_gallery.py            # train if needed, then draw
    OMP_NUM_THREADS=1 python benchmarks/editing_gallery.py --crops-only   # just the crop folder
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zoo.data import load_dataset
from zoo.diffusion import StackedGenerator
from zoo.editing import (
    LUMA,
    colorize,
    default_sigmas,
    denoise,
    inpaint,
    interpolate,
    stroke_guided,
    super_resolve,
    upsample_nearest,
)
from zoo.methods import Run
from zoo.plugins import get
from zoo.training import load_checkpoint
from zoo.viz import save_image_grid

CROP = 16  # crop size of the colour data (pixels)
CROP_DOWNSCALE = 4  # photos are shrunk 4× first, so a crop holds a recognisable piece of scene
CROP_STRIDE = 4
TEST_FRACTION = 0.2  # rightmost part of each photo: held-out test crops


def build_crops(root: Path) -> Path:
    """Cut the colour data: ``root/train/*.png`` and ``root/test/*.png`` (16×16 RGB)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for name, photo in zip(photos.filenames, photos.images, strict=True):
        image = Image.fromarray(photo)
        image = image.resize((image.width // CROP_DOWNSCALE, image.height // CROP_DOWNSCALE),
                             Image.Resampling.LANCZOS)
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        split_at = int(width * (1 - TEST_FRACTION))
        for top in range(0, height - CROP + 1, CROP_STRIDE):
            for left in range(0, width - CROP + 1, CROP_STRIDE):
                split = "train" if left + CROP <= split_at else "test" if left >= split_at else None
                if split:
                    crop = pixels[top:top + CROP, left:left + CROP]
                    Image.fromarray(crop).save(root / split / f"{Path(name).stem}-{top}-{left}.png")
    return root


# CD of the colour model: the target EMA and decayed lr of the toy preset. With the digits
# preset's μ = 0 (lr 2e-4, 2000 steps) the student's colours stay speckled on these crops.
RGB_CD_SETTINGS = dict(target_ema=0.95, lr=5e-4, lr_decay="linear", iterations=1000)


def load_or_train(run_dir: Path, teacher_dir: Path, dataset: str, cd_settings=None,
                  **dataset_options) -> Run:
    """The consistency model in ``run_dir``. Without a checkpoint there it is trained first, the
    way the paper's best models are made: an EDM teacher into ``teacher_dir`` (unless that holds
    one), then consistency distillation into ``run_dir``; the dataset's presets, the CD one
    updated with ``cd_settings``."""
    if not (run_dir / "checkpoint.pt").exists():
        if not (teacher_dir / "checkpoint.pt").exists():
            edm = get("methods", "edm")
            edm.train(edm.configure(dataset, dataset_options=dataset_options), teacher_dir,
                      progress=False)
        cm = get("methods", "cm")
        config = cm.configure(dataset, mode="cd", teacher=str(teacher_dir),
                              dataset_options=dataset_options, **(cd_settings or {}))
        cm.train(config, run_dir, progress=False)
    method = load_checkpoint(run_dir)["method"]
    run = get("methods", method).load(run_dir)
    if run.denoiser.parameterization != "consistency":
        raise ValueError(f"{run_dir} is a {method!r} run, not a consistency model")
    return run


def psnr(x: torch.Tensor, ref: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """PSNR in dB for images in [−1, 1] (peak-to-peak 2), over ``where`` if given."""
    err = (x - ref) ** 2
    mse = err[where.expand_as(err) > 0].mean() if where is not None else err.mean()
    return float(10 * math.log10(4 / float(mse)))


def gen(n: int, seed: int = 0) -> StackedGenerator:
    return StackedGenerator(range(seed, seed + n))


def figure(rows: list[torch.Tensor], path: Path, n: int) -> Path:
    """Columns = examples, rows = the given panels ([N, C, H, W] each), first ``n`` examples."""
    return save_image_grid(torch.cat([r[:n] for r in rows]), path, nrow=n)


def nearest_fill(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline inpainting: every masked pixel takes the value of the nearest known pixel."""
    from scipy.ndimage import distance_transform_edt

    hole = mask[0].numpy() > 0
    _, (rows, cols) = distance_transform_edt(hole, return_indices=True)
    return y[:, :, torch.from_numpy(rows), torch.from_numpy(cols)]


def box_masks(shape) -> dict[str, torch.Tensor]:
    _, h, w = shape
    masks = {name: torch.zeros(1, h, w) for name in ("right half", "centre square", "bottom rows")}
    masks["right half"][:, :, w // 2:] = 1
    masks["centre square"][:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    masks["bottom rows"][:, h - 3:] = 1
    return masks


def digits_gallery(run: Run, out: Path, n: int, seed: int) -> dict:
    f, sigma_min = run.denoiser, run.denoiser.sigma_min
    sigmas = default_sigmas("digits", sigma_min, run.denoiser.sigma_max)
    test = load_dataset("digits", split="test").x
    x, numbers = test[:n], {}

    # Inpainting: masked-region PSNR, CM vs nearest-known-pixel fill.
    rows, numbers["inpaint"] = [], {}
    for name, mask in box_masks(x.shape[1:]).items():
        result = inpaint(f, x, mask, sigmas, generator=gen(n, seed))
        base = nearest_fill(x, mask)
        numbers["inpaint"][name] = {
            "cm_psnr_masked": psnr(result, x, mask), "nearest_psnr_masked": psnr(base, x, mask),
            "max_error_known": float((result - x).abs()[(1 - mask).expand_as(x) > 0].max())}
        rows += [x * (1 - mask), result]  # the hole shown mid-grey
    figure([x, *rows], out / "inpaint.png", 16)

    # Super-resolution ×2 and ×4: PSNR vs ground truth; CM vs nearest and bicubic upsampling.
    rows, numbers["superres"] = [x], {}
    for k in (2, 4):
        low = F.avg_pool2d(x, k)
        result = super_resolve(f, low, k, sigmas, generator=gen(n, seed))
        bicubic = F.interpolate(low, scale_factor=k, mode="bicubic", align_corners=False)
        numbers["superres"][f"x{k}"] = {
            "cm_psnr": psnr(result, x), "bicubic_psnr": psnr(bicubic.clamp(-1, 1), x),
            "nearest_psnr": psnr(upsample_nearest(low, k), x),
            "max_error_patch_means": float((F.avg_pool2d(result, k) - low).abs().max())}
        rows += [upsample_nearest(low, k), bicubic.clamp(-1, 1), result]
    figure(rows, out / "superres.png", 16)

    # Denoising at known σ: PSNR of noisy input, Gaussian-blur baseline and f(x_σ, σ).
    rows, numbers["denoise"] = [x], {}
    for s in (0.2, 0.5):
        noisy = x + s * gen(n, seed + 1000).randn_like(x)
        result = denoise(f, noisy, s)
        blur = gaussian_blur(noisy.clamp(-1, 1), 0.8)
        numbers["denoise"][f"sigma={s}"] = {
            "noisy_psnr": psnr(noisy.clamp(-1, 1), x), "blur_psnr": psnr(blur, x),
            "cm_psnr": psnr(result, x)}
        rows += [noisy.clamp(-1, 1), result]
    figure(rows, out / "denoise.png", 16)

    # Stroke-guided: coarse strokes = 4×4 block means quantised to 3 levels, noised to σ_1.
    strokes = upsample_nearest(torch.round(F.avg_pool2d(x, 2)), 2)
    rows = [x, strokes]
    numbers["stroke"] = {}
    for s in (1.0, 2.0, 5.0):
        result = stroke_guided(f, strokes, [s] + [t for t in sigmas if t < s], generator=gen(n))
        numbers["stroke"][f"sigma={s}"] = {"psnr_to_strokes": psnr(result, strokes)}
        rows.append(result)
    figure(rows, out / "stroke.png", 16)

    # Interpolation: slerp between latents of seeds (2i, 2i+1), one step each.
    frames = torch.linspace(0, 1, 9)
    rows = []
    for i in range(6):
        z = gen(2, seed + 2 * i).randn(x.shape[1:])
        rows.append(interpolate(f, z[0], z[1], frames, sigma_max=run.denoiser.sigma_max))
    save_image_grid(torch.cat(rows), out / "interpolate.png", nrow=len(frames))
    numbers["sigmas"] = sigmas
    return numbers


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    radius = 2
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * std**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def luminance(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("c,bchw->bhw", torch.tensor(LUMA, dtype=x.dtype), x)[:, None]


def chroma(x: torch.Tensor) -> torch.Tensor:
    """RGB minus its luminance: the colour the grey image lacks."""
    return x - luminance(x)


def colorization_numbers(result: torch.Tensor, x: torch.Tensor) -> dict:
    """PSNR of ``result`` against the truth ``x``, beside the grey image's (chroma 0): per pixel,
    per crop's mean colour, and the share of crops whose chroma ``result`` gets closer."""
    grey = luminance(x).expand_as(x)
    mean = lambda im: chroma(im).mean((2, 3))  # noqa: E731
    return {
        "psnr": psnr(result.clamp(-1, 1), x), "grey_psnr": psnr(grey, x),
        "mean_chroma_psnr": psnr(mean(result), mean(x)),
        "grey_mean_chroma_psnr": psnr(mean(grey), mean(x)),
        "closer_than_grey": float(((chroma(result) - chroma(x)).pow(2).mean((1, 2, 3))
                                   < chroma(x).pow(2).mean((1, 2, 3))).float().mean()),
        "max_error_luminance": float((luminance(result) - luminance(x)).abs().max())}


def rgb_gallery(run: Run, crops: Path, out: Path, n: int, seed: int, teacher: Run) -> dict:
    """Colorization and ×4 super-resolution of held-out crops; colorization also with the EDM
    teacher's denoiser in place of f (the same algorithm and σ), to separate the CM's error
    from the task's."""
    f, sigma_min = run.denoiser, run.denoiser.sigma_min
    sigmas = default_sigmas("digits", sigma_min, run.denoiser.sigma_max)
    test = load_dataset("folder", path=str(crops / "test"), resolution=CROP).x
    n = min(n, len(test))
    x = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]]
    numbers = {}

    grey = luminance(x).expand_as(x)
    result = colorize(f, x, sigmas, generator=gen(n, seed))
    numbers["colorize"] = colorization_numbers(result, x)
    numbers["colorize_teacher_denoiser"] = colorization_numbers(
        colorize(teacher.denoiser, x, sigmas, generator=gen(n, seed)), x)
    figure([grey, result.clamp(-1, 1), x], out / "colorize.png", 12)

    low = F.avg_pool2d(x, 4)
    result = super_resolve(f, low, 4, sigmas, generator=gen(n, seed))
    bicubic = F.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    numbers["superres_x4"] = {"cm_psnr": psnr(result, x), "bicubic_psnr": psnr(bicubic, x),
                              "nearest_psnr": psnr(upsample_nearest(low, 4), x)}
    figure([upsample_nearest(low, 4), bicubic, result, x], out / "superres_rgb.png", 12)
    numbers["sigmas"] = sigmas
    numbers["test_crops"] = len(test)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits-run", type=Path, default=Path("runs/digits/cm-cd"))
    parser.add_argument("--digits-teacher", type=Path, default=Path("runs/digits/edm"))
    parser.add_argument("--rgb-run", type=Path, default=Path("runs/editing/crops-cm-cd"))
    parser.add_argument("--rgb-teacher", type=Path, default=Path("runs/editing/crops-edm"))
    parser.add_argument("--crops", type=Path, default=Path("runs/editing/crops"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/editing"))
    parser.add_argument("--n", type=int, default=256, help="Test images per number.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crops-only", action="store_true")
    parser.add_argument("--skip-rgb", action="store_true")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    if not (args.crops / "test").is_dir():
        build_crops(args.crops)
    if args.crops_only:
        print(f"crops in {args.crops}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    numbers = {"digits": {}, "rgb": {}}
    run = load_or_train(args.digits_run, args.digits_teacher, "digits")
    numbers["digits"] = {"run": str(run.path), "step": run.step,
                         **digits_gallery(run, args.out, min(args.n, 297), args.seed)}
    if not args.skip_rgb:
        run = load_or_train(args.rgb_run, args.rgb_teacher, "folder", RGB_CD_SETTINGS,
                            path=str((args.crops / "train").resolve()), resolution=CROP)
        teacher = get("methods", "edm").load(args.rgb_teacher)
        numbers["rgb"] = {"run": str(run.path), "step": run.step,
                          **rgb_gallery(run, args.crops, args.out, args.n, args.seed, teacher)}
    (args.out / "numbers.json").write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
