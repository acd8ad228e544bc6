"""``zoo tune``: the validation split the table never reports, a study that prunes, continues
where it stopped and stops at its budget, and every first-party method's search space."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from zoo_edm.method import EDM

import zoo.plugins
from zoo.cli import main
from zoo.data import load_dataset
from zoo.hookspecs import hookimpl
from zoo.metrics import evaluate
from zoo.search_space import Choice, Float, Int
from zoo.training import load_checkpoint
from zoo.tuning import (
    VALIDATION_SEED,
    open_study,
    study_cost,
    time_left,
    tune,
    validation_score,
    validation_scores,
)

TINY = {"network_kwargs": {"hidden": 16, "num_layers": 1}, "batch_size": 64,
        "dataset_options": {"n": 500}, "iterations": 600}  # trials of 300 at fraction 0.5


class StillEDM(EDM):
    """EDM whose only searched setting is the learning rate: 1e-3 learns, 1e-9 does not."""

    name = "still-edm"

    def search_space(self, config):
        return {"lr": Choice((1e-3, 1e-9))}


class Plugin:
    @hookimpl
    def register_methods(self, register):
        register("still-edm", StillEDM())


@pytest.fixture
def still():
    zoo.plugins.register_plugin(Plugin(), "still-edm")
    yield zoo.plugins.get("methods", "still-edm")
    zoo.plugins.unregister_plugin("still-edm")


def test_the_digits_validation_split_is_inside_training_and_apart_from_test():
    fit, val, train, test = (load_dataset("digits", split=s) for s in ("fit", "val", "train",
                                                                       "test"))
    assert (len(fit), len(val), len(train), len(test)) == (1203, 297, 1500, 297)
    torch.testing.assert_close(torch.cat([fit.x, val.x]), train.x)  # train = fit + val
    assert len({fit.checksum, val.checksum, train.checksum, test.checksum}) == 4


def test_a_study_prunes_a_weak_trial_continues_and_keeps_its_best(still, tmp_path):
    """Two trials, the second (lr 1e-9: it learns nothing) pruned at its first report by a
    median pruner; continued to three trials, the study trains only the new one; best.json
    names the winner with its validation score, which a new scoring reproduces."""
    out = tmp_path / "study"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    out.mkdir()
    study = optuna.create_study(study_name="still-edm-toy", direction="minimize",
                                storage=f"sqlite:///{out / 'study.db'}")
    study.enqueue_trial({"lr": 1e-3})
    study.enqueue_trial({"lr": 1e-9})
    record = tune(still, "toy", trials=2, out=out, fixed=TINY, fraction=0.5, n=400,
                  progress=False, pruner=pruner, echo=lambda m: None)
    assert (record["trials"], record["pruned"], record["trial"]) == (2, 1, 0)
    assert record["params"] == {"lr": 1e-3} and record["settings"]["lr"] == 1e-3
    trials = optuna.load_study(study_name="still-edm-toy", storage=f"sqlite:///{out / 'study.db'}"
                               ).trials
    assert trials[1].state == optuna.trial.TrialState.PRUNED
    pruned_run = trials[1].user_attrs["run_dir"]
    assert load_checkpoint(pruned_run)["step"] < record["settings"]["iterations"]  # stopped
    best_run = Path(trials[0].user_attrs["run_dir"])
    score = validation_score(still, best_run, "toy", n=400)
    assert record["validation"]["W2"] == pytest.approx(score, rel=1e-9)
    stamp = (best_run / "checkpoint.pt").stat().st_mtime_ns
    again = tune(still, "toy", trials=3, out=out, fixed=TINY, fraction=0.5, n=400,
                 progress=False, pruner=pruner, echo=lambda m: None)
    assert again["trials"] == 3
    assert (best_run / "checkpoint.pt").stat().st_mtime_ns == stamp  # not trained again
    assert (out / "history.png").stat().st_size > 0
    assert json.loads((out / "best.json").read_text())["trials"] == 3


def test_the_budget_stops_a_study_and_validation_draws_other_seeds(still, tmp_path):
    record = tune(still, "toy", trials=10, out=tmp_path / "s", fixed=TINY, fraction=0.5, n=400,
                  budget_fwd=1.0, progress=False, echo=lambda m: None)
    assert record["trials"] == 1 and record["tuning_cost_fwd"] > 1.0  # one trial spent it
    assert VALIDATION_SEED >= 100_000  # far from the seeds a bench draws
    assert (record["n"], record["blocks"], record["trial_fraction"]) == (400, 1, 0.5)
    with pytest.raises(ValueError, match="scores its trials with --blocks 1 \\(now 2\\)"):
        tune(still, "toy", trials=10, out=tmp_path / "s", fixed=TINY, fraction=0.5, n=400,
             blocks=2, budget_fwd=2.0, progress=False, echo=lambda m: None)


def test_a_score_over_blocks_is_the_mean_of_disjoint_seed_blocks(still, tmp_path):
    """Block k draws seeds VALIDATION_SEED + k·n: block 0 is the one-block score, block 1 the
    metric of the next n seeds computed here directly; the score is their mean."""
    tune(still, "toy", trials=1, out=tmp_path / "s", fixed=TINY, fraction=0.5, n=200,
         progress=False, echo=lambda m: None)
    run_dir = optuna.load_study(study_name="still-edm-toy", storage=f"sqlite:///{tmp_path / 's'}"
                                "/study.db").trials[0].user_attrs["run_dir"]
    scores = validation_scores(still, run_dir, "toy", n=200, blocks=2)
    assert scores[0] == validation_score(still, run_dir, "toy", n=200)
    row = still.tune_row(still.bench_rows(run_dir))
    x = still.sample(still.load(row.run_dir), 200, seed=VALIDATION_SEED + 200, **row.options).x
    direct = evaluate(x, load_dataset("toy"), metrics=["w2"], seed=VALIDATION_SEED + 200)
    assert scores[1] == pytest.approx(direct["W2"]) and scores[1] != scores[0]
    assert validation_score(still, run_dir, "toy", n=200, blocks=2) == pytest.approx(
        sum(scores) / 2)


@pytest.mark.parametrize("name,mode", [("edm", None), ("cm", "cd"), ("cm", "ct"), ("ect", None),
                                       ("scm", "sct"), ("meanflow", None), ("rf", None),
                                       ("pd", None)])
def test_every_first_party_method_declares_a_search_space_of_its_settings(name, mode):
    method = zoo.plugins.get("methods", name)
    config = method.configure("digits", **({"mode": mode} if mode else {}))
    space = method.search_space(config)
    fields = {f for f in config.__dataclass_fields__}
    assert "lr" in space and set(space) <= fields, set(space) - fields
    for setting, param in space.items():
        value = getattr(config, setting)
        if isinstance(param, (Float, Int)):
            assert param.low <= value <= param.high, (setting, value, param)  # preset inside
        else:
            assert value in param.values, (setting, value)


def test_zoo_tune_command_runs_and_refuses_a_dataset_without_validation(still, tmp_path):
    result = CliRunner().invoke(main, ["tune", "still-edm", "--dataset", "gmm", "--trials", "1",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "no validation split for dataset 'gmm'" in result.output
    args = ["tune", "still-edm", "--dataset", "toy", "--trials", "1", "--trial-fraction", "0.5",
            "--n", "300", "--out", str(tmp_path / "s"), "--no-progress",
            "--set", 'network_kwargs={"hidden": 16, "num_layers": 1}', "--set", "batch_size=64",
            "--set", 'dataset_options={"n": 500}', "--set", "iterations=600"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "best of 1 trials (0 pruned)" in result.output
    # without a progress bar (a batch job's log): one plain line per trial
    assert "still-edm trial 0: 1/1 trials, best " in result.output
    assert " G fwd-eq, about 0m 0s left" in result.output


def test_time_left_is_the_budget_or_the_trials_whichever_ends_first():
    # 2 trials took 100 s and spent 1e6 of a 4e6 budget: 300 s by the budget, 400 s by 10 trials
    assert time_left(100.0, 2, 10, 2, 1e6, 1e6, 4e6) == pytest.approx(300.0)
    assert time_left(100.0, 2, 4, 2, 1e6, 1e6, 4e6) == pytest.approx(100.0)  # 2 trials to go
    assert time_left(100.0, 2, 10, 2, 1e6, 1e6, None) == pytest.approx(400.0)
    assert time_left(100.0, 2, 10, 2, 1e6, 5e6, 4e6) == 0.0  # the budget is spent


def test_a_second_process_on_a_running_study_is_refused_and_steals_no_trial(still, tmp_path):
    """While one process tunes a study (its folder locked), another on the same folder is
    refused before it touches the study: on opening, a study takes any running trial for one
    interrupted by a stop and tries it again, which would take the first process's trial."""
    from zoo.training.rundir import RunLock

    out = tmp_path / "study"
    out.mkdir()
    study = optuna.create_study(study_name="still-edm-toy", direction="minimize",
                                storage=f"sqlite:///{out / 'study.db'}")
    running = study.ask()  # the first process's trial, in flight
    running_number = running.number
    with RunLock(out):  # the first process holds the study
        result = CliRunner().invoke(main, ["tune", "still-edm", "--dataset", "toy", "--trials",
                                           "1", "--out", str(out), "--no-progress"])
        assert result.exit_code == 1
        assert "is in use by another zoo process" in result.output
        assert "tune another study (--out) meanwhile" in result.output
    states = optuna.load_study(study_name="still-edm-toy",
                               storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state for t in states] == [optuna.trial.TrialState.RUNNING]
    assert states[0].number == running_number


