"""``zoo tune``: every method's settings searched with the same budget on data the table never
reports, so a table compares methods rather than the effort spent on their presets.

A study (Optuna: TPE sampler, Hyperband pruner, SQLite storage, so a stopped study continues
where it was) draws the settings of a method's :meth:`~zoo.methods.Method.search_space` over its
preset, trains each trial on the tuning split at a fraction of the preset's iterations, and
scores it on the validation data: digits trials train on ``split="fit"`` and are scored by FD
against ``split="val"`` (both inside the training split; the test split stays unseen); toy trials
are scored by W2 against true sets of their own seeds and from samples of other seeds than a
bench draws. A trial reports its score at a third and two thirds of its iterations, and the
pruner stops weak trials there. Trials stop when their training cost (forward-equivalent passes,
:mod:`zoo.training.cost`) reaches the study's budget, so every method gets the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

from zoo.bench.plan import run_problem
from zoo.methods import Method
from zoo.training.config import merge_overrides, read_config
from zoo.training.cost import forward_equivalents, run_cost
from zoo.training.monitor import duration_text
from zoo.training.rundir import RunLock, RunLockedError
from zoo.training.signals import TrainingInterrupted
from zoo.tuned import untuned

#: First seed of a trial's validation samples: far from the seeds a bench draws ([0, n)).
VALIDATION_SEED = 500_000
#: Validation data and metric by dataset: the trials' training data options, the data they are
#: scored against, the metric and the result it minimises.
VALIDATION = {
    "digits": {"train": {"split": "fit"}, "score": {"split": "val"}, "metric": "fd-digits",
               "result": "FD-digits", "n": 297},
    "toy": {"train": {}, "score": {}, "metric": "w2", "result": "W2", "n": 2000},
}
#: Reports per trial (at 1/3, 2/3 and all of its iterations): the pruner's rungs.
REPORTS = 3


class TrialPruned(Exception):
    """The pruner stopped a trial at one of its reports."""


class _Pause(Exception):
    def __init__(self, step: int):
        self.step = step


def validation(dataset: str) -> dict:
    """The validation protocol of ``dataset`` (:data:`VALIDATION`)."""
    if dataset not in VALIDATION:
        raise ValueError(f"zoo tune: no validation split for dataset {dataset!r}; tuning is "
                         f"defined on {', '.join(VALIDATION)}")
    return VALIDATION[dataset]


def study_preset(method: Method, dataset: str, fixed: dict):
    """The preset a study searches around: as written, with the study's ``fixed`` settings (the
    method's tuned settings are a study's outcome, not its start: :func:`zoo.methods.untuned`)."""
    return untuned(method.configure(dataset, **fixed))


def trial_config(method: Method, dataset: str, fixed: dict, params: dict, fraction: float):
    """The config a trial trains: the preset with the study's ``fixed`` settings and the trial's
    ``params``, on the tuning data, for ``fraction`` of the iterations of the preset with the
    fixed settings (checkpointed at each report)."""
    protocol = validation(dataset)
    overrides = merge_overrides({}, {**fixed, **params})
    preset = study_preset(method, dataset, fixed)  # the full length: the preset's, or fixed
    iterations = preset.iterations if fraction >= 1 else max(
        REPORTS, round(preset.iterations * fraction) // REPORTS * REPORTS)
    options = {**preset.dataset_options, **protocol["train"]}
    return untuned(method.configure(dataset, **{
        **overrides, "iterations": iterations, "dataset_options": options,
        "checkpoint_every": max(1, iterations // REPORTS)}))


def validation_scores(method: Method, run_dir: Path, dataset: str, *, n: int | None = None,
                      blocks: int = 1, device: str = "cpu") -> list[float]:
    """The validation metric of the run's scored row (``Method.tune_row``) on ``blocks``
    disjoint blocks of ``n`` samples, block k of seeds from :data:`VALIDATION_SEED` + k·n; a
    block with a non-finite sample scores ``inf``."""
    import torch

    from zoo.data import load_dataset
    from zoo.metrics import evaluate

    protocol = validation(dataset)
    row = method.tune_row(method.bench_rows(run_dir))
    run = method.load(row.run_dir, device=device)
    n = n or protocol["n"]
    data = load_dataset(dataset, **protocol["score"])
    scores = []
    for seed in range(VALIDATION_SEED, VALIDATION_SEED + blocks * n, n):
        x = method.sample(run, n, seed=seed, device=device, **row.options).x
        if not bool(torch.isfinite(x).all()):
            scores.append(math.inf)
            continue
        result = evaluate(x.float().cpu(), data, metrics=[protocol["metric"]], seed=seed,
                          finite=False)
        scores.append(float(result[protocol["result"]]))
    return scores


def validation_score(method: Method, run_dir: Path, dataset: str, *, n: int | None = None,
                     blocks: int = 1, device: str = "cpu") -> float:
    """The mean of :func:`validation_scores`: what a trial is scored and pruned on (each block
    the same seeds for every trial, so trials compare paired)."""
    scores = validation_scores(method, run_dir, dataset, n=n, blocks=blocks, device=device)
    return sum(scores) / len(scores)


def own_cost(method: Method, config, run_dir: Path) -> float:
    """Forward-equivalent passes of the run itself (its teacher's are not the study's): the
    costliest chain among the run's row runs (a staged run's last stage, whose chain holds every
    stage) less its teacher's."""
    run_dir = Path(run_dir)
    dirs = {run_dir, *(Path(r.run_dir) for r in method.bench_rows(run_dir))}
    totals = [forward_equivalents(cost) for d in dirs if (d / "checkpoint.pt").exists()
              and (cost := run_cost(d)) is not None]
    if not totals:
        return 0.0
    teacher = getattr(config, "teacher", "")
    inherited = run_cost(teacher) if teacher and Path(teacher).exists() else None
    return float(max(totals) - (forward_equivalents(inherited) if inherited else 0))


