"""``zoo train METHOD``: one command per registered method, one option per setting of its
config, the dataset presets' values in the help."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from zoo import plugins as zoo_plugins
from zoo.cli.common import (
    USER_ERRORS,
    MethodGroup,
    UserError,
    json_object,
    main,
    shared_option,
    user_error,
)


def _click_type(annotation: str):
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str, "bool": bool, "dict": "json"}.get(base, str)


#: Config fields that are not options: set by the command (method, dataset) or the method
#: (tuned: the provenance of the preset's tuned settings; --untuned drops those).
NOT_OPTIONS = ("method", "dataset", "tuned")

#: The datasets whose presets ``zoo train METHOD --help`` shows, one per preset scale.
PRESET_DATASETS = ("toy", "digits", "cifar10")


def _presets(method) -> dict:
    """The method's configurations for :data:`PRESET_DATASETS` (no data loaded), those it has:
    ``{dataset: {mode: config}}``, the mode None for a method without modes."""
    out = {}
    for dataset in PRESET_DATASETS:
        for mode in getattr(method, "modes", ()) or (None,):
            try:
                config = method.configure(dataset, **({"mode": mode} if mode else {}))
            except (*USER_ERRORS, zoo_plugins.UnknownNameError):
                continue
            out.setdefault(dataset, {})[mode] = config
    return out


def _preset_values(name: str, presets: dict) -> str:
    """``toy 0.002, digits 0.0002, cifar10 cd 0.0004 / ct 0.0002``: a setting's preset value per
    dataset, per mode where the modes differ; a value a study chose says so, with the preset's
    as written (``digits 0.00184 (tuned; as written 0.001)``: ``--untuned`` trains that)."""
    shown = []
    for dataset, by_mode in presets.items():
        values = {mode: _shown(getattr(c, name)) + (
            f" (tuned; as written {_shown(c.tuned['untuned'][name])})"
            if name in c.tuned.get("untuned", {}) else "") for mode, c in by_mode.items()}
        if len(set(values.values())) == 1:
            shown.append(f"{dataset} {next(iter(values.values()))}")
        else:
            shown.append(f"{dataset} " + " / ".join(f"{m} {v}" for m, v in values.items()))
    return ", ".join(shown)


def _default(f: dataclasses.Field, presets: dict):
    """The field's own default as a config resolves it (``device="auto"``: this machine's), or
    a marker when it has none."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    config = next(iter(next(iter(presets.values())).values()))
    return getattr(dataclasses.replace(config, **{f.name: value}), f.name)


def _shown(value) -> str:
    if value == "":
        return "(none)"
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) \
        else f"{value:g}" if isinstance(value, float) else str(value)


def config_options(config_class, presets: dict | None = None) -> list[click.Option]:
    """One ``--option`` per config field (a ``click.Choice`` where the field has ``choices``);
    unset (None) options keep the dataset preset's value, whose values per dataset (and mode)
    in ``presets`` (:func:`_presets`) the help shows, or the field's default where every preset
    keeps it."""
    options = []
    for f in dataclasses.fields(config_class):
        if f.name in NOT_OPTIONS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _click_type(f.type if isinstance(f.type, str) else f.type.__name__)
        if "choices" in f.metadata:
            kind = click.Choice(f.metadata["choices"])
        default = _default(f, presets) if presets else dataclasses.MISSING
        if default is not dataclasses.MISSING and all(
                getattr(c, f.name) == default for m in presets.values() for c in m.values()):
            given = f.default if f.default is not dataclasses.MISSING else default
            shown = f" [default: {_shown(given)}]"
        elif presets:
            shown = f" [presets: {_preset_values(f.name, presets)}]"
        else:
            shown = " [default: from the dataset preset]"
        help_text = f.metadata.get("help", "") + shown
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
        if value is None or f.name in NOT_OPTIONS:
            continue
        if _click_type(f.type if isinstance(f.type, str) else f.type.__name__) == "json":
            value = json_object(f"--{f.name.replace('_', '-')}", value)
        out[f.name] = value
    return out


def _print_plan(report: dict) -> None:
    """The settings, run directory, iterations and what is missing: no data loaded."""
    click.echo("settings (the preset with the options given; a distilled run takes its network "
               "from its teacher when it starts):")
    click.echo(json.dumps(report["config"], indent=2, sort_keys=True))
    click.echo(f"run directory: {report['run_dir']} (not created)")
    click.echo(f"iterations: {report['iterations']:,} of {report['config']['batch_size']} samples")
    if "pair_nfe" in report:
        click.echo(f"reflow pairs: {report['pair_nfe']:,} network evaluations of the 1-RF run, "
                   "once, before the first step")
    for problem in report["missing"]:
        click.echo(f"missing: {problem}")
    if not report["missing"]:
        click.echo("missing: nothing the run needs besides its data (loaded when it starts)")