def test_a_staged_runs_tuning_cost_holds_every_stage_not_its_teacher(tmp_path):
    """PD trains its stages one after another, each from the last: a trial's cost is the whole
    chain of its stages less the EDM teacher's training (the same for every trial)."""
    from zoo.training.cost import forward_equivalents, run_cost
    from zoo.tuning import own_cost

    edm, pd = (zoo.plugins.get("methods", n) for n in ("edm", "pd"))
    teacher = edm.train(edm.configure("toy", **{**TINY, "iterations": 2}), tmp_path / "edm",
                        progress=False)
    config = pd.configure("toy", teacher=str(teacher), teacher_steps=4,
                          **{**TINY, "iterations": 2})
    root = pd.train(config, tmp_path / "pd", progress=False)
    stages = sorted(root.glob("stage-*"))
    assert len(stages) == 2
    cost = own_cost(pd, config, root)
    per_stage = [forward_equivalents(load_checkpoint(s)["cost"]) for s in stages]
    assert cost == pytest.approx(sum(per_stage)) and cost > 0
    assert cost == forward_equivalents(run_cost(stages[-1])) - forward_equivalents(
        run_cost(teacher))


def test_the_best_trials_are_confirmed_at_full_length(still, tmp_path, capfd):
    """--confirm 1: the best trial retrained at the preset's full length names the winner, its
    full-length validation score and settings are recorded and its cost joins the study's; the
    study run again scores the finished confirmation without training it or saying it would."""
    fixed = {**TINY, "iterations": 60}
    record = tune(still, "toy", trials=2, out=tmp_path / "s", fixed=fixed, fraction=0.5, n=300,
                  progress=False, echo=lambda m: None, confirm=1)
    (confirmed,) = record["confirmed"]
    assert confirmed["settings"]["iterations"] == 60  # full length, the trials' 30 doubled
    assert record["settings"]["iterations"] == 60 and record["trial"] == confirmed["trial"]
    assert record["validation"]["W2"] == confirmed["validation"] != confirmed["short"]
    short_cost = sum(t.user_attrs["cost_fwd"] for t in optuna.load_study(
        study_name="still-edm-toy", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}").trials)
    assert record["tuning_cost_fwd"] == pytest.approx(short_cost + confirmed["cost_fwd"])
    assert confirmed["cost_fwd"] > 0
    capfd.readouterr()
    again = tune(still, "toy", trials=2, out=tmp_path / "s", fixed=fixed, fraction=0.5, n=300,
                 progress=False, echo=lambda m: None, confirm=1)
    assert again["confirmed"] == record["confirmed"]
    assert "already finished" not in capfd.readouterr().err


def test_a_study_whose_run_folders_are_gone_finishes_from_its_record(still, tmp_path,
                                                                     monkeypatch):
    """A study carried to another machine as its record alone (``study.db``: the trials and the
    finished confirmations) names the same winner without training anything again."""
    import shutil

    fixed = {**TINY, "iterations": 60}
    record = tune(still, "toy", trials=2, out=tmp_path / "s", fixed=fixed, fraction=0.5, n=300,
                  progress=False, echo=lambda m: None, confirm=1)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(tmp_path / "s" / "study.db", moved / "study.db")

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded confirmation was trained again")

    monkeypatch.setattr(still, "train", no_training)
    monkeypatch.setattr(still, "resume", no_training)
    again = tune(still, "toy", trials=2, out=moved, fixed=fixed, fraction=0.5, n=300,
                 progress=False, echo=lambda m: None, confirm=1)
    assert again["confirmed"] == record["confirmed"]
    assert (again["trial"], again["validation"]) == (record["trial"], record["validation"])
    assert again["tuning_cost_fwd"] == record["tuning_cost_fwd"]


def test_a_resumed_study_proposes_new_settings_and_counts_each_run_once(still, tmp_path):
    """A study continued by another process must not replay the first one's proposals (a
    sampler seeded as before would: the same settings trained again, counted twice against the
    budget); a run folder shared by several trials counts once, at its cumulative cost."""
    out = tmp_path / "study"
    proposals = []
    for _ in range(2):  # each open_study as a new process would
        study = open_study(still, "toy", out)
        trial = study.ask()
        proposals.append(trial.suggest_float("x", 0.0, 1.0))
        study.tell(trial, 1.0)
    assert proposals[0] != proposals[1]
    shared = optuna.create_study()  # three trials, two of them on one run folder
    for lr, cost in ((1e-3, 5.0), (1e-3, 8.0), (2e-3, 3.0)):
        shared.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": optuna.distributions.FloatDistribution(
                1e-4, 1e-2, log=True)}, value=0.5, user_attrs={"cost_fwd": cost}))
    assert study_cost(shared) == 11.0


