"""The ``zoo`` command line: plugins, train, sample, bench, edit, import-edm, import-openai,
export and import-safetensors."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import warnings
from pathlib import Path

import click
import torch

import zoo
from zoo import distributed
from zoo import plugins as zoo_plugins


class UserError(click.ClickException):
    """A clear message for bad input; exit code 1, no traceback."""


# Errors that come from what the user asked for: shown as messages, not tracebacks.
USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, TypeError)


#: Set to 1 (or pass ``zoo --traceback``) to see the full traceback of an error instead of its
#: one-line message.
TRACEBACK_ENV = "ZOO_TRACEBACK"


_show_traceback = False  # set by each `zoo` invocation from --traceback or ZOO_TRACEBACK


def _user_error(exc: BaseException) -> UserError:
    """The one-line error for ``exc``; with ``--traceback`` (or ``ZOO_TRACEBACK=1``) the
    original is raised again, traceback and cause and all (call it inside the ``except``)."""
    if _show_traceback:
        raise exc
    return UserError(str(exc))


def _report_plugin_failures() -> None:
    for f in zoo_plugins.failures():
        click.secho(
            f"warning: plugin {f.name!r} ({f.distribution}) not loaded: {f.error}",
            fg="yellow",
            err=True,
        )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a checkpoint fallback, skipped files) as one line on stderr, no source line."""
    click.secho(f"warning: {message}", fg="yellow", err=True)


def _method(name: str):
    try:
        return zoo_plugins.get("methods", name)
    except zoo_plugins.UnknownNameError as exc:
        raise _user_error(exc) from None


class MethodGroup(click.Group):
    """A group with one subcommand per registered method, built on demand."""

    def __init__(self, *args, make_command, **kwargs):
        super().__init__(*args, **kwargs)
        self.make_command = make_command

    def list_commands(self, ctx):
        return zoo_plugins.registry("methods").names()

    def get_command(self, ctx, name):
        if name not in zoo_plugins.registry("methods"):
            return None
        return self.make_command(name, zoo_plugins.get("methods", name))

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and name not in zoo_plugins.registry("methods"):
            valid = ", ".join(zoo_plugins.registry("methods").names())
            raise UserError(f"unknown method {name!r}; valid: {valid}")
        return super().resolve_command(ctx, args)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=zoo.DISTRIBUTION)
@click.option("--traceback", is_flag=True,
              help=f"Show the full traceback of an error, not its one-line message (or set "
                   f"{TRACEBACK_ENV}=1).")
def main(traceback):
    """zoo: few-step generative models (consistency models, EDM, progressive distillation).

    Methods are plugins: `zoo plugins` lists them. Typical session:

    \b
      zoo train edm --dataset toy
      zoo sample edm --dataset toy --steps 18 --n 2000 --out edm.png
      zoo bench --models cm,edm,pd --dataset toy --train-missing

    Under torchrun, train and bench run on every process (docs/distributed.md).
    """
    global _show_traceback
    _show_traceback = traceback or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    distributed.init_distributed()  # a no-op unless torchrun's environment variables are set
    warnings.showwarning = _show_warning
    _report_plugin_failures()


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_command(as_json):
    """List loaded plugins (distribution, version, hooks), what they register, those disabled by
    ZOO_DISABLE_PLUGINS, and failures."""
    infos = zoo_plugins.plugins()
    regs = {
        k: {n: zoo_plugins.registry(k).source(n) for n in zoo_plugins.registry(k).names()}
        for k in zoo_plugins.KINDS
    }
    fails, off = zoo_plugins.failures(), zoo_plugins.disabled()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": [dataclasses.asdict(i) for i in infos],
                    "registered": regs,
                    "disabled": [
                        {"name": i.name, "distribution": i.distribution, "version": i.version}
                        for i in off
                    ],
                    "failures": [dataclasses.asdict(f) for f in fails],
                },
                indent=2,
            )
        )
        return
    for info in infos:
        click.echo(
            f"{info.name}  ({info.distribution} {info.version})  hooks: {', '.join(info.hooks)}"
        )
    for info in off:
        click.echo(f"{info.name}  ({info.distribution} {info.version})  disabled "
                   f"({zoo_plugins.DISABLE_ENV})")
    click.echo()
    for kind, names in regs.items():
        click.echo(f"{kind}: {', '.join(names) or '-'}")
    for f in fails:
        click.echo(f"\nFAILED {f.name} ({f.distribution}): {f.error}")


