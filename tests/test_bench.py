"""``zoo bench``: runs found or trained, the same seeds and evaluator per row, outputs, refusals."""

import csv
import json
import shutil

import pytest
import torch
import zoo_edm.method
import zoo_pd.method
from click.testing import CliRunner

import zoo.plugins
from zoo.bench import BenchError, format_table, run_bench, training_order
from zoo.cli import main
from zoo.training import load_checkpoint, save_checkpoint

TINY = {"batch_size": 64, "lr_warmup": 0, "network_kwargs": {"hidden": 16, "num_layers": 1},
        "checkpoint_every": 20, "log_every": 10}


def use_tiny_presets(mp):
    """Toy presets at test size: a 20-iteration EDM, PD from 8 steps with 6 iterations a stage."""
    mp.setitem(zoo_edm.method.PRESETS, "toy",
               {**zoo_edm.method.PRESETS["toy"], **TINY, "iterations": 20})
    mp.setitem(zoo_pd.method.PRESETS, "toy",
               {**zoo_pd.method.PRESETS["toy"], **TINY, "iterations": 6, "teacher_steps": 8,
                "checkpoint_every": 6})


#: EDM's bench rows: Heun, then the fast samplers near 10 and 20 NFE (zoo_edm EDM.fast_bench).
EDM_ROWS = [("EDM (Heun)", n) for n in (1, 3, 5, 9, 19, 35)] + [
        (f"EDM ({label})", n) for label in ("DDIM", "DPM-Solver-3", "DPM-Solver++(2M)", "3-DEIS")
        for n in ((10, 19) if label == "DPM-Solver-3" else (10, 20))]


@pytest.fixture(autouse=True)
def tiny_presets(monkeypatch):
    use_tiny_presets(monkeypatch)


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """``zoo bench --models edm,pd --dataset toy --train-missing`` from nothing, at test size."""
    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        use_tiny_presets(mp)
        zoo.plugins.reset()
        report = run_bench(["edm", "pd"], "toy", runs_root=root / "runs", train_missing=True,
                           n=64, batch_size=32, out=root / "out", progress=False,
                           echo=lambda msg: None)
    return root, report


def test_train_missing_goes_from_nothing_to_all_outputs(benched):
    root, report = benched
    rows = [(r.method, r.row.label, r.row.nfe) for r in report.results]
    assert rows == [("edm", label, n) for label, n in EDM_ROWS] + [
        ("pd", "PD", n) for n in (1, 2, 4)]
    assert all(set(r.metrics) == {"W2", "W2 ±", "W2 floor"} and r.samples_per_s > 0
               for r in report.results)
    # even a briefly trained teacher is far better at 35 NFE than at 1 (which collapses to a mean)
    edm = {r.row.nfe: r.metrics["W2"] for r in report.results if r.row.label == "EDM (Heun)"}
    assert edm[35] < 0.6 * edm[1]
    # every row measured against the same reference and seeds: the floor is one number
    assert len({r.metrics["W2 floor"] for r in report.results}) == 1
    out = root / "out"
    for name in ("table.md", "table.csv", "table.json", "metric_vs_nfe.png"):
        assert (out / name).stat().st_size > 0
    pictures = [f"edm-heun-nfe{n}.png" for n in (1, 3, 5, 9, 19, 35)]
    pictures += [f"edm-{name}-nfe{n}.png" for name, nfes in (
        ("ddim", (10, 20)), ("dpm-solver-3", (10, 19)), ("dpm-solver-2m", (10, 20)),
        ("3-deis", (10, 20))) for n in nfes]
    pictures += [f"pd-nfe{n}.png" for n in (1, 2, 4)]
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(pictures)
    record = json.loads((out / "table.json").read_text())
    assert record["n"] == 64 and record["seeds"] == [0, 63] and record["zoo_version"]
    assert {r["run_checksum"] for r in record["rows"]} == {record["dataset_checksum"]}
    assert record["rows"][0]["run_dir"].endswith("edm")
    assert record["metrics"]["W2"]["lower_is_better"] is True
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["nfe"]) for r in table] == [n for _, n in EDM_ROWS] + [1, 2, 4]
    markdown = (out / "table.md").read_text().splitlines()
    assert markdown[0].startswith("| METHOD | NFE | W2↓ |") and "samples/s" in markdown[0]
    assert len(markdown) == 2 + len(EDM_ROWS) + 3
    text = format_table(report)
    assert text.splitlines()[0].split()[:3] == ["METHOD", "NFE", "W2↓"]


