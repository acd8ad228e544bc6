"""Tuned presets (``Method.tuned``): the settings ``zoo tune`` chose applied over a dataset's
preset with their provenance, the preset as written one flag away (``--untuned``), studies that
search around the preset as written, a bench that refuses a run of the other presets and a
table that shows what tuning cost."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from zoo_edm.method import EDM

import zoo.plugins
from zoo.bench import BenchError, run_bench
from zoo.cli import main
from zoo.hookspecs import hookimpl
from zoo.methods import check_method
from zoo.training import config_to_dict
from zoo.training.cost import run_tuning_cost
from zoo.tuned import Tuned, untuned
from zoo.tuning import study_preset, trial_config

REPO = Path(__file__).resolve().parents[1]
TINY = {"batch_size": 8, "iterations": 3, "lr_warmup": 0, "checkpoint_every": 2,
        "log_every": 1, "network_kwargs": {"hidden": 16, "num_layers": 1}}
EDM_TOY = Tuned({"lr": 5e-3, "p_mean": -1.3}, "edm-toy", 3, {"W2": 0.07}, 3e7)


def set_tuned(monkeypatch, name, tuned):
    method = zoo.plugins.get("methods", name)
    monkeypatch.setattr(type(method), "tuned", tuned)
    return method


def test_configure_applies_the_tuned_settings_and_records_where_they_came_from(monkeypatch):
    edm = set_tuned(monkeypatch, "edm", {"toy": {"edm": EDM_TOY}})
    preset = edm.preset("toy")
    config = edm.configure("toy")
    assert (config.lr, config.p_mean) == (5e-3, -1.3)
    assert config.tuned == {"study": "edm-toy", "trial": 3, "validation": {"W2": 0.07},
                            "tuning_cost_fwd": 3e7,
                            "untuned": {"lr": preset.lr, "p_mean": preset.p_mean}}
    assert config_to_dict(untuned(config)) == config_to_dict(preset)  # the preset as written
    given = edm.configure("toy", lr=1e-4)  # a setting given wins over the tuned one
    assert (given.lr, given.p_mean, given.tuned["untuned"]) == (1e-4, -1.3,
                                                                 {"p_mean": preset.p_mean})
    assert untuned(given).lr == 1e-4 and untuned(given).p_mean == preset.p_mean
    everything = edm.configure("toy", lr=1e-4, p_mean=-1.0)  # nothing of the tuned left
    assert everything.tuned == {}
    assert edm.configure("digits").tuned == {}  # tuned for toy only


def test_a_runs_tuned_settings_apply_to_that_run_only(monkeypatch):
    """By run name: CT's tuned μ0 leaves CD's preset as written, 1-RF's lr leaves the reflow
    round's (a run of its own, ``rf-reflow``) as written."""
    cm = set_tuned(monkeypatch, "cm", {"toy": {"cm-ct": Tuned({"mu0": 0.8}, "cm-toy", 1, {}, 1.0)}})
    assert cm.configure("toy", mode="ct").mu0 == 0.8
    cd = cm.configure("toy")
    assert cd.mode == "cd" and cd.tuned == {} and cd.mu0 == cm.preset("toy").mu0
    rf = set_tuned(monkeypatch, "rf", {"toy": {"rf": Tuned({"lr": 7e-3}, "rf-toy", 0, {}, 1.0)}})
    assert rf.configure("toy").lr == 7e-3
    reflow = rf.configure("toy", mode="reflow")
    assert reflow.tuned == {} and reflow.lr != 7e-3


def test_a_tuned_setting_the_config_lacks_is_refused_at_registration(monkeypatch):
    edm = set_tuned(monkeypatch, "edm", {"toy": {"edm": Tuned({"lrr": 1.0}, "s", 0, {}, 0.0)}})
    with pytest.raises(ValueError, match="tuned\\['toy'\\]\\['edm'\\].*unknown: lrr"):
        check_method("edm", edm)
    set_tuned(monkeypatch, "edm", {"toy": {"edm": {"lr": 1e-3}}})
    with pytest.raises(ValueError, match="must be a zoo.tuned.Tuned"):
        check_method("edm", edm)


def test_a_study_searches_around_the_preset_as_written(monkeypatch):
    """A study's outcome is not its start: rerunning it gives the same study."""
    edm = set_tuned(monkeypatch, "edm", {"toy": {"edm": EDM_TOY}})
    base = study_preset(edm, "toy", {})
    assert config_to_dict(base) == config_to_dict(edm.preset("toy"))
    assert edm.search_space(base)["lr"].low == pytest.approx(edm.preset("toy").lr / 3)
    trial = trial_config(edm, "toy", {}, {"lr": 2e-3}, 0.5)
    assert (trial.lr, trial.p_mean, trial.tuned) == (2e-3, edm.preset("toy").p_mean, {})