def test_a_trial_stopped_by_a_signal_is_tried_again_with_its_settings(still, tmp_path,
                                                                    monkeypatch):
    """A SIGTERM during a trial's training (the trainer checkpoints, then raises
    TrainingInterrupted) ends the study's process; the next process must train those settings
    again, continuing their run, not drop them for a new proposal (which a study that recorded
    the stop as the settings' failure did: sCT's sixth digits trial was lost that way)."""
    import signal

    from zoo.training.signals import TrainingInterrupted

    monkeypatch.setattr(still, "search_space", lambda config: {"lr": Float(1e-4, 1e-2, log=True)})
    train = still.train
    stops = []

    def stopped_once(config, run_dir, **kwargs):
        if not stops:
            stops.append(run_dir)
            raise TrainingInterrupted(signal.SIGTERM, 0, run_dir / "checkpoint.pt")
        return train(config, run_dir, **kwargs)

    monkeypatch.setattr(still, "train", stopped_once)
    out = tmp_path / "study"
    with pytest.raises(TrainingInterrupted):
        tune(still, "toy", trials=1, out=out, fixed=TINY, fraction=0.5, n=200, progress=False,
             echo=lambda m: None)
    record = tune(still, "toy", trials=1, out=out, fixed=TINY, fraction=0.5, n=200,
                  progress=False, echo=lambda m: None)
    stopped, again = optuna.load_study(study_name="still-edm-toy",
                                       storage=f"sqlite:///{out / 'study.db'}").trials
    assert stopped.state == optuna.trial.TrialState.FAIL
    assert again.state == optuna.trial.TrialState.COMPLETE
    assert again.params == stopped.params and record["params"] == stopped.params
    assert Path(again.user_attrs["run_dir"]) == stops[0]  # the same run folder, continued
