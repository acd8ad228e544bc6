"""``zoo sample METHOD``: samples of a trained run into a ``.npz`` and a picture."""

from __future__ import annotations

import inspect
import json

import click

from zoo import plugins as zoo_plugins
from zoo.cli.common import (
    USER_ERRORS,
    MethodGroup,
    UserError,
    given_options,
    main,
    not_finite_message,
    shared_option,
    user_error,
)


def _sampler_params(method) -> list[click.Option]:
    """``--sampler`` (the registered samplers of the method's kind of model, read when the
    command is built) and ``--sampler-options``, for a method with a default sampler."""
    from zoo.diffusion.samplers import MODEL_KINDS, sampler_options

    if not method.default_sampler:
        return []
    names = method.samplers()
    kind = MODEL_KINDS.get(method.parameterization, method.parameterization)
    options = {n: list(sampler_options(zoo_plugins.get("samplers", n)).values()) for n in names}
    by_sampler = "; ".join(f"{n}: {', '.join(o.describe() for o in opts)}"
                           for n, opts in options.items() if opts)
    # an example this method's samplers take: the default sampler's first option, else another's
    ordered = [method.default_sampler, *(n for n in names if n != method.default_sampler)]
    example = next((options[n][0] for n in ordered if options.get(n)), None)
    shown = "" if example is None else \
        f", e.g. '{json.dumps({example.name: example.default})}'"
    return [
        click.Option(["--sampler"], type=click.Choice(names), default=method.default_sampler,
                     show_default=True,
                     help=f"A registered sampler of {kind}s: {', '.join(names)} "
                     "(docs/samplers.md)."),
        click.Option(["--sampler-options"], metavar="JSON", default=None,
                     help=f"The sampler's options as a JSON object{shown}; an option it does not "
                     f"take is an error. Options: {by_sampler or '(none)'}."),
    ]


def _make_sample_command(name, method):
    def callback(
        run, dataset, runs_root, n, seed, batch_size, out, samples_out, device, weights,
        class_label, overwrite, noise_stream, **opts
    ):
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        from zoo.diffusion.random import noise_stream as use_stream
        from zoo.sample_export import NpzWriter
        from zoo.viz import MAX_GRID, PICTURE_SUFFIXES, check_output, save_samples_picture

        ctx = click.get_current_context()
        try:
            out = check_output(out, PICTURE_SUFFIXES, "--out", overwrite=overwrite)
            npz = check_output(samples_out or out.with_suffix(".npz"), (".npz",), "--samples-out",
                               overwrite=overwrite)
            if run is None:
                run = method.default_run_dir(method.configure(dataset), runs_root)
            loaded = method.load(run, device=device, ema=weights == "ema")
            if class_label is not None:
                if "class_label" not in inspect.signature(method.sample).parameters:
                    raise ValueError(f"--class: method {name!r} does not sample "
                                     "class-conditionally")
                opts["class_label"] = class_label
            first, picture, labels, bad = None, [], [], 0
            writer = NpzWriter(npz, n, tuple(loaded.dataset["shape"]), np.float32,
                               name="samples", labels_name="labels")
            try:  # batch by batch into the .npz: memory holds one batch and the picture's
                for start in tqdm(range(0, n, batch_size), desc=f"sample {name}",
                                  disable=n <= batch_size, dynamic_ncols=True):
                    count = min(batch_size, n - start)
                    with use_stream(noise_stream):
                        chunk = method.sample(loaded, count, seed=seed + start,
                                              batch_size=batch_size, device=device,
                                              progress=n <= batch_size, **opts)
                    first = first or chunk
                    x = chunk.x.detach().float().cpu()
                    bad += int((~torch.isfinite(x.flatten(1))).any(1).sum())
                    writer.add(x.numpy(), chunk.labels)
                    if chunk.labels is not None:
                        labels += chunk.labels.tolist()
                    keep = MAX_GRID if loaded.dataset["kind"] == "image" else n
                    picture.append(x[: max(0, keep - sum(map(len, picture)))])
                info = {**first.info, "run": str(run), "weights": weights,
                        "dataset": loaded.dataset["name"], "seeds": [seed, seed + n - 1],
                        "noise_stream": noise_stream, "n": n,
                        **({"labels": labels} if labels else {})}
                npz = writer.close({"info": np.array(json.dumps(info))})
            except BaseException:
                writer.abort()
                raise
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        picture = torch.cat(picture)
        settings = given_options(ctx, ["weights", "sampler", "sampler_options", "noise_stream",
                                *(o.name for o in method.sample_options)])
        if bad:
            raise UserError(not_finite_message(bad, n, loaded, settings, npz))
        title = f"{name}  NFE={first.nfe}" + ("  (raw weights)" if weights == "raw" else "")
        pic = save_samples_picture(picture, loaded.dataset["kind"], out, title)
        click.echo(f"{n} samples, NFE {first.nfe}: {pic} {npz}")

    params = [
        click.Option(
            ["--run"],
            type=click.Path(),
            default=None,
            help="Trained run directory, or one of its snapshots (RUN/snapshots/snapshot-step*.pt)"
            " [default: RUNS_ROOT/DATASET/RUN_NAME].",
        ),
        click.Option(
            ["--dataset"],
            default="toy",
            show_default=True,
            help="Dataset of the default run directory.",
        ),
        shared_option("runs_root"),
        click.Option(
            ["--n"],
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Number of samples.",
        ),
        shared_option("seed"),
        shared_option("noise_stream"),
        shared_option("batch_size", default=256),
        click.Option(
            ["--out"],
            type=click.Path(dir_okay=False),
            default="samples.png",
            show_default=True,
            help="Picture (.png, .jpg): an image grid, or a scatter plot for 2D data; its folder "
            "is created.",
        ),
        click.Option(["--overwrite"], is_flag=True,
                     help="Replace existing --out and --samples-out files (refused otherwise)."),
        click.Option(
            ["--samples-out"],
            type=click.Path(dir_okay=False),
            default=None,
            help="Samples file (.npz with the model, sampler and NFE), written before the "
            "picture [default: OUT with .npz].",
        ),
        shared_option("device"),
        shared_option("weights"),
        click.Option(
            ["--class", "class_label"],
            type=int,
            default=None,
            help="Class K of a class-conditional run (0 <= K < its num_classes) for every "
            "sample [default: one label per sample drawn uniformly from its seed].",
        ),
        *_sampler_params(method),
        *method.sample_options,
    ]
    return click.Command(
        name,
        callback=callback,
        params=params,
        help=f"Sample from a trained {name} run.",
        short_help=method.description,
    )


@main.group(cls=MethodGroup, make_command=_make_sample_command)
def sample():
    """Sample from a trained run: `zoo sample METHOD [--run DIR] --n N --out x.png`."""
