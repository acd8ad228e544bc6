"""What every ``zoo`` command shares: the top-level group, the options several commands take
(defined once here), user errors as one-line messages, and the checks of what a command wrote."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import click

import zoo
from zoo import plugins as zoo_plugins


class UserError(click.ClickException):
    """A clear message for bad input; exit code 1, no traceback."""


# Errors that come from what the user asked for: shown as messages, not tracebacks.
USER_ERRORS = (ValueError, KeyError, OSError, RuntimeError, TypeError)


#: Set to 1 (or pass ``zoo --traceback``) to see the full traceback of an error instead of its
#: one-line message.
TRACEBACK_ENV = "ZOO_TRACEBACK"


_show_traceback = False  # set by each `zoo` invocation from --traceback or ZOO_TRACEBACK


def user_error(exc: BaseException) -> UserError:
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


def registered_method(name: str):
    try:
        return zoo_plugins.get("methods", name)
    except zoo_plugins.UnknownNameError as exc:
        raise user_error(exc) from None


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
    from zoo import distributed

    distributed.init_distributed()  # a no-op unless torchrun's environment variables are set
    warnings.showwarning = _show_warning
    # torch.func.jvp's first call scripts torch's own decompositions (torch/_decomp/
    # decompositions_for_jvp.py), which warns of torch.jit.script's deprecation: nothing a user of
    # CT∞, sCM or MeanFlow can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    _report_plugin_failures()


def check_device(ctx, param, value: str) -> str:
    """--device, with ``auto`` resolved and unknown names refused before any work."""
    import torch

    from zoo import distributed

    device = distributed.resolve_device(value)
    try:
        torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"{value!r}; accepted: auto, cpu, cuda, cuda:N") from None
    return device


#: The options several commands take, defined once: name -> (declarations, settings). A command
#: takes one with :func:`shared_option` (a ``click.Option``) or :func:`with_option` (decorator),
#: changing a setting where it must (``default=500``).
SHARED_OPTIONS = {
    "device": (["--device"], dict(
        default="auto", show_default=True, callback=check_device,
        help="auto (CUDA where available, else cpu), cpu, cuda or cuda:N.")),
    "weights": (["--weights"], dict(
        type=click.Choice(["ema", "raw"]), default="ema", show_default=True,
        help="The run's evaluation EMA weights, or its raw trained weights.")),
    "runs_root": (["--runs-root"], dict(
        type=click.Path(file_okay=False), default="runs", show_default=True,
        help="The folder of runs: a run's default directory is RUNS_ROOT/DATASET/RUN_NAME.")),
    "seed": (["--seed"], dict(
        type=int, default=0, show_default=True,
        help="Sample i comes from seed SEED+i, whatever the batch size.")),
    "batch_size": (["--batch-size"], dict(
        type=click.IntRange(min=1), show_default=True,
        help="Samples per sampler call (memory only: the samples do not depend on it).")),
    "progress": (["--progress/--no-progress"], dict(default=True, help="Show progress bars.")),
    "noise_stream": (["--noise-stream"], dict(
        type=click.Choice(["philox", "torch"]), default="philox", show_default=True,
        help="Each sample's noise: philox (Philox4x32-10 keyed by the sample's seed, computed "
        "for the whole batch at once) or torch (one torch.Generator per sample: EDM's stream, "
        "and the stream of tables recorded before Philox became the default). Either way a "
        "sample does not depend on its batch; the two give other numbers.")),
}


def json_object(flag: str, value: str) -> dict:
    """The JSON object given to ``flag``; anything else is a :class:`UserError` naming it."""
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag} must be JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{flag} must be a JSON object, got {value!r}")
    return parsed


def shared_option(name: str, **changes) -> click.Option:
    """The shared option ``name`` (:data:`SHARED_OPTIONS`) with ``changes`` to its settings."""
    decls, settings = SHARED_OPTIONS[name]
    return click.Option(decls, **{**settings, **changes})


def with_option(name: str, **changes):
    """:func:`shared_option` as a command decorator."""
    decls, settings = SHARED_OPTIONS[name]
    return click.option(*decls, **{**settings, **changes})


def given_options(ctx: click.Context, names) -> list[str]:
    """The options among ``names`` that were given on the command line, as ``--flag value``."""
    from click.core import ParameterSource

    return [
        f"{param.opts[0]} {ctx.params[param.name]}"
        for param in ctx.command.params
        if param.name in names
        and ctx.get_parameter_source(param.name) == ParameterSource.COMMANDLINE
    ]


def not_finite_message(bad: int, n: int, run, settings: list[str], kept: Path) -> str:
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