def params_key(params: dict) -> str:
    """A trial's folder name: its settings' hash, so a trial interrupted with its study is
    continued, not trained again, when the study resumes."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_trial(method: Method, trial, dataset: str, fixed: dict, fraction: float, out: Path, *,
              n: int | None = None, blocks: int = 1, device: str = "cpu") -> float:
    """Train and score one trial, reporting at every rung and stopping when the pruner says
    so (:class:`TrialPruned`); its cost (forward-equivalent passes) and run folder are kept in
    the trial's attributes."""
    space = method.search_space(study_preset(method, dataset, fixed))
    params = {name: param.suggest(trial, name) for name, param in space.items()}
    config = trial_config(method, dataset, fixed, params, fraction)
    config.device = device
    run_dir = out / "trials" / params_key({**fixed, **params, "iterations": config.iterations})
    trial.set_user_attr("run_dir", str(run_dir))
    every = config.checkpoint_every
    staged = method.total_iterations(config) != config.iterations  # PD: scored at the end only

    def pause(step, loss):
        if not staged and step % every == 0 and step < config.iterations:
            raise _Pause(step)

    resume = (run_dir / "checkpoint.pt").exists() or (run_dir / "config.json").exists()
    while True:
        try:
            if resume:
                method.resume(run_dir, {"device": device}, progress=False, on_step=pause,
                              echo=lambda message: None)
            else:
                method.train(dataclasses.replace(config), run_dir, progress=False,
                             on_step=pause)
            step = config.iterations
        except _Pause as paused:
            step = paused.step
        resume = True
        score = validation_score(method, run_dir, dataset, n=n, blocks=blocks, device=device)
        trial.set_user_attr("cost_fwd", own_cost(method, config, run_dir))
        trial.report(score, step // every)
        if step >= config.iterations:
            trial.set_user_attr("settings", read_config(run_dir))
            return score
        if trial.should_prune():
            raise TrialPruned(f"trial {trial.number} pruned at step {step}: {score:.4g}")


def study_cost(study) -> float:
    """Forward-equivalent passes the trials of ``study`` have trained so far: each run folder
    (one per settings, :func:`params_key`) once, at the most any of its trials recorded (a
    folder's cost is cumulative; an interrupted trial and its retry share it)."""
    spent: dict = {}
    for t in study.trials:
        key = params_key(t.params)
        spent[key] = max(spent.get(key, 0.0), t.user_attrs.get("cost_fwd", 0.0))
    return sum(spent.values())


def open_study(method: Method, dataset: str, out: Path, *, seed: int = 0, pruner=None):
    """The study in ``out/study.db`` (created, or continued where it stopped: a trial that was
    running when it stopped is tried again with its settings, its run continued)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=f"{method.name}-{dataset}", storage=f"sqlite:///{out / 'study.db'}",
        load_if_exists=True, direction="minimize",
        pruner=pruner or optuna.pruners.HyperbandPruner(min_resource=1, max_resource=REPORTS,
                                                        reduction_factor=3))
    # seeded by the trials so far: a resumed study's sampler would otherwise start its random
    # stream again and propose the first process's settings a second time
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        try_again(study, trial)
    return study


def try_again(study, trial) -> None:
    """End ``trial``, stopped (not failed by its settings), and queue its settings as the study's
    next trial: its run folder (:func:`params_key`) is continued from its checkpoint."""
    from optuna.trial import TrialState

    study.tell(trial.number, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, skip_if_exists=False)


def tune(method: Method, dataset: str, *, trials: int, out: Path, fixed: dict | None = None,
         fraction: float = 0.25, budget_fwd: float | None = None, n: int | None = None,
         blocks: int = 1, seed: int = 0, device: str = "cpu", progress: bool = True,
         echo=print, pruner=None, confirm: int = 0) -> dict:
    """Run (or continue) the study of ``method`` on ``dataset`` until it holds ``trials``
    finished or pruned trials or its trials' cost reaches ``budget_fwd`` forward-equivalent
    passes; write ``best.json`` (the study, trial, validation score, settings and the study's
    cost) and the history and parameter-importance plots; return the best record. ``pruner``:
    another Optuna pruner than Hyperband over the :data:`REPORTS` rungs. ``confirm`` > 0
    retrains the best ``confirm`` trials at the preset's full length and names the best of those
    (a score at a fraction of the run is a low-fidelity estimate); their cost joins the study's.
    Every score is the mean over ``blocks`` disjoint blocks of ``n`` validation samples
    (:func:`validation_score`); a study keeps its ``n``, ``blocks`` and ``fraction`` (a study
    continued with others is refused). One process tunes a study at a time (the study folder's
    lock): a second is refused."""
    fixed = dict(fixed or {})
    if not method.search_space(study_preset(method, dataset, fixed)):
        raise ValueError(f"method {method.name!r} declares no search space (Method.search_space)")
    validation(dataset)
    out = Path(out)
    try:  # one process per study: open_study takes any running trial for an interrupted one
        lock = RunLock(out).acquire()
    except RunLockedError as exc:
        raise RunLockedError(str(exc).replace("choose another --run-dir", "tune another study "
                                              "(--out) meanwhile")) from None
    try:
        return _tune(method, dataset, trials=trials, out=out, fixed=fixed, fraction=fraction,
                     budget_fwd=budget_fwd, n=n, blocks=blocks, seed=seed, device=device,
                     progress=progress, echo=echo, pruner=pruner, confirm=confirm)
    finally:
        lock.release()


def _tune(method: Method, dataset: str, *, trials, out: Path, fixed: dict, fraction, budget_fwd,
          n, blocks, seed, device, progress, echo, pruner, confirm) -> dict:
    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    study = open_study(method, dataset, out, seed=seed, pruner=pruner)
    scoring = {"n": n or validation(dataset)["n"], "blocks": blocks, "trial_fraction": fraction}
    check_scoring(study, scoring, out)
    done = lambda: [t for t in study.trials if t.state in (TrialState.COMPLETE,  # noqa: E731
                                                            TrialState.PRUNED)]
    bar = tqdm(total=trials, initial=len(done()), desc=f"tune {method.name} on {dataset}",
               disable=not progress or not sys.stderr.isatty(), dynamic_ncols=True)
    start, start_cost, start_done = time.perf_counter(), study_cost(study), len(done())
    try:
        while len(done()) < trials and (budget_fwd is None or study_cost(study) < budget_fwd):
            trial = study.ask()
            try:
                value = run_trial(method, trial, dataset, fixed, fraction, out, n=n,
                                  blocks=blocks, device=device)
            except TrialPruned as pruned:
                study.tell(trial, state=TrialState.PRUNED)
                echo(str(pruned))
            except (TrainingInterrupted, KeyboardInterrupt, SystemExit):
                try_again(study, trial)  # a stop: the next process goes on with these settings
                raise
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            else:
                study.tell(trial, value)
            bar.update(1)
            best, cost = _best(study), study_cost(study)
            left = time_left(time.perf_counter() - start, len(done()) - start_done, trials,
                             len(done()), cost - start_cost, cost, budget_fwd)
            bar.set_postfix(best=f"{best.value:.4g}" if best else "-", cost=f"{cost / 1e9:.3g}G",
                            left=duration_text(left))
            if bar.disable:  # a batch job's log: one plain line per trial
                echo(f"{method.name} trial {trial.number}: {len(done())}/{trials} trials, best "
                     + (f"{best.value:.4g} (trial {best.number})" if best else "-")
                     + f", cost {cost / 1e9:.3g}"
                     + (f"/{budget_fwd / 1e9:.3g}" if budget_fwd else "")
                     + f" G fwd-eq, about {duration_text(left)} left"
                     + (f" (then {confirm} full-length runs)" if confirm else ""))
    finally:
        bar.close()
    best = _best(study)
    if best is None:
        raise RuntimeError(f"the study in {out} has no finished trial")
    value, settings, cost, confirmed = best.value, best.user_attrs.get("settings"), 0.0, []
    if confirm:
        confirmed = confirm_at_full_length(method, dataset, study, fixed, out, confirm, n=n,
                                           blocks=blocks, device=device)
        winner = min(confirmed, key=lambda c: c["validation"])
        best = study.trials[winner["trial"]]
        value, settings = winner["validation"], winner["settings"]
        cost = sum(c["cost_fwd"] for c in confirmed)
    record = {"study": study.study_name, "storage": str(out / "study.db"), "trial": best.number,
              "validation": {validation(dataset)["result"]: value},
              "params": best.params, "settings": settings, "confirmed": confirmed,
              "fixed": fixed, "trials": len(done()),
              "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
              "tuning_cost_fwd": study_cost(study) + cost, **scoring}
    (out / "best.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    write_plots(study, out, optuna)
    return record


def check_scoring(study, scoring: dict, out: Path) -> None:
    """A study's trials compare only under one protocol: the first process records ``scoring``
    (validation samples per block, blocks, trial fraction) in the study; a continuation with
    another is refused. A study recorded before this existed takes the first one given."""
    recorded = study.user_attrs.get("scoring")
    if recorded is None:
        study.set_user_attr("scoring", scoring)
    elif recorded != scoring:
        given = {"n": "--n", "blocks": "--blocks", "trial_fraction": "--trial-fraction"}
        differ = ", ".join(f"{given[k]} {recorded[k]} (now {scoring[k]})" for k in scoring
                           if recorded.get(k) != scoring[k])
        raise ValueError(f"the study in {out} scores its trials with {differ}: continue it with "
                         "those, or tune a new study (--out)")


def time_left(elapsed: float, trained: int, trials: int, done: int, spent: float, cost: float,
              budget: float | None) -> float:
    """Seconds until the study stops, at this process's pace: by the budget still to spend
    (``spent`` forward-equivalents took ``elapsed`` seconds) or by the trials still to run,
    whichever comes first."""
    by_trials = elapsed / max(trained, 1) * max(trials - done, 0)
    if budget is None or spent <= 0:
        return by_trials
    return min(by_trials, elapsed / spent * max(budget - cost, 0.0))


def confirm_at_full_length(method: Method, dataset: str, study, fixed: dict, out: Path,
                           top: int, *, n: int | None = None, blocks: int = 1,
                           device: str = "cpu") -> list[dict]:
    """The ``top`` best finished trials of distinct settings retrained at the preset's full
    length (in ``out/confirm/``, continued if a stop interrupted them) and scored again:
    ``[{trial, short score, validation, settings, cost_fwd}]``. Each finished confirmation is
    recorded in the study, so a study whose run folders are gone (its ``study.db`` kept, or
    copied to another machine) finishes without training it again."""
    from optuna.trial import TrialState

    best_first = sorted((t for t in study.trials if t.state == TrialState.COMPLETE),
                        key=lambda t: t.value)
    distinct = {params_key(t.params): t for t in reversed(best_first)}  # the best of each
    finished = sorted(distinct.values(), key=lambda t: t.value)[:top]
    confirmed = []
    for trial in finished:
        config = trial_config(method, dataset, fixed, trial.params, 1.0)
        config.device = device
        key = params_key({**fixed, **trial.params, "iterations": config.iterations})
        recorded = study.user_attrs.get(f"confirmed {key}")
        if recorded is not None:
            confirmed.append({**recorded, "trial": trial.number, "short": trial.value})
            continue
        run_dir = out / "confirm" / key
        if (run_dir / "checkpoint.pt").exists() or (run_dir / "config.json").exists():
            if run_problem(method, run_dir):  # unfinished (a finished one is only scored)
                method.resume(run_dir, {"device": device}, progress=False, echo=lambda m: None)
        else:
            method.train(dataclasses.replace(config), run_dir, progress=False)
        confirmed.append({
            "trial": trial.number, "short": trial.value,
            "validation": validation_score(method, run_dir, dataset, n=n, blocks=blocks,
                                           device=device),
            "settings": read_config(run_dir),
            "cost_fwd": own_cost(method, config, run_dir)})
        study.set_user_attr(f"confirmed {key}", confirmed[-1])
    return confirmed


def _best(study):
    from optuna.trial import TrialState

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return min(complete, key=lambda t: t.value) if complete else None


def write_plots(study, out: Path, optuna) -> list[Path]:
    """The optimisation history and, with two finished trials or more, the parameters'
    importances (fANOVA), as PNGs."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    plots = [("history.png", optuna.visualization.matplotlib.plot_optimization_history)]
    if sum(t.value is not None for t in study.trials) >= 2:
        plots.append(("importance.png", optuna.visualization.matplotlib.plot_param_importances))
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                axes = plot(study)
            except (ValueError, RuntimeError):  # e.g. importances of a single-valued space
                continue
        axes.figure.tight_layout()
        axes.figure.savefig(out / name, dpi=120)
        plt.close(axes.figure)
        written.append(out / name)
    return written
