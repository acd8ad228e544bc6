"""Weights in and out: ``zoo import-edm``, ``zoo import-openai``, ``zoo import-openai-jax``
(released checkpoints), ``zoo export`` and ``zoo import-safetensors``."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.common import (
    USER_ERRORS,
    UserError,
    json_object,
    main,
    user_error,
    with_option,
)

_CHECK_DATA = click.option(
    "--check-data/--no-check-data",
    default=None,
    help="Load the registered dataset to check its shape and record its checksum (needed to "
    "use the run as a distillation teacher, or in a bench against the training set); "
    "--no-check-data records only its name and shape (sampling, editing and zoo bench --ref "
    "need no data) [default: check it where its files are there, else record the name].",
)


def _import(run):
    """Run an import, every failure a one-line message (exit code 1)."""
    from zoo.importers import UnsafePickleError

    try:
        return run()
    except (*USER_ERRORS, OSError, EOFError, UnsafePickleError) as exc:
        text = str(exc) or type(exc).__name__
        if text.startswith("Error(s) in loading state_dict"):
            # torch's details (missing/unexpected keys, shape mismatches) on one line each
            details = [line.strip() for line in text.splitlines()[1:] if line.strip()]
            raise user_error(ValueError("the weights do not fit the network: "
                                         + "; ".join(details))) from None
        raise user_error(ValueError(text.splitlines()[0])) from None


@main.command("import-edm")
@click.argument("pickle_file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Run directory to create, e.g. runs/cifar10/edm (then the default teacher).",
)
@click.option(
    "--dataset",
    default="cifar10",
    show_default=True,
    help="The data the network was trained on (e.g. imagenet64 for the DhariwalUNet pickle).",
)
@_CHECK_DATA
def import_edm_command(pickle_file, out, dataset, check_data):
    """Import EDM's released network pickle (edm-cifar10-32x32-uncond-vp.pkl,
    edm-imagenet-64x64-cond-adm.pkl, network-snapshot-*.pkl) as an `edm` run, through a
    restricted unpickler: nothing in the file is executed."""
    from zoo.importers import import_edm_run

    run_dir = _import(lambda: import_edm_run(pickle_file, out, dataset=dataset,
                                             check_data=check_data))
    click.echo(f"imported {pickle_file} -> {run_dir / 'checkpoint.pt'}")


@main.command("import-openai")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True))
@click.option("--preset", required=True,
              help="The released file's settings, e.g. cd-imagenet64-lpips, ct-lsun-bedroom256 "
              "(see docs/reproduce.md; an unknown name lists them), or a .toml file describing "
              "another openai-format checkpoint (method, dataset, shape, network_kwargs, "
              "method_fields, num_classes).")
@click.option("--method", type=click.Choice(["cm", "edm"]), default=None,
              help="cm (CD/CT) or edm (the teachers); must match the preset [default: the "
              "preset's].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory to create, e.g. runs/imagenet64/cm-cd.")
@click.option("--dataset", default=None,
              help="The data the network was trained on [default: the preset's].")
@_CHECK_DATA
def import_openai_command(checkpoint, preset, method, out, dataset, check_data):
    """Import a checkpoint released by openai/consistency_models (edm_imagenet64_ema.pt,
    cd_imagenet64_lpips.pt, ...) as a `cm` or `edm` run; read with torch.load(weights_only=True).
    """
    from zoo.importers import import_openai_run

    run_dir = _import(lambda: import_openai_run(checkpoint, out, preset, method=method,
                                                dataset=dataset, check_data=check_data))
    click.echo(f"imported {checkpoint} -> {run_dir / 'checkpoint.pt'}")


@main.command("import-openai-jax")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True))
@click.option("--preset", required=True,
              help="The released file's settings, e.g. cd-lpips, ct-lpips, edm-cifar10, "
              "ct-cont-l2 (docs/reproduce.md lists the ten files and theirs; an unknown name "
              "lists them).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory to create, e.g. runs/cifar10/cm-cd-lpips (where zoo bench "
              "looks for CD with LPIPS).")
@click.option("--weights", type=click.Choice(["ema", "online"]), default="ema",
              show_default=True,
              help="The checkpoint's params_ema (what the paper sampled and evaluated) or its "
              "params.")
@click.option("--dataset", default="cifar10", show_default=True,
              help="The data the network was trained on.")
@click.option("--network-kwargs", default=None, metavar="JSON",
              help="Settings of another NCSN++ written by the same code, e.g. "
              '\'{"model_channels": 64, "channel_mult": [1, 2], "img_resolution": 16}\' '
              "[default: the released files' network].")
@_CHECK_DATA
def import_openai_jax_command(checkpoint, preset, out, weights, dataset, network_kwargs,
                              check_data):
    """Import a Flax checkpoint released by openai/consistency_models_cifar10 (edm_cifar10_ema,
    cd-lpips/checkpoints/checkpoint_80, ...) as an `edm` or `cm` run of the ncsnpp network,
    read without JAX (msgpack; nothing in the file is executed)."""
    from zoo.importers import import_jax_run

    kwargs = json_object("--network-kwargs", network_kwargs) if network_kwargs else None
    run_dir = _import(lambda: import_jax_run(checkpoint, out, preset, weights=weights,
                                             dataset=dataset, check_data=check_data,
                                             network_kwargs=kwargs))
    click.echo(f"imported the {weights} weights of {checkpoint} -> {run_dir / 'checkpoint.pt'}")


@main.command("export")
@click.argument("run", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["safetensors", "diffusers"]),
              default="safetensors", show_default=True,
              help="safetensors: one file, the config in its metadata; diffusers: a "
              "ConsistencyModelPipeline directory (cm runs of the adm network).")
@click.option("--out", required=True, type=click.Path(),
              help="The file (safetensors, e.g. cd-toy.safetensors) or new directory "
              "(diffusers) to write.")
@with_option("weights")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export_command(run, fmt, out, weights, overwrite):
    """Write a run's weights (a run directory, checkpoint or snapshot) as a safetensors file,
    with the run's method, config, dataset record and step in its metadata (`zoo
    import-safetensors` turns it back into a run), or as a diffusers ConsistencyModelPipeline
    directory (UNet2DModel + CMStochasticIterativeScheduler)."""
    if fmt == "safetensors":
        from zoo.export import export_safetensors

        if Path(out).is_file() and not overwrite:
            raise UserError(f"--out {out} exists; pass --overwrite to replace it, or choose "
                            "another file")

        path = _import(lambda: export_safetensors(run, out, weights=weights))
        click.echo(f"exported the {weights} weights of {run} -> {path}")
        return
    from zoo.export_diffusers import export_diffusers

    path, timesteps = _import(lambda: export_diffusers(run, out, weights=weights))
    click.echo(f"exported the {weights} weights of {run} -> {path} "
               f"(diffusers.ConsistencyModelPipeline.from_pretrained)")
    if timesteps:
        click.echo(f"the run's default σ: pipe(num_inference_steps=None, timesteps={timesteps}); "
                   "one step: pipe(num_inference_steps=1)")
    else:
        click.echo("the run's default σ lie on no Karras grid the scheduler can hold: "
                   "pipe(num_inference_steps=1) samples as zoo does; more steps take the "
                   "scheduler's grid")


@main.command("import-safetensors")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory to create, e.g. runs/toy/cm-cd.")
def import_safetensors_command(file, out):
    """Turn a file written by `zoo export` back into a run that `zoo sample --run`, `zoo edit`
    and `zoo bench` load (its weights, config, dataset record and step; no optimizer state)."""
    from zoo.export import import_safetensors

    run_dir = _import(lambda: import_safetensors(file, out))
    click.echo(f"imported {file} -> {run_dir / 'checkpoint.pt'}")