def _device(ctx, param, value: str) -> str:
    """--device, with ``auto`` resolved and unknown names refused before any work."""
    device = distributed.resolve_device(value)
    try:
        torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"{value!r}; accepted: auto, cpu, cuda, cuda:N") from None
    return device


# ---------------------------------------------------------------- train


def _click_type(annotation: str):
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str, "bool": bool, "dict": "json"}.get(base, str)


#: The datasets whose presets ``zoo train METHOD --help`` shows, one per preset scale.
PRESET_DATASETS = ("toy", "digits", "cifar10")


def _presets(method) -> dict:
    """The method's configurations for :data:`PRESET_DATASETS` (no data loaded), those it has."""
    out = {}
    for dataset in PRESET_DATASETS:
        try:
            out[dataset] = method.configure(dataset)
        except (*USER_ERRORS, zoo_plugins.UnknownNameError):
            continue
    return out


def _shown(value) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) \
        else f"{value:g}" if isinstance(value, float) else str(value)


def config_options(config_class, presets: dict | None = None) -> list[click.Option]:
    """One ``--option`` per config field (a ``click.Choice`` where the field has ``choices``);
    unset (None) options keep the dataset preset's value, whose values per dataset in
    ``presets`` (name -> config) the help shows."""
    options = []
    for f in dataclasses.fields(config_class):
        if f.name in ("method", "dataset"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _click_type(f.type if isinstance(f.type, str) else f.type.__name__)
        if "choices" in f.metadata:
            kind = click.Choice(f.metadata["choices"])
        values = ", ".join(f"{d} {_shown(getattr(c, f.name))}" for d, c in (presets or {}).items())
        help_text = f.metadata.get("help", "") + (
            f" [presets: {values}]" if values else " [default: from the dataset preset]")
        if kind is bool:
            options.append(
                click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=None, help=help_text)
            )
        elif kind == "json":
            options.append(
                click.Option([flag, f.name], default=None, metavar="JSON", help=help_text)
            )
        else:
            options.append(click.Option([flag, f.name], type=kind, default=None, help=help_text))
    return options


def _overrides(config_class, params: dict) -> dict:
    out = {}
    for f in dataclasses.fields(config_class):
        value = params.get(f.name)
        if value is None or f.name in ("method", "dataset"):
            continue
        if _click_type(f.type if isinstance(f.type, str) else f.type.__name__) == "json":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UserError(f"--{f.name.replace('_', '-')} must be JSON: {exc}") from None
            if not isinstance(value, dict):
                raise UserError(f"--{f.name.replace('_', '-')} must be a JSON object")
        out[f.name] = value
    return out