def test_zoo_train_untuned_trains_the_preset_as_written(monkeypatch, tmp_path):
    edm = set_tuned(monkeypatch, "edm", {"toy": {"edm": EDM_TOY}})
    runner = CliRunner()
    tuned = runner.invoke(main, ["train", "edm", "--dataset", "toy", "--dry-run"])
    plain = runner.invoke(main, ["train", "edm", "--dataset", "toy", "--dry-run", "--untuned"])
    assert tuned.exit_code == 0 and plain.exit_code == 0, tuned.output + plain.output
    assert '"lr": 0.005' in tuned.output and '"study": "edm-toy"' in tuned.output
    assert f'"lr": {edm.preset("toy").lr}' in plain.output and '"tuned": {}' in plain.output
    resumed = runner.invoke(main, ["train", "edm", "--run-dir", str(tmp_path), "--resume",
                                   "--untuned"])
    assert resumed.exit_code != 0 and "drop --untuned" in resumed.output
    assert "--tuned" not in runner.invoke(main, ["train", "edm", "--help"]).output


class OneRowEDM(EDM):
    """EDM benched at its first row only (a quick bench)."""

    name = "one-row-edm"

    def bench_rows(self, run_dir):
        return super().bench_rows(run_dir)[:1]


class Plugin:
    @hookimpl
    def register_methods(self, register):
        register("one-row-edm", OneRowEDM())


@pytest.fixture
def one_row():
    zoo.plugins.register_plugin(Plugin(), "one-row-edm")
    yield zoo.plugins.get("methods", "one-row-edm")
    zoo.plugins.unregister_plugin("one-row-edm")


def bench(root, **options):
    return run_bench(["one-row-edm"], "toy", runs_root=root, n=32, batch_size=32,
                     out=root / "out", progress=False, echo=lambda m: None, **options)


def test_the_bench_refuses_a_run_of_the_other_presets_and_shows_the_tuning_cost(
        one_row, monkeypatch, tmp_path):
    plain = tmp_path / "plain"
    one_row.train(one_row.configure("toy", **TINY), plain / "toy" / "one-row-edm",
                  progress=False)
    set_tuned(monkeypatch, "one-row-edm", {"toy": {"one-row-edm": EDM_TOY}})
    with pytest.raises(BenchError, match="trained with the preset as written, but the bench's "
                       "one-row-edm preset for toy has the settings of study edm-toy trial 3.*"
                       "--untuned"):
        bench(plain)
    report = bench(plain, untuned=True)
    assert report.results[0].tuning_fwd == 0
    assert "tuning passes" not in (plain / "out" / "table.md").read_text()
    with pytest.raises(BenchError, match="--run-dir .* --untuned`, or pass --train-missing"):
        bench(tmp_path / "empty", untuned=True)  # the command that would train it says so

    tuned = tmp_path / "tuned"
    report = bench(tuned, train_missing=True, settings={None: TINY}, jobs=1)
    config = json.loads((tuned / "toy" / "one-row-edm" / "config.json").read_text())
    assert config["p_mean"] == -1.3 and config["tuned"]["study"] == "edm-toy"
    assert report.results[0].tuning_fwd == 3e7
    table = (tuned / "out" / "table.md").read_text()
    assert "tuning passes (G fwd-eq)" in table and "0.03" in table
    assert json.loads((tuned / "out" / "table.json").read_text())["rows"][0]["tuning_fwd"] == 3e7
    with pytest.raises(BenchError, match="settings of study edm-toy trial 3, but the bench's "
                       "one-row-edm preset for toy has the preset as written"):
        bench(tuned, untuned=True)


def test_a_rows_tuning_cost_counts_each_study_of_its_chain_once(monkeypatch, tmp_path):
    """PD tuned on a tuned teacher: both studies, each once though every stage records PD's."""
    edm = set_tuned(monkeypatch, "edm", {"toy": {"edm": EDM_TOY}})
    pd = set_tuned(monkeypatch, "pd", {"toy": {"pd": Tuned({"lr": 2e-3}, "pd-toy", 5, {}, 1e7)}})
    edm.train(edm.configure("toy", **TINY), tmp_path / "edm", progress=False)
    pd.train(pd.configure("toy", **TINY, teacher=str(tmp_path / "edm"), teacher_steps=4),
             tmp_path / "pd", progress=False)
    assert run_tuning_cost(tmp_path / "edm") == 3e7
    assert run_tuning_cost(tmp_path / "pd" / "stage-1-nfe-1") == 4e7