def test_trained_edm_beats_its_untrained_weights_on_the_same_bench(tmp_path, monkeypatch):
    """Training has to show in the bench: an EDM trained 400 iterations on the Gaussian mixture
    against the same run with its step-0 weights (the checkpoint the trainer writes before the
    first step), same seeds and reference. Untrained, the zero output layer makes the denoiser
    the ideal one for a single Gaussian, which is far from 8 narrow components. Measured (n=256,
    training seeds 0-4): trained W2@35 0.144-0.158 against 0.304 untrained (ratio 0.47-0.52;
    the n=256 floor is 0.094); with training disabled the ratio is 1."""
    monkeypatch.setitem(zoo_edm.method.PRESETS, "toy", {
        **zoo_edm.method.PRESETS["toy"], "batch_size": 128, "lr_warmup": 0, "iterations": 400,
        "network_kwargs": {"hidden": 64, "num_layers": 2}, "checkpoint_every": 10**6,
        "log_every": 10**6})
    zoo.plugins.reset()
    common = dict(n=256, batch_size=256, progress=False, echo=lambda msg: None)
    trained = run_bench(["edm"], "gmm", runs_root=tmp_path / "runs", train_missing=True,
                        out=tmp_path / "out", **common)
    shutil.copytree(tmp_path / "runs", tmp_path / "untrained")
    run = tmp_path / "untrained" / "gmm" / "edm"
    # checkpoint_every > iterations: the saves are step 0 and the end, the first kept as -prev
    state = torch.load(run / "checkpoint-prev.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 0
    save_checkpoint({**state, "step": 400}, run / "checkpoint.pt")  # benchable as finished
    untrained = run_bench(["edm"], "gmm", runs_root=tmp_path / "untrained",
                          out=tmp_path / "out0", **common)
    w2 = {(r.row.label, r.row.nfe): r.metrics["W2"] for r in trained.results}
    w2_0 = {(r.row.label, r.row.nfe): r.metrics["W2"] for r in untrained.results}
    assert w2[("EDM (Heun)", 35)] < 0.7 * w2_0[("EDM (Heun)", 35)]


def test_existing_runs_are_reused_and_same_seeds_give_same_numbers(benched, tmp_path):
    root, report = benched
    again = run_bench(["pd"], "toy", runs_root=root / "runs", n=64, batch_size=64,
                      out=tmp_path, progress=False)
    # the batch size does not change a sample, so neither does it change the metric
    assert [r.metrics for r in again.results] == [r.metrics for r in report.results[-3:]]


def test_missing_run_is_an_error_naming_the_run_and_the_command(tmp_path):
    with pytest.raises(BenchError, match=r"edm run .*toy/edm is missing \(required by pd\)\. "
                                         r"Create it with `zoo train edm --dataset toy --run-dir"):
        run_bench(["pd"], "toy", runs_root=tmp_path, progress=False)
    with pytest.raises(BenchError, match="edm run .* is missing. .* or pass --train-missing"):
        run_bench(["edm"], "toy", runs_root=tmp_path, progress=False)


def test_unfinished_run_is_an_error(benched, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(benched[0] / "runs", runs)
    stage = runs / "toy" / "pd" / "stage-1-nfe-2"
    state = load_checkpoint(stage)
    save_checkpoint({**state, "step": 3}, stage / "checkpoint.pt")
    with pytest.raises(BenchError, match="stopped at step 3 of 6"):
        run_bench(["pd"], "toy", runs_root=runs, progress=False)


def test_runs_trained_on_other_data_are_refused(benched, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(benched[0] / "runs", runs)
    state = load_checkpoint(runs / "toy" / "edm")
    state["dataset"]["checksum"] = "0" * 64
    save_checkpoint(state, runs / "toy" / "edm" / "checkpoint.pt")
    with pytest.raises(BenchError, match=r"run .*toy/edm was trained on checkerboard with "
                                         r"checksum 0{64}, but dataset toy \(checkerboard\) has "
                                         r"checksum [0-9a-f]{64}: refusing to compare"):
        run_bench(["edm", "pd"], "toy", runs_root=runs, n=16, progress=False)
    # also when only a requirement (the teacher) is on other data, before anything is trained
    shutil.rmtree(runs / "toy" / "pd")
    with pytest.raises(BenchError, match=r"toy/edm was trained on checkerboard with checksum 0"):
        run_bench(["pd"], "toy", runs_root=runs, train_missing=True, progress=False)
    assert not (runs / "toy" / "pd").exists()


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(BenchError, match="unknown model.* 'nope'; valid: .*edm.*pd"):
        run_bench(["edm", "nope"], "toy", progress=False)


def test_requirements_come_first():
    methods = {name: zoo.plugins.get("methods", name) for name in ("pd", "edm")}
    assert training_order(methods) == ["edm", "pd"]
    assert training_order({"pd": methods["pd"]}) == ["edm", "pd"]


def test_cli_prints_the_table_and_reports_errors(benched, tmp_path):
    runner = CliRunner()
    runs = str(benched[0] / "runs")
    result = runner.invoke(main, ["bench", "--models", "edm", "--runs-root", runs, "--n", "16",
                                  "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "METHOD" in result.output and "W2↓" in result.output and "samples/s" in result.output
    assert (tmp_path / "table.md").exists()
    result = runner.invoke(main, ["bench", "--models", "cm,nope", "--runs-root", str(tmp_path)])
    assert result.exit_code == 1 and "unknown model(s) 'nope'" in result.output
    result = runner.invoke(main, ["bench", "--models", "edm", "--runs-root", str(tmp_path / "x")])
    assert result.exit_code == 1 and "--train-missing" in result.output
