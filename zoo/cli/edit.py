"""``zoo edit``: zero-shot editing with a consistency model (:mod:`zoo.editing`)."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.common import (
    USER_ERRORS,
    UserError,
    given_options,
    main,
    not_finite_message,
    registered_method,
    user_error,
    with_option,
)


@main.command("edit")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--task",
    required=True,
    type=click.Choice(["inpaint", "colorize", "superres", "stroke", "denoise", "interpolate"]),
)
@click.option(
    "--input",
    "inputs",
    type=click.Path(exists=True),
    default=None,
    help="An image (PNG/JPEG) or a folder of them; superres: the low-resolution image.",
)
@click.option(
    "--mask",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="inpaint: mask image of the image's size, white = pixels to fill.",
)
@click.option("--scale", type=int, default=None, help="superres: upscaling factor K.")
@click.option(
    "--sigma",
    type=float,
    default=None,
    help="stroke: noise level to start from; denoise: the input's noise level.",
)
@click.option(
    "--sigmas",
    default=None,
    help="Decreasing σ sequence, e.g. 80,20,5,1 [default: per preset, docs/editing.md].",
)
@with_option("seed", help="Input i uses seed SEED+i; interpolate: the first latent.")
@click.option("--seed2", type=int, default=None, help="interpolate: the second latent [SEED+1].")
@click.option(
    "--frames",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="interpolate: number of frames.",
)
@click.option("--resize", is_flag=True, help="Resize inputs of another size (else an error).")
@click.option(
    "--out",
    type=click.Path(),
    required=True,
    help="Output picture (.png, .jpg): input | [mask |] result; a folder for a folder of inputs. "
    "The raw results are written first to OUT with .npz (a folder: OUT.npz beside it).",
)
@with_option("device")
@with_option("weights")
def edit_command(
    run, task, inputs, mask, scale, sigma, sigmas, seed, seed2, frames, resize, out, device, weights
):
    """Zero-shot editing with a consistency model (Algorithm 4 of Song et al. 2023):
    `zoo edit RUN --task inpaint --input img.png --mask mask.png --out out.png`."""
    import torch

    from zoo.diffusion.samplers import parse_sigmas
    from zoo.editing import SIGMA_TASKS, default_sigmas, edit_files, save_row
    from zoo.methods import preset_scale
    from zoo.training import load_checkpoint
    from zoo.viz import PICTURE_SUFFIXES, check_folder, check_output, save_samples_file

    batch = inputs is not None and Path(inputs).is_dir() and task != "interpolate"
    try:
        if batch:
            out = check_folder(out, "--out")
            npz = out.parent / f"{out.name}.npz"
        else:
            out = check_output(out, PICTURE_SUFFIXES, "--out")
            npz = out.with_suffix(".npz")
        method = load_checkpoint(run)["method"]
        loaded = registered_method(method).load(run, device=device, ema=weights == "ema")
        f = loaded.denoiser
        consistency = getattr(f, "parameterization", None) == "consistency"
        if not consistency or loaded.dataset["kind"] != "image":
            raise UserError(
                f"{run} is a {method!r} run without a consistency function of images: "
                "zoo edit needs a run whose denoiser is a consistency function "
                "f(x, σ) of images, e.g. a cm run on digits"
            )
        if sigmas:
            sigmas = parse_sigmas(
                sigmas, sigma_min=f.sigma_min, sigma_max=f.sigma_max, name="--sigmas"
            )
        else:
            sigmas = default_sigmas(preset_scale(loaded.config.dataset), f.sigma_min, f.sigma_max)
        names, rows = edit_files(
            lambda x, s: f(x.to(device), s).cpu(),
            task,
            inputs,
            shape=loaded.dataset["shape"],
            sigmas=sigmas,
            sigma_min=f.sigma_min,
            sigma_max=f.sigma_max,
            seed=seed,
            mask=mask,
            scale=scale,
            sigma=sigma,
            seed2=seed2,
            frames=frames,
            resize=resize,
        )
    except USER_ERRORS as exc:
        raise user_error(exc) from None
    results = torch.stack(rows)
    info = {"task": task, "names": names, "run": str(run), "weights": weights, "sigmas": sigmas}
    save_samples_file(results, info, npz)
    settings = given_options(click.get_current_context(), ["weights", "sigmas", "sigma"])
    bad = int((~torch.isfinite(results.flatten(1))).any(1).sum())
    if bad:
        raise UserError(not_finite_message(bad, len(results), loaded, settings, npz))
    paths = [
        save_row(row, out / f"{name}.png" if batch else out, task)
        for name, row in zip(names, rows, strict=True)
    ]
    used = f", sigmas {[round(s, 4) for s in sigmas]}" if task in SIGMA_TASKS else ""
    click.echo(f"{task}: {len(paths)} image(s){used} -> {out if batch else paths[0]} "
               f"(raw values: {npz})")
