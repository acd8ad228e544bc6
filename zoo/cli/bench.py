"""``zoo bench``: the NFE-versus-metric table of several methods (:mod:`zoo.bench`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from zoo.cli.common import (
    USER_ERRORS,
    UserError,
    main,
    user_error,
    with_option,
)


def training_jobs(jobs: str, device: str) -> int:
    """``zoo bench --jobs``: a positive number, or auto (see its help)."""
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            raise UserError(f"--jobs {jobs!r}: accepted: a positive number or auto")
        return int(jobs)
    import torch

    from zoo import distributed

    if str(device) not in ("cpu", "auto") or distributed.world_size() > 1:
        return 1
    if str(device) == "auto" and torch.cuda.is_available():
        return 1
    return max(1, min(4, len(os.sched_getaffinity(0))))


@main.command("bench")
@click.option(
    "--models",
    default=None,
    metavar="METHOD[:SAMPLER],...",
    help="Comma-separated methods, e.g. cm,edm,pd; METHOD:SAMPLER gives the method's rows with "
    "another registered sampler of its kind of model, labelled with it, e.g. "
    "edm,edm:dpm-solver-2,edm:euler (docs/samplers.md). Required unless --rescore.",
)
@click.option(
    "--sampler-options",
    "sampler_options",
    multiple=True,
    metavar="METHOD:SAMPLER=JSON",
    help="Options of the sampler of a METHOD:SAMPLER entry of --models, e.g. "
    "'edm:edm-stochastic={\"S_churn\": 40}'; checked before any training. Repeatable.",
)
@click.option(
    "--rescore",
    is_flag=True,
    help="Recompute the table in OUT from its rows' saved samples (OUT/samples/ROW.npz) with "
    "--metrics, without loading models or sampling; refused where samples are missing or were "
    "made from other data, --n or --seed.",
)
@click.option("--dataset", default="toy", show_default=True, help="Registered dataset name.")
@with_option("runs_root")
@click.option(
    "--train-missing",
    is_flag=True,
    help="Train absent or unfinished runs with the dataset's preset, requirements first.",
)
@click.option(
    "--untuned",
    is_flag=True,
    help="The presets as written: without the settings `zoo tune` chose for a method on this "
    "dataset where it holds some (docs/tuning.md). A run trained from the other presets is "
    "refused: bench these under another --runs-root.",
)
@click.option(
    "--n",
    type=click.IntRange(min=2),
    default=None,
    help="Samples per row [default: 50000 on real images (FID-50k, the published protocol; "
    "fewer is marked not comparable), 2000 on digits, 10000 for points (five W2 sets)].",
)
@with_option("seed", help="Every row draws sample i from seed SEED+i.")
@with_option("noise_stream")
@with_option("batch_size", default=500)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder [default: bench/DATASET].",
)
@with_option("device")
@click.option(
    "--inception-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="torch-fidelity's Inception weights file (FID/IS on CIFAR-10 and folders).",
)
@with_option("progress")
@with_option("weights")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="[METHOD[/RUN].]KEY=VALUE",
    help="Override a preset setting of every run --train-missing trains (METHOD.KEY: only that "
    "method's runs; METHOD/RUN.KEY: one run, e.g. cm/cm-ct.lr=2e-4); VALUE is JSON or "
    "text, dicts merge into the preset's. Repeatable. E.g. a CPU "
    "smoke run of the CIFAR-10 path: --set iterations=4 --set batch_size=8 --set "
    "'network_kwargs={\"model_channels\": 16}' --set cm.distance=l2 --set pd.teacher_steps=4.",
)
@click.option(
    "--metrics",
    default=None,
    help="Comma-separated registered metrics [default: the dataset's: w2, fd-digits or fid].",
)
@click.option(
    "--ref",
    type=click.Path(dir_okay=False),
    default=None,
    help="Reference for FID and the other feature-space metrics instead of the dataset: EDM's "
    "statistics (.npz with mu, sigma: FID and IS only) or openai's reference batch (.npz with "
    "arr_0 uint8 images [N, H, W, C]; features computed once and cached).",
)
@click.option(
    "--save-samples",
    type=click.Choice(["auto", "none", "png", "npz", "both"]),
    default="auto",
    show_default=True,
    help="Every row's samples in OUT/samples/ROW.npz (compressed: arr_0 the samples, images "
    "as uint8 [N, H, W, C] in openai's evaluator format, arr_1 class labels, info the row's "
    "record), what --rescore reads: auto writes them except for 50,000-image rows (FID-50k), "
    "npz always, none never; png writes a folder ROW/ of 000000.png... (EDM's fid.py, "
    "clean-fid) instead, both writes both.",
)
@click.option(
    "--jobs",
    default="auto",
    show_default=True,
    help="Runs --train-missing trains at once (each as soon as the runs it requires are "
    "trained; a run trains exactly as it would alone): a number, or auto: the CPU cores this "
    "process may use (at most 4) on the CPU, 1 on an accelerator or under torchrun.",
)
def bench_command(
    models,
    dataset,
    runs_root,
    train_missing,
    untuned,
    n,
    seed,
    noise_stream,
    batch_size,
    out,
    device,
    inception_weights,
    progress,
    weights,
    settings,
    metrics,
    ref,
    save_samples,
    sampler_options,
    rescore,
    jobs,
):
    """The NFE-versus-metric table: every method's rows from the same seeds through the same
    evaluator. Writes table.md/.csv/.json, metric_vs_nfe.png, metric_vs_cost.png and samples/
    into OUT."""
    from click.core import ParameterSource

    from zoo import distributed
    from zoo.bench import (
        BenchInterrupted,
        format_table,
        parse_settings,
        rescore_bench,
        run_bench,
    )
    from zoo.training import TrainingInterrupted

    ctx = click.get_current_context()
    out = Path(out) if out else Path("bench") / dataset
    metric_names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    if rescore:
        given = [f"--{p.replace('_', '-')}" for p in ("models", "sampler_options", "settings",
                                                       "train_missing", "save_samples", "weights",
                                                       "noise_stream", "untuned")
                 if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
        if given:
            raise UserError(f"--rescore reads the rows and samples of the bench in {out}; it "
                            f"takes no {', '.join(given).replace('--settings', '--set')}")
        try:
            report = rescore_bench(dataset, out=out, metrics=metric_names, n=n,
                                   seed=seed if ctx.get_parameter_source("seed")
                                   == ParameterSource.COMMANDLINE else None,
                                   batch_size=batch_size, ref=ref,
                                   inception_weights=inception_weights, progress=progress)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
        click.echo(f"{dataset}: rescored from {out}/samples, n={report.n} samples per row\n")
        click.echo(format_table(report))
        return
    if not models:
        raise UserError("--models is required (e.g. --models cm,edm,pd), unless --rescore")
    entry_options = {}
    for item in sampler_options:
        key, sep, text = item.partition("=")
        if not sep or ":" not in key:
            raise UserError(f"--sampler-options takes METHOD:SAMPLER=JSON, e.g. "
                            f"'edm:edm-stochastic={{\"S_churn\": 40}}'; got {item!r}")
        entry_options[key.strip()] = text
    # Under torchrun every rank samples its share of each row; rank 0 alone reports.
    main_rank = distributed.is_main()
    try:
        report = run_bench(
            [m.strip() for m in models.split(",") if m.strip()],
            dataset,
            runs_root=runs_root,
            train_missing=train_missing,
            untuned=untuned,
            n=n,
            seed=seed,
            noise_stream=noise_stream,
            batch_size=batch_size,
            out=out,
            device=device,
            inception_weights=inception_weights,
            progress=progress and main_rank,
            echo=(lambda msg: click.echo(msg, err=True)) if main_rank else (lambda msg: None),
            weights=weights,
            settings=parse_settings(settings),
            metrics=metric_names,
            ref=ref,
            save_samples=save_samples,
            sampler_options=entry_options,
            jobs=training_jobs(jobs, device),
        )
    except (TrainingInterrupted, BenchInterrupted) as exc:
        click.echo(f"{exc}\nresume with the same command: zoo {' '.join(sys.argv[1:])}",
                   err=True)
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        raise user_error(exc) from None
    if not main_rank:
        return
    click.echo(f"{dataset}: n={report.n} samples per row, seeds {seed}..{seed + report.n - 1} "
               f"({report.noise_stream} noise), reference {report.ref or 'the dataset'}\n")
    click.echo(format_table(report))
    click.echo(f"\n{out}: table.md table.csv table.json metric_vs_nfe.png "
               "metric_vs_cost.png samples/")
