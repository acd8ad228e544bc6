"""The ``zoo`` command line: plugins, train, sample (and, from plugins' methods, everything else)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from zoo import plugins as zoo_plugins


class UserError(click.ClickException):
    """A clear message for bad input; exit code 1, no traceback."""


# Errors that come from what the user asked for: shown as messages, not tracebacks.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, RuntimeError, TypeError)


def _report_plugin_failures() -> None:
    for f in zoo_plugins.failures():
        click.secho(f"warning: plugin {f.name!r} ({f.distribution}) not loaded: {f.error}",
                    fg="yellow", err=True)


def _method(name: str):
    try:
        return zoo_plugins.get("methods", name)
    except zoo_plugins.UnknownNameError as exc:
        raise UserError(str(exc)) from None


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
@click.version_option(package_name="zoo")
def main():
    """zoo: few-step generative models (consistency models, EDM, progressive distillation).

    Methods are plugins: `zoo plugins` lists them. Typical session:

    \b
      zoo train edm --dataset toy
      zoo sample edm --dataset toy --steps 18 --n 2000 --out edm.png
      zoo bench --models cm,edm,pd --dataset toy --train-missing
    """
    _report_plugin_failures()


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_command(as_json):
    """List loaded plugins (distribution, version, hooks), what they register, and failures."""
    infos = zoo_plugins.plugins()
    regs = {k: {n: zoo_plugins.registry(k).source(n) for n in zoo_plugins.registry(k).names()}
            for k in zoo_plugins.KINDS}
    fails = zoo_plugins.failures()
    if as_json:
        click.echo(json.dumps({
            "plugins": [dataclasses.asdict(i) for i in infos],
            "registered": regs,
            "failures": [dataclasses.asdict(f) for f in fails],
        }, indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  ({info.distribution} {info.version})  hooks: {', '.join(info.hooks)}")
    click.echo()
    for kind, names in regs.items():
        click.echo(f"{kind}: {', '.join(names) or '-'}")
    for f in fails:
        click.echo(f"\nFAILED {f.name} ({f.distribution}): {f.error}")


# ---------------------------------------------------------------- train

def _click_type(annotation: str):
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str, "bool": bool, "dict": "json"}.get(base, str)


def config_options(config_class) -> list[click.Option]:
    """One ``--option`` per config field; defaults come from the dataset's preset, so unset = None."""
    options = []
    for f in dataclasses.fields(config_class):
        if f.name in ("method", "dataset"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _click_type(f.type if isinstance(f.type, str) else f.type.__name__)
        help_text = f.metadata.get("help", "") + " [default: from the dataset preset]"
        if kind is bool:
            options.append(click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=None, help=help_text))
        elif kind == "json":
            options.append(click.Option([flag, f.name], default=None, metavar="JSON", help=help_text))
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


def _make_train_command(name, method):
    def callback(dataset, run_dir, runs_root, resume, progress, **params):
        try:
            config = method.configure(dataset, **_overrides(method.config_class, params))
            run_dir = Path(run_dir) if run_dir else method.default_run_dir(config, runs_root)
            click.echo(f"training {name} on {dataset} -> {run_dir}", err=True)
            method.train(config, run_dir, resume=resume, progress=progress)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None
        click.echo(f"checkpoint: {run_dir / 'checkpoint.pt'}")

    params = [
        click.Option(["--dataset"], default="toy", show_default=True, help="Registered dataset name."),
        click.Option(["--run-dir"], type=click.Path(file_okay=False), default=None,
                     help="Where to write the run [default: RUNS_ROOT/DATASET/RUN_NAME]."),
        click.Option(["--runs-root"], type=click.Path(file_okay=False), default="runs", show_default=True),
        click.Option(["--resume"], is_flag=True, help="Continue from the run's last checkpoint."),
        click.Option(["--progress/--no-progress"], default=True, help="Show a progress bar."),
        *config_options(method.config_class),
    ]
    return click.Command(name, callback=callback, params=params,
                         help=f"Train {name}: {method.description}",
                         short_help=method.description)


@main.group(cls=MethodGroup, make_command=_make_train_command)
def train():
    """Train a method: `zoo train METHOD --dataset D [settings]`; `zoo train METHOD --help`."""


# ---------------------------------------------------------------- sample

def _make_sample_command(name, method):
    def callback(run, dataset, runs_root, n, seed, batch_size, out, samples_out, device, **opts):
        from zoo.viz import save_samples_file, save_samples_picture

        try:
            if run is None:
                run = method.default_run_dir(method.configure(dataset), runs_root)
            loaded = method.load(run, device=device)
            samples = method.sample(loaded, n, seed=seed, batch_size=batch_size, device=device,
                                    progress=True, **opts)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None
        info = {**samples.info, "run": str(run), "dataset": loaded.dataset["name"],
                "seeds": [seed, seed + n - 1], "n": n}
        title = f"{name}  NFE={samples.nfe}"
        pic = save_samples_picture(samples.x, loaded.dataset["kind"], out, title)
        npz = save_samples_file(samples.x, info, samples_out or Path(out).with_suffix(".npz"))
        click.echo(f"{n} samples, NFE {samples.nfe}: {pic} {npz}")

    params = [
        click.Option(["--run"], type=click.Path(file_okay=False), default=None,
                     help="Trained run directory [default: RUNS_ROOT/DATASET/RUN_NAME]."),
        click.Option(["--dataset"], default="toy", show_default=True,
                     help="Dataset of the default run directory."),
        click.Option(["--runs-root"], type=click.Path(file_okay=False), default="runs", show_default=True),
        click.Option(["--n"], type=click.IntRange(min=1), default=64, show_default=True,
                     help="Number of samples."),
        click.Option(["--seed"], type=int, default=0, show_default=True,
                     help="Sample i uses seed SEED+i (independent of the batch size)."),
        click.Option(["--batch-size"], type=click.IntRange(min=1), default=256, show_default=True),
        click.Option(["--out"], type=click.Path(dir_okay=False), default="samples.png", show_default=True,
                     help="PNG: an image grid, or a scatter plot for 2D data."),
        click.Option(["--samples-out"], type=click.Path(dir_okay=False), default=None,
                     help="Samples file (.npz with the model, sampler and NFE) [default: OUT.npz]."),
        click.Option(["--device"], default="cpu", show_default=True),
        *method.sample_options,
    ]
    return click.Command(name, callback=callback, params=params,
                         help=f"Sample from a trained {name} run.", short_help=method.description)


@main.group(cls=MethodGroup, make_command=_make_sample_command)
def sample():
    """Sample from a trained run: `zoo sample METHOD [--run DIR] --n N --out x.png`."""


if __name__ == "__main__":
    sys.exit(main())