def test_printed_tuned_tables_are_the_study_winners_as_source_a_method_can_hold(tmp_path):
    """``benchmarks/tuned_table.py --print-tuned``: one ``tuned`` class attribute per method (CD's
    and CT's studies in one table), in 100 columns, that evaluates in a class body to exactly
    the studies' records: adopting the winners is a paste, not a transcription."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tuned_table.py"
    spec = importlib.util.spec_from_file_location("tuned_table", path)
    tuned_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tuned_table)
    records = {
        "cm-cd": {"params": {"distance": "l2", "ema_halflife_kimg": 18.159915196103242,
                             "lr": 0.0002226434464639121, "num_scales": 33},
                  "storage": "tune/digits/cm-cd/study.db", "trial": 1,
                  "validation": {"FD-digits": 0.4479675795975382}, "tuning_cost_fwd": 5494272.0},
        "cm-ct": {"params": {"ema_halflife_kimg": 4.517327494500315, "lr": 0.002459526780584015,
                             "mu0": 0.8047308532345662, "s0": 6, "s1": 78, "lr_decay": "linear",
                             "sample_sigmas": "80,0.8"},
                  "storage": "tune/digits/cm-ct/study.db", "trial": 11,
                  "validation": {"FD-digits": 1.399420346468201}, "tuning_cost_fwd": 1.312e7},
    }
    for family, record in records.items():
        (tmp_path / family).mkdir()
        (tmp_path / family / "best.json").write_text(json.dumps(record))
    found = tuned_table.best_records(tmp_path)
    assert list(found) == [("cm", "cm-cd"), ("cm", "cm-ct")]
    text = tuned_table.tuned_table_source("digits", {run: r for (_, run), r in found.items()})
    assert max(map(len, text.splitlines())) <= 100, text
    namespace = {"Tuned": Tuned}
    exec("class CM:\n" + text, namespace)
    assert namespace["CM"].tuned == {"digits": {run: Tuned(
        params=r["params"], study=f"tune/digits/{run}", trial=r["trial"],
        validation=r["validation"], tuning_cost_fwd=r["tuning_cost_fwd"])
        for run, r in records.items()}}


FIRST_PARTY_TUNED = [(name, run) for name in ("edm", "cm", "pd", "rf", "meanflow", "ect", "scm")
                     for run in zoo.plugins.get("methods", name).tuned.get("digits", {})]


@pytest.mark.parametrize("name,run", FIRST_PARTY_TUNED)
def test_a_first_party_tuned_preset_is_a_point_of_its_studys_search_space(name, run):
    """Each adopted winner holds searched settings only, each inside the range its study searched
    around the preset as written (a transcription outside it is caught), with its provenance;
    ``--untuned`` gives the preset back."""
    import math

    from zoo.search_space import Choice

    method = zoo.plugins.get("methods", name)
    record = method.tuned["digits"][run]
    fixed = {"mode": run.split("-", 1)[1]} if name in ("cm", "scm") else {}
    space = method.search_space(study_preset(method, "digits", fixed))
    assert set(record.params) <= set(space), sorted(set(record.params) - set(space))
    for key, value in record.params.items():
        allowed = space[key]
        assert (value in allowed.values if isinstance(allowed, Choice)
                else allowed.low <= value <= allowed.high), (key, value, allowed)
    assert record.study == f"tune/digits/{run}" and record.trial >= 0
    assert record.tuning_cost_fwd > 0
    assert all(math.isfinite(v) and v > 0 for v in record.validation.values())
    config = method.configure("digits", **fixed)
    assert method.run_name(config) == run
    assert config.tuned["trial"] == record.trial
    assert {k: getattr(config, k) for k in record.params} == record.params


COMMITTED_WINNERS = [(name, run) for name, run in FIRST_PARTY_TUNED
                     if (REPO / f"tune/digits/{run}/best.json").exists()]


@pytest.mark.parametrize("name,run", COMMITTED_WINNERS)
def test_a_tuned_preset_is_its_committed_studys_winner_exactly(name, run):
    """Where a study's record is kept in the repository, the preset pasted into the method is the
    winner its ``best.json`` names, to the last digit: no transcription drifts from it."""
    record = zoo.plugins.get("methods", name).tuned["digits"][run]
    best = json.loads((REPO / record.study / "best.json").read_text())
    assert record == Tuned(params=best["params"], study=record.study, trial=best["trial"],
                           validation=best["validation"], tuning_cost_fwd=best["tuning_cost_fwd"])