def _duration(seconds: float) -> str:
    """``2d 3h 4m``, ``5h 6m`` or ``7m 8s``."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m" if h else f"{m}m {s}s"


def _print_dry_run(report: dict) -> None:
    c = report["config"]
    click.echo("settings (as the run's config.json would record them):")
    click.echo(json.dumps(c, indent=2, sort_keys=True))
    click.echo(f"run directory: {report['run_dir']} (not created)")
    click.echo(f"parameters: {report['parameters']:,}")
    click.echo(f"samples/s: {report['samples_per_s']:,.1f} (training steps on "
               f"{report['device']}, random data of shape {report['data_shape']})")
    click.echo(f"projected wall time: {_duration(report['projected_s'])} for "
               f"{report['iterations']:,} "
               f"iterations of {c['batch_size']} samples (training steps only)")


def _make_train_command(name, method):
    def callback(dataset, run_dir, runs_root, resume, progress, dry_run, **params):
        from zoo.training import TrainingInterrupted

        overrides = _overrides(method.config_class, params)
        echo = lambda msg: click.echo(msg, err=True) if distributed.is_main() else None
        try:
            if run_dir is None:
                preset = method.configure(dataset or "toy", **overrides)
                run_dir = method.default_run_dir(preset, runs_root)
            run_dir = Path(run_dir)
            if dry_run:
                if resume:
                    raise UserError("--dry-run describes a new run; it does not take --resume")
                config = method.configure(dataset or "toy", **overrides)
                report = method.dry_run(config, run_dir)
                if distributed.is_main():
                    _print_dry_run(report)
                return
            if resume:
                echo(f"resuming {name} in {run_dir}")
                if dataset is not None:
                    overrides["dataset"] = dataset
                method.resume(run_dir, overrides, progress=progress, echo=echo)
            else:
                config = method.configure(dataset or "toy", **overrides)
                echo(f"training {name} on {config.dataset} -> {run_dir}")
                method.train(config, run_dir, progress=progress)
        except TrainingInterrupted as exc:
            echo(f"{exc}\nresume with: zoo train {name} --run-dir {run_dir} --resume")
            sys.exit(exc.exit_code)
        except USER_ERRORS as exc:
            raise _user_error(exc) from None
        if distributed.is_main():
            click.echo(f"trained run: {run_dir}")

    params = [
        click.Option(
            ["--dataset"],
            default=None,
            help="Registered dataset name [default: toy; with --resume, the run's].",
        ),
        click.Option(
            ["--run-dir"],
            type=click.Path(file_okay=False),
            default=None,
            help="Where to write the run [default: RUNS_ROOT/DATASET/RUN_NAME].",
        ),
        click.Option(
            ["--runs-root"], type=click.Path(file_okay=False), default="runs", show_default=True
        ),
        click.Option(
            ["--resume"],
            is_flag=True,
            help="Continue the run from its last checkpoint with its own settings; the settings "
            "passed override them (run-defining ones, e.g. data, network, batch size, are "
            "refused).",
        ),
        click.Option(["--progress/--no-progress"], default=True, help="Show a progress bar."),
        click.Option(
            ["--dry-run"],
            is_flag=True,
            help="Print the resolved settings, the parameter count, the samples/s of a few real "
            "training steps on random data and the projected wall time; write nothing.",
        ),
        *config_options(method.config_class, _presets(method)),
    ]
    return click.Command(
        name,
        callback=callback,
        params=params,
        help=f"Train {name}: {method.description}",
        short_help=method.description,
    )


@main.group(cls=MethodGroup, make_command=_make_train_command)
def train():
    """Train a method: `zoo train METHOD --dataset D [settings]`; `zoo train METHOD --help`."""


# ---------------------------------------------------------------- sample

WEIGHTS_OPTION = dict(
    type=click.Choice(["ema", "raw"]),
    default="ema",
    show_default=True,
    help="The run's evaluation EMA weights, or its raw trained weights.",
)


def _given(ctx: click.Context, names) -> list[str]:
    """The options among ``names`` that were given on the command line, as ``--flag value``."""
    from click.core import ParameterSource

    return [
        f"{param.opts[0]} {ctx.params[param.name]}"
        for param in ctx.command.params
        if param.name in names
        and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE
    ]


def _not_finite(bad: int, n: int, run, settings: list[str], kept: Path) -> str:
    """The error for ``bad`` of ``n`` results holding NaN or inf: how many, the likely cause
    (the weights themselves, else the ``settings`` the user gave) and where they are kept."""
    weights = "EMA" if run.ema else "raw"
    largest = max((float(p.abs().max()) for p in run.denoiser.parameters() if p.numel()),
                  default=0.0)
    if not all(bool(p.isfinite().all()) for p in run.denoiser.parameters()):
        other = "raw" if run.ema else "ema"
        if _other_weights_finite(run):
            cause = (f"the run's {weights} weights hold NaN or inf (try --weights {other}, or "
                     "retrain)")
        else:
            cause = ("the run's weights hold NaN or inf, its EMA and raw weights alike: the run "
                     "diverged; retrain it (lower --lr or set --grad-clip) or sample an earlier "
                     "snapshot")
    elif largest > 1e6:
        cause = (f"the run's {weights} weights are extreme (largest |w| = {largest:.3g}): the run "
                 "diverged; retrain it (lower --lr or set --grad-clip) or sample an earlier "
                 "snapshot")
    elif settings:
        cause = f"likely caused by the sampling settings given: {', '.join(settings)}"
    else:
        cause = f"with the default settings and the {weights} weights (try --weights)"
    return (
        f"{bad} of {n} results are not finite (NaN or inf), {cause}. "
        f"No picture was written; the raw values are kept in {kept} for inspection."
    )


def _other_weights_finite(run) -> bool:
    """Whether the weights the run was not loaded with (raw for EMA, EMA for raw) are finite."""
    from zoo.training import load_checkpoint

    try:
        state = load_checkpoint(run.path)
    except Exception:  # noqa: BLE001 - a file that cannot be read again suggests nothing
        return False
    other = state.get("net" if run.ema else "ema")
    return other is not None and all(bool(t.isfinite().all()) for t in other.values()
                                     if t.is_floating_point())


def _sampler_params(method) -> list[click.Option]:
    """``--sampler`` (the registered samplers of the method's kind of model, read when the
    command is built) and ``--sampler-options``, for a method with a default sampler."""
    from zoo.diffusion.samplers import MODEL_KINDS, sampler_options

    if not method.default_sampler:
        return []
    names = method.samplers()
    kind = MODEL_KINDS.get(method.parameterization, method.parameterization)
    by_sampler = "; ".join(
        f"{n}: {', '.join(o.describe() for o in opts)}"
        for n in names
        if (opts := sampler_options(zoo_plugins.get("samplers", n)).values()))
    return [
        click.Option(["--sampler"], type=click.Choice(names), default=method.default_sampler,
                     show_default=True,
                     help=f"A registered sampler of {kind}s: {', '.join(names)} "
                     "(docs/samplers.md)."),
        click.Option(["--sampler-options"], metavar="JSON", default=None,
                     help="The sampler's options as a JSON object, e.g. '{\"S_churn\": 40}'; an "
                     f"option it does not take is an error. Options: {by_sampler or '(none)'}."),
    ]


def _make_sample_command(name, method):
    def callback(
        run, dataset, runs_root, n, seed, batch_size, out, samples_out, device, weights,
        class_label, overwrite, **opts
    ):
        import numpy as np
        from tqdm.auto import tqdm

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
                        "n": n, **({"labels": labels} if labels else {})}
                npz = writer.close({"info": np.array(json.dumps(info))})
            except BaseException:
                writer.abort()
                raise
        except USER_ERRORS as exc:
            raise _user_error(exc) from None
        picture = torch.cat(picture)
        settings = _given(ctx, ["weights", "sampler", "sampler_options",
                                *(o.name for o in method.sample_options)])
        if bad:
            raise UserError(_not_finite(bad, n, loaded, settings, npz))
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
        click.Option(
            ["--runs-root"], type=click.Path(file_okay=False), default="runs", show_default=True
        ),
        click.Option(
            ["--n"],
            type=click.IntRange(min=1),
            default=64,
            show_default=True,
            help="Number of samples.",
        ),
        click.Option(
            ["--seed"],
            type=int,
            default=0,
            show_default=True,
            help="Sample i uses seed SEED+i (independent of the batch size).",
        ),
        click.Option(["--batch-size"], type=click.IntRange(min=1), default=256, show_default=True),
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
        click.Option(["--device"], default="auto", show_default=True, callback=_device,
                     help="auto (CUDA where available, else cpu), cpu, cuda or cuda:N."),
        click.Option(["--weights"], **WEIGHTS_OPTION),
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


# ---------------------------------------------------------------- bench


def training_jobs(jobs: str, device: str) -> int:
    """``zoo bench --jobs``: a positive number, or auto (see its help)."""
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            raise UserError(f"--jobs {jobs!r}: accepted: a positive number or auto")
        return int(jobs)
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
@click.option(
    "--runs-root",
    type=click.Path(file_okay=False),
    default="runs",
    show_default=True,
    help="Where trained runs are found (RUNS_ROOT/DATASET/RUN_NAME).",
)
@click.option(
    "--train-missing",
    is_flag=True,
    help="Train absent or unfinished runs with the dataset's preset, requirements first.",
)
@click.option(
    "--n",
    type=click.IntRange(min=2),
    default=None,
    help="Samples per row [default: 50000 on real images (FID-50k, the published protocol; "
    "fewer is marked not comparable), 2000 on digits, 10000 for points (five W2 sets)].",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Every row draws sample i from seed SEED+i.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder [default: bench/DATASET].",
)
@click.option("--device", default="auto", show_default=True, callback=_device,
              help="auto (CUDA where available, else cpu), cpu, cuda or cuda:N.")
@click.option(
    "--inception-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="torch-fidelity's Inception weights file (FID/IS on CIFAR-10 and folders).",
)
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
@click.option("--weights", **WEIGHTS_OPTION)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="[METHOD.]KEY=VALUE",
    help="Override a preset setting of every run --train-missing trains (METHOD.KEY: only that "
    "method's); VALUE is JSON or text, dicts merge into the preset's. Repeatable. E.g. a CPU "
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
    n,
    seed,
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
                                                       "train_missing", "save_samples", "weights")
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
            raise _user_error(exc) from None
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
            n=n,
            seed=seed,
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
        raise _user_error(exc) from None
    if not main_rank:
        return
    click.echo(f"{dataset}: n={report.n} samples per row, seeds {seed}..{seed + report.n - 1}, "
               f"reference {report.ref or 'the dataset'}\n")
    click.echo(format_table(report))
    click.echo(f"\n{out}: table.md table.csv table.json metric_vs_nfe.png "
               "metric_vs_cost.png samples/")


# ---------------------------------------------------------------- edit


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
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Input i uses seed SEED+i; interpolate: the first latent.",
)
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
@click.option("--device", default="auto", show_default=True, callback=_device,
              help="auto (CUDA where available, else cpu), cpu, cuda or cuda:N.")
@click.option("--weights", **WEIGHTS_OPTION)
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
        loaded = _method(method).load(run, device=device, ema=weights == "ema")
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
        raise _user_error(exc) from None
    results = torch.stack(rows)
    info = {"task": task, "names": names, "run": str(run), "weights": weights, "sigmas": sigmas}
    save_samples_file(results, info, npz)
    settings = _given(click.get_current_context(), ["weights", "sigmas", "sigma"])
    bad = int((~torch.isfinite(results.flatten(1))).any(1).sum())
    if bad:
        raise UserError(_not_finite(bad, len(results), loaded, settings, npz))
    paths = [
        save_row(row, out / f"{name}.png" if batch else out, task)
        for name, row in zip(names, rows, strict=True)
    ]
    used = f", sigmas {[round(s, 4) for s in sigmas]}" if task in SIGMA_TASKS else ""
    click.echo(f"{task}: {len(paths)} image(s){used} -> {out if batch else paths[0]} "
               f"(raw values: {npz})")


# ---------------------------------------------------------------- import-edm, import-openai

_CHECK_DATA = click.option(
    "--check-data/--no-check-data",
    default=True,
    show_default=True,
    help="Load the registered dataset to check its shape and record its checksum (needed to "
    "use the run as a distillation teacher or in the bench); --no-check-data records only its "
    "name and shape (sampling and editing need no data).",
)


def _import(run):
    """Run an import, every failure a one-line message (exit code 1)."""
    from zoo.checkpoint_import import UnsafePickleError

    try:
        return run()
    except (*USER_ERRORS, OSError, EOFError, UnsafePickleError) as exc:
        text = str(exc) or type(exc).__name__
        if text.startswith("Error(s) in loading state_dict"):
            # torch's details (missing/unexpected keys, shape mismatches) on one line each
            details = [line.strip() for line in text.splitlines()[1:] if line.strip()]
            raise _user_error(ValueError("the weights do not fit the network: "
                                         + "; ".join(details))) from None
        raise _user_error(ValueError(text.splitlines()[0])) from None


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
    from zoo.checkpoint_import import import_edm_run

    run_dir = _import(lambda: import_edm_run(pickle_file, out, dataset=dataset,
                                             check_data=check_data))
    click.echo(f"imported {pickle_file} -> {run_dir / 'checkpoint.pt'}")


@main.command("import-openai")
@click.argument("checkpoint", type=click.Path(dir_okay=False, exists=True))
@click.option("--preset", required=True,
              help="The released file's settings, e.g. cd-imagenet64-lpips, ct-lsun-bedroom256 "
              "(see docs/reproduce.md; an unknown name lists them).")
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
    from zoo.checkpoint_import import import_openai_run

    run_dir = _import(lambda: import_openai_run(checkpoint, out, preset, method=method,
                                                dataset=dataset, check_data=check_data))
    click.echo(f"imported {checkpoint} -> {run_dir / 'checkpoint.pt'}")


# ---------------------------------------------------------------- weights out


@main.command("export")
@click.argument("run", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["safetensors", "diffusers"]),
              default="safetensors", show_default=True,
              help="safetensors: one file, the config in its metadata; diffusers: a "
              "ConsistencyModelPipeline directory (cm runs of the adm network).")
@click.option("--out", required=True, type=click.Path(),
              help="The file (safetensors, e.g. cd-toy.safetensors) or new directory "
              "(diffusers) to write.")
@click.option("--weights", **WEIGHTS_OPTION)
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


if __name__ == "__main__":
    sys.exit(main())