def _print_timing(plan: dict, report: dict, steps: int) -> None:
    """What building the run resolved, and the timed steps' rate and projection."""
    from zoo.training.monitor import duration_text

    changed = {k: v for k, v in report["config"].items() if plan["config"].get(k) != v}
    if changed:
        click.echo("resolved when the run was built (from the teacher and the data):")
        click.echo(json.dumps(changed, indent=2, sort_keys=True))
    click.echo(f"parameters: {report['parameters']:,}")
    click.echo(f"samples/s: {report['samples_per_s']:,.1f} ({steps} training steps on "
               f"{report['device']}, random data of shape {report['data_shape']})")
    click.echo(f"projected wall time: {duration_text(report['projected_s'])} for "
               f"{report['iterations']:,} "
               f"iterations of {report['config']['batch_size']} samples (training steps only)")


def _make_train_command(name, method):
    def callback(dataset, run_dir, runs_root, resume, progress, dry_run, time_steps, config_file,
                 write_config, untuned_preset, **params):
        from zoo import distributed
        from zoo.settings_file import read_settings, write_settings
        from zoo.training import TrainingInterrupted
        from zoo.tuned import untuned

        def configure():
            config = method.configure(dataset or "toy", **overrides)
            return untuned(config) if untuned_preset else config

        overrides = _overrides(method.config_class, params)
        if config_file:  # the file's settings, then the flags given over them
            try:
                from_file = read_settings(config_file, method.config_class)
            except ValueError as exc:
                raise user_error(exc) from None
            in_file = from_file.pop("dataset", None)
            dataset = dataset or in_file
            from_file.pop("method", None)
            overrides = {**from_file, **overrides}
        if write_config and not dry_run:
            raise UserError("--write-config writes a --dry-run's settings; pass --dry-run too")
        echo = lambda msg: click.echo(msg, err=True) if distributed.is_main() else None
        try:
            if untuned_preset and resume:
                raise UserError("--untuned chooses the settings of a new run; a resumed run keeps "
                                "its own: drop --untuned")
            if run_dir is None:
                run_dir = method.default_run_dir(configure(), runs_root)
            run_dir = Path(run_dir)
            if dry_run:
                if resume:
                    raise UserError("--dry-run describes a new run; it does not take --resume")
                config = configure()
                plan = method.dry_run(config, run_dir)
                if distributed.is_main():
                    _print_plan(plan)
                    if write_config:
                        settings = {k: v for k, v in plan["config"].items()
                                    if k not in ("method", "device")}  # the machine's choice
                        written = write_settings(settings, write_config)
                        click.echo(f"settings written to {written} (zoo train {name} --config "
                                   f"{written})")
                if time_steps and not plan["missing"]:
                    echo(f"timing {time_steps} training steps (the data and teacher are loaded "
                         "as training would)...")
                    report = method.dry_run(config, run_dir, steps=time_steps)
                    if distributed.is_main():
                        _print_timing(plan, report, time_steps)
                elif plan["missing"]:
                    raise UserError(f"{len(plan['missing'])} thing(s) the run needs are missing "
                                    "(listed above): training would stop before its first step")
                return
            if time_steps:
                raise UserError("--time-steps times a --dry-run; pass --dry-run too")
            if resume:
                echo(f"resuming {name} in {run_dir}")
                if dataset is not None:
                    overrides["dataset"] = dataset
                method.resume(run_dir, overrides, progress=progress, echo=echo)
            else:
                config = configure()
                echo(f"training {name} on {config.dataset} -> {run_dir}")
                method.train(config, run_dir, progress=progress)
        except TrainingInterrupted as exc:
            echo(f"{exc}\nresume with: zoo train {name} --run-dir {run_dir} --resume")
            sys.exit(exc.exit_code)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
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
        shared_option("runs_root"),
        click.Option(
            ["--resume"],
            is_flag=True,
            help="Continue the run from its last checkpoint with its own settings; the settings "
            "passed override them (run-defining ones, e.g. data, network, batch size, are "
            "refused).",
        ),
        shared_option("progress"),
        click.Option(
            ["--dry-run"],
            is_flag=True,
            help="Print the settings, the run directory and what the run needs that is missing "
            "(teacher run, weights files, packages), in seconds: no data loaded, nothing "
            "written.",
        ),
        click.Option(
            ["--time-steps"],
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="With --dry-run: also build the run as training would (data, teacher, network) "
            "and time this many training steps on random data: parameters, samples/s and the "
            "projected wall time.",
        ),
        click.Option(
            ["--config", "config_file"],
            type=click.Path(dir_okay=False, exists=True),
            default=None,
            help="A TOML file of settings (as --dry-run --write-config writes them); the options "
            "given on the command line override it.",
        ),
        click.Option(
            ["--write-config"],
            type=click.Path(dir_okay=False),
            default=None,
            help="With --dry-run: write the settings to this TOML file, for --config.",
        ),
        click.Option(
            ["--untuned", "untuned_preset"],
            is_flag=True,
            help="Train the dataset's preset as written: without the settings `zoo tune` chose "
            "for it where the method holds some (docs/tuning.md), e.g. to compare with them.",
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
