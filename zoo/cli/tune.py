"""``zoo tune METHOD``: a method's settings searched on the validation split (:mod:`zoo.tuning`)."""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.common import USER_ERRORS, UserError, main, registered_method, user_error, with_option


@main.command("tune")
@click.argument("method_name", metavar="METHOD")
@click.option("--dataset", default="toy", show_default=True,
              help="toy (W2 against true sets of other seeds) or digits (trials train on "
              "split fit and are scored by FD against split val; the test split stays unseen).")
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished or pruned trials the study holds when it stops (a continued study "
              "counts its earlier ones).")
@click.option("--trial-fraction", type=click.FloatRange(min=0, min_open=True, max=1),
              default=0.25, show_default=True,
              help="A trial's iterations as a share of the preset's.")
@click.option("--budget-gfwd", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop when the trials' training cost reaches this many billion "
              "forward-equivalent passes (the same for every method makes a fair frontier).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A setting every trial keeps (not searched), e.g. mode=ct or "
              "teacher=runs/digits-fit/edm; VALUE is JSON or text. Repeatable.")
@click.option("--n", type=click.IntRange(min=2), default=None,
              help="Validation samples per score [default: 297 on digits, 2000 on toy].")
@click.option("--blocks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Score each trial by the mean over this many disjoint blocks of --n validation "
              "samples (the same seeds for every trial): one block of the digits' 297 varies "
              "by about 0.12 FD297 (docs/tuning.md).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="The study's folder: study.db (resumable), trials/, best.json, history.png, "
              "importance.png [default: tune/DATASET/METHOD].")
@click.option("--confirm", type=click.IntRange(min=0), default=0, show_default=True,
              help="Retrain the best K trials at the preset's full length and name the best of "
              "those (a score at a fraction of the run can mislead); their cost is counted.")
@click.option("--seed", type=int, default=0, show_default=True, help="The TPE sampler's seed.")
@with_option("device")
@with_option("progress")
def tune_command(method_name, dataset, trials, trial_fraction, budget_gfwd, settings, n, blocks,
                 out, confirm, seed, device, progress):
    """Search a method's settings (its search space: docs/tuning.md) with Optuna's TPE and a
    Hyperband pruner on the validation split; stopped at any point, the same command continues
    the study."""
    from zoo.bench import parse_settings
    from zoo.tuning import tune

    method = registered_method(method_name)
    try:
        fixed = parse_settings(settings)
        if set(fixed) - {None}:
            raise UserError("zoo tune --set takes KEY=VALUE (one method is tuned)")
        out = Path(out) if out else Path("tune") / dataset / method.name
        record = tune(method, dataset, trials=trials, out=out, fixed=fixed.get(None, {}),
                      fraction=trial_fraction,
                      budget_fwd=budget_gfwd * 1e9 if budget_gfwd else None, n=n,
                      blocks=blocks, seed=seed,
                      device=device, progress=progress, confirm=confirm,
                      echo=lambda message: click.echo(message, err=True))
    except ImportError as exc:
        raise UserError(f"zoo tune needs Optuna: pip install 'fewstep-zoo[tune]' ({exc})"
                        ) from None
    except USER_ERRORS as exc:
        raise user_error(exc) from None
    (metric, value), = record["validation"].items()
    click.echo(f"best of {record['trials']} trials ({record['pruned']} pruned): trial "
               f"{record['trial']}, validation {metric} {value:.4g}; tuning cost "
               f"{record['tuning_cost_fwd'] / 1e9:.3g} G forward-equivalent passes")
    click.echo(f"settings: {record['params']}")
    click.echo(f"{out}: best.json study.db history.png importance.png trials/")
