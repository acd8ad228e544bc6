"""``zoo bench``: runs found or trained, the same seeds and evaluator per row, outputs, refusals."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_edm.method
import zoo_pd.method
from click.testing import CliRunner

import zoo.plugins
from zoo import bench as bench_module
from zoo.bench import (
    BenchError,
    export_formats,
    format_table,
    read_row_samples,
    rescore_bench,
    run_bench,
    training_order,
)
from zoo.bench.sample import check_npz_sizes
from zoo.cli import main
from zoo.data import Dataset, load_dataset
from zoo.diffusion.fast_samplers import sample_dpm_solver_2
from zoo.diffusion.samplers import generate, sample_euler
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
    assert all(set(r.metrics) == {"W2", "W2 floor"} and r.samples_per_s > 0  # n=64: one set
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
    # points: every row's samples are kept beside its picture (--save-samples auto)
    files = pictures + [p.replace(".png", ".npz") for p in pictures]
    assert sorted(p.name for p in (out / "samples").iterdir()) == sorted(files)
    record = json.loads((out / "table.json").read_text())
    assert record["n"] == 64 and record["seeds"] == [0, 63] and record["zoo_version"]
    assert {r["run_checksum"] for r in record["rows"]} == {record["dataset_checksum"]}
    assert record["rows"][0]["run_dir"].endswith("edm")
    assert record["metrics"]["W2"]["lower_is_better"] is True
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["nfe"]) for r in table] == [n for _, n in EDM_ROWS] + [1, 2, 4]
    markdown = (out / "table.md").read_text().splitlines()
    assert markdown[0].startswith("| METHOD | NFE | W2↓ | samples/s |")  # ± and floor: no columns
    assert len(markdown) == 2 + 1 + len(EDM_ROWS) + 3
    floor = report.results[0].metrics["W2 floor"]
    assert markdown[2].startswith(f"| real data (floor) | — | {floor:.4g} |")
    first = report.results[0].metrics
    assert f"| {first['W2']:.4g} |" in markdown[3] and "±" not in markdown[3]  # one set
    text = format_table(report)
    assert text.splitlines()[0].split()[:4] == ["METHOD", "NFE", "W2↓", "samples/s"]
    assert text.splitlines()[2].startswith("real data (floor)")


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


# ------------------------------------------------------------------ samplers per entry

def test_method_sampler_entries_give_labelled_rows_at_the_samplers_nfe(benched, tmp_path):
    """``--models edm:dpm-solver-2,edm:edm-stochastic`` beside plain ``pd``: each EDM entry's rows
    carry its sampler (and options) in the label and the sampler column, at the most steps N
    whose NFE is at most 1, 3, 5, 10, 20, 35: DPM-Solver-2 and EDM's stochastic sampler both
    spend 2 evaluations per step and 1 on the last (to σ = 0), 2N − 1."""
    root, _ = benched
    report = run_bench(["edm:dpm-solver-2", "edm:edm-stochastic", "pd"], "toy",
                       runs_root=root / "runs", n=32, batch_size=32, out=tmp_path,
                       progress=False, sampler_options={"edm:edm-stochastic": {"S_churn": 5}})
    rows = [(r.entry, r.row.label, r.sampler, r.row.nfe) for r in report.results]
    assert rows == [("edm:dpm-solver-2", "EDM (DPM-Solver-2)", "dpm-solver-2", n)
                    for n in (1, 3, 5, 9, 19, 35)] + [
        ("edm:edm-stochastic", "EDM (EDM stochastic, S_churn=5.0)", "edm-stochastic", n)
        for n in (1, 3, 5, 9, 19, 35)] + [("pd", "PD", "euler", n) for n in (1, 2, 4)]
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["sampler"] for r in table] == [r[2] for r in rows]
    # the saved samples of DPM-Solver-2 at 19 NFE are what that sampler gives on 10 Karras steps
    edm = zoo.plugins.get("methods", "edm")
    run = edm.load(root / "runs" / "toy" / "edm")
    x, info = read_row_samples(tmp_path / "samples" / "edm-dpm-solver-2-nfe19.npz",
                               load_dataset("toy"))
    expected, nfe = generate(run.denoiser, sample_dpm_solver_2, edm.sigmas(run.config, 10), (2,),
                             range(32))
    torch.testing.assert_close(x, expected)
    assert nfe == 19 and info["sampler"] == "dpm-solver-2" and info["seeds"] == [0, 31]
    assert info["run_checksum"] == load_dataset("toy").checksum and info["nfe"] == 19
    # the plain entry and an explicit one with the same rows list each row once
    again = run_bench(["edm", "edm:heun"], "toy", runs_root=root / "runs", n=16,
                      out=tmp_path / "again", progress=False)
    assert [(r.row.label, r.row.nfe) for r in again.results] == EDM_ROWS


@pytest.mark.parametrize("models, options, message", [
    (["edm:nope"], None, "--models edm:nope: unknown sampler 'nope'.*samplers for edm: ddim"),
    (["edm:consistency"], None, "--models edm:consistency: sampler 'consistency' needs a "
     "consistency model, but this run is a diffusion model; valid samplers for it: ddim"),
    (["edm:heun"], {"edm:heun": '{"S_churn": 1}'}, "--models edm:heun: sampler 'heun' takes no "
     r"option S_churn; its options: \(none\)"),
    (["edm:edm-stochastic"], {"edm:edm-stochastic": '{"S_churn": "a"}'},
     "option S_churn must be float, got 'a'"),
    (["pd:euler"], None, "method pd samples its own way and offers no sampler choice"),
    (["edm"], {"edm:heun": "{}"}, "--sampler-options edm:heun: not a METHOD:SAMPLER entry"),
    (["edm", "edm"], None, "--models names edm twice"),
])
def test_bad_sampler_entries_are_refused_before_any_training(tmp_path, monkeypatch, models,
                                                             options, message):
    monkeypatch.setattr(type(zoo.plugins.get("methods", "edm")), "train",
                        lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(BenchError, match=message):
        run_bench(models, "toy", runs_root=tmp_path / "runs", train_missing=True,
                  progress=False, sampler_options=options)
    assert not (tmp_path / "runs").exists()


def test_a_missing_weights_file_of_a_run_to_train_is_refused_before_any_training(tmp_path,
                                                                             monkeypatch):
    """CD with LPIPS on digits without VGG16's weights: the EDM teacher would train first and
    the CD run then fail; the bench names the file before training anything (the teacher, which
    the bench trains first, is not missing)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("edm", "cm"):
        monkeypatch.setattr(type(zoo.plugins.get("methods", name)), "train",
                            lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(BenchError, match=r"cm run .*cm-cd: --distance lpips needs the VGG16 "
                                         r"ImageNet weights") as info:
        run_bench(["cm"], "digits", runs_root=tmp_path / "runs", train_missing=True,
                  progress=False, settings={"cm": {"distance": "lpips"}}, out=tmp_path / "out")
    assert "teacher" not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_cli_sampler_options_by_entry(benched, tmp_path):
    runs = str(benched[0] / "runs")
    args = ["bench", "--models", "edm:edm-stochastic", "--runs-root", runs, "--n", "8",
            "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--sampler-options", '{"S_churn": 1}'])
    assert result.exit_code == 1 and "--sampler-options takes METHOD:SAMPLER=JSON" in result.output
    result = CliRunner().invoke(main, [*args, "--sampler-options",
                                       'edm:edm-stochastic={"S_churn": 1}'])
    assert result.exit_code == 0, result.output
    assert "EDM (EDM stochastic, S_churn=1.0)" in result.output


# ------------------------------------------------------------------ saved samples, --rescore

class MeanNorm:
    """|mean ‖x‖ of the samples − mean ‖x‖ of the data|: a metric the bench did not run."""

    name, kinds, lower_is_better = "mean-norm", ("points",), {"norm error": True}

    def compute(self, samples, dataset, *, seed=0):
        return {"norm error": float((samples.norm(dim=1).mean() - dataset.x.norm(dim=1).mean())
                                    .abs())}


@pytest.fixture
def mean_norm_metric():
    plugin = type("Plugin", (), {"register_metrics": staticmethod(zoo.hookimpl(
        lambda register: register("mean-norm", MeanNorm())))})
    zoo.plugins.register_plugin(plugin, "mean-norm-test")
    yield
    zoo.plugins.unregister_plugin("mean-norm-test")


def test_rescore_recomputes_the_table_from_the_saved_samples(benched, tmp_path, monkeypatch,
                                                              mean_norm_metric):
    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    before = json.loads((out / "table.json").read_text())
    monkeypatch.setattr(type(zoo.plugins.get("methods", "edm")), "load",
                        lambda *a, **k: pytest.fail("a model was loaded"))
    report = rescore_bench("toy", out=out, metrics=["w2", "mean-norm"], progress=False)
    # the same samples and seed give the bench's W2 exactly; the new metric is a new column
    assert [r.metrics["W2"] for r in report.results] == [r.metrics["W2"] for r in
                                                          benched[1].results]
    data = load_dataset("toy")
    for result in report.results:
        x = np.load(out / result.samples_file)["arr_0"]
        norm = np.abs(np.linalg.norm(x, axis=1).mean() - data.x.norm(dim=1).mean().item())
        assert result.metrics["norm error"] == pytest.approx(norm, rel=1e-5)
    after = json.loads((out / "table.json").read_text())
    assert [r["samples_per_s"] for r in after["rows"]] == [r["samples_per_s"] for r in
                                                            before["rows"]]
    assert "norm error" in after["metrics"] and "norm error↓" in (out / "table.md").read_text()


def test_rescore_refuses_other_data_n_seed_and_missing_samples(benched, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    with pytest.raises(BenchError, match="--rescore --n 32: the saved samples were made with "
                                         "--n 64"):
        rescore_bench("toy", out=out, n=32, progress=False)
    with pytest.raises(BenchError, match="--rescore --seed 1: .* made with --seed 0"):
        rescore_bench("toy", out=out, seed=1, progress=False)
    with pytest.raises(BenchError, match="is a bench of toy .*, not of dataset gmm"):
        rescore_bench("gmm", out=out, progress=False)
    with pytest.raises(BenchError, match="no bench table"):
        rescore_bench("toy", out=tmp_path / "nothing", progress=False)
    shutil.copy(out / "samples" / "pd-nfe1.npz", out / "samples" / "pd-nfe2.npz")
    with pytest.raises(BenchError, match=r"pd-nfe2.npz holds other samples than row 'PD' "
                                         r"\(NFE 2\).*'nfe': 1"):
        rescore_bench("toy", out=out, progress=False)
    (out / "samples" / "pd-nfe2.npz").unlink()
    with pytest.raises(BenchError, match="row 'PD' \\(NFE 2\\) has no saved samples"):
        rescore_bench("toy", out=out, progress=False)
    result = CliRunner().invoke(main, ["bench", "--rescore", "--models", "edm", "--out",
                                       str(out)])
    assert result.exit_code == 1 and "it takes no --models" in result.output


def test_samples_are_kept_except_for_published_size_image_rows():
    points = Dataset("p", torch.zeros(4, 2), None, "c", "points")
    images = Dataset("i", torch.zeros(4, 1, 8, 8), None, "c", "image")
    assert export_formats("auto", points, 50_000) == "npz"
    assert export_formats("auto", images, 49_999) == "npz"
    assert export_formats("auto", images, 50_000) == "none"
    assert export_formats("npz", images, 50_000) == "npz"
    with pytest.raises(BenchError, match="--save-samples png writes images; dataset p holds "
                                         "points"):
        export_formats("png", points, 10)


def test_parallel_training_trains_every_run_as_it_would_alone(benched, tmp_path):
    """--jobs 2: EDM first, then PD in a spawned process beside the others; every run's weights
    bit-identical to the sequential bench's (the fixture's), requirements trained first."""
    root, _ = benched
    messages = []
    run_bench(["edm", "pd"], "toy", runs_root=tmp_path / "runs", train_missing=True, n=32,
              batch_size=32, out=tmp_path / "out", progress=False, echo=messages.append, jobs=2)
    assert [m for m in messages if m.endswith(" trained")] == [
        f"edm: {tmp_path / 'runs' / 'toy' / 'edm'} trained",
        f"pd: {tmp_path / 'runs' / 'toy' / 'pd'} trained"]
    for part in ("edm", "pd/stage-2-nfe-1"):
        mine = load_checkpoint(tmp_path / "runs" / "toy" / part)
        theirs = load_checkpoint(root / "runs" / "toy" / part)
        for key in ("net", "ema"):
            for name, value in theirs[key].items():
                assert torch.equal(mine[key][name], value), (part, key, name)


def test_a_failed_parallel_run_is_an_error_naming_it(tmp_path, capfd):
    # the student's network cannot take the teacher's weights: found when the run starts
    settings = {"pd": {"network_kwargs": {"hidden": 7}}}
    with pytest.raises(BenchError, match=r"training pd run .*pd failed \(exit 1"):
        run_bench(["edm", "pd"], "toy", runs_root=tmp_path / "runs", train_missing=True, n=32,
                  batch_size=32, out=tmp_path / "out", progress=False, echo=lambda m: None,
                  jobs=2, settings=settings)
    assert "differs from the teacher's" in capfd.readouterr().err
    # a teacher no run of the bench trains is missing before anything trains
    settings = {"pd": {"teacher": str(tmp_path / "no-such-teacher")}}
    with pytest.raises(BenchError, match=r"pd run .*pd: the teacher run .*no-such-teacher has no "
                                         r"checkpoint"):
        run_bench(["edm", "pd"], "toy", runs_root=tmp_path / "runs2", train_missing=True, n=32,
                  batch_size=32, out=tmp_path / "out2", progress=False, echo=lambda m: None,
                  jobs=2, settings=settings)
    assert not (tmp_path / "runs2").exists()


def test_staged_runs_count_every_stage_for_the_longest_first_order():
    pd, edm = zoo.plugins.get("methods", "pd"), zoo.plugins.get("methods", "edm")
    config = pd.configure("toy", teacher_steps=64, iterations=7)
    assert pd.total_iterations(config) == 6 * 7  # 64 -> 32 -> ... -> 1: six stages
    assert edm.total_iterations(edm.configure("toy", iterations=9)) == 9


def test_plot_series_get_distinct_colour_and_marker_pairs_past_ten():
    from zoo.bench.report import _series_styles

    labels = [f"method {i}" for i in range(25)] + ["method 3"]  # repeats keep their style
    styles = _series_styles(labels)
    assert list(styles) == labels[:25]
    pairs = {(style["color"], style["marker"]) for style in styles.values()}
    assert len(pairs) == 25


def test_a_row_whose_sampler_uses_other_nfe_than_promised_is_refused(benched, tmp_path,
                                                                     monkeypatch):
    """The guard that a row's samples cost the NFE the row promises: a sampler spending 3 NFE
    on a 1-NFE row never enters the table as NFE 1."""
    root, _ = benched
    edm = zoo.plugins.get("methods", "edm")
    real = type(edm).sample

    def costlier(self, *args, **kwargs):
        samples = real(self, *args, **kwargs)
        samples.nfe += 2
        return samples

    monkeypatch.setattr(type(edm), "sample", costlier)
    with pytest.raises(BenchError, match=r"row 'EDM \(Heun\)' promises NFE 1 but its sampler "
                                         r"used 3"):
        run_bench(["edm"], "toy", runs_root=root / "runs", n=64, batch_size=32,
                  out=tmp_path / "out", progress=False, echo=lambda msg: None)
    # no temporary file is left (the bench's lock file stays, as a run's does)
    assert [p.name for p in (tmp_path / "out").rglob(".*")] == [".lock"]


def test_rescore_refuses_samples_of_another_run(benched, tmp_path):
    """A row's saved samples must come from the run the table names (its checksum): samples
    of a retrained or other run are refused, not scored under the old row."""
    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    path = out / "samples" / "pd-nfe1.npz"
    with np.load(path, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    info = json.loads(str(arrays["info"]))
    info["run_checksum"] = "0" * len(str(info["run_checksum"]))
    arrays["info"] = np.array(json.dumps(info))
    np.savez(path, **arrays)
    with pytest.raises(BenchError, match=r"pd-nfe1.npz holds other samples than row 'PD' "
                                         r"\(NFE 1\).*run_checksum"):
        rescore_bench("toy", out=out, progress=False)


# ---------------------------------------------------------------- plugins that fail in a bench

def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the lock) by its SHA-256: what "left intact" means."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


class BadMetric:
    """A metric plugin whose ``compute`` returns ``value`` as its result."""

    kinds = ("points",)
    lower_is_better = {"bad": True}

    def __init__(self, value):
        self.name, self.value = "bad", value

    def compute(self, samples, dataset, *, seed=0):
        return {"bad": self.value} if not isinstance(self.value, list) else self.value


@pytest.mark.parametrize("value, problem", [
    (float("nan"), "returned 'bad' = nan: a non-finite result never enters a table"),
    (torch.tensor(0.5), "returned 'bad' = tensor(0.5000) (Tensor); a result is a real number"),
    ([0.5], "returned a list, not a mapping of result names to numbers"),
])
def test_a_metric_returning_nan_a_tensor_or_a_list_is_refused_naming_it(benched, tmp_path, value,
                                                                       problem):
    plugin = type("Plugin", (), {"register_metrics": staticmethod(zoo.hookimpl(
        lambda register: register("bad", BadMetric(value))))})
    zoo.plugins.register_plugin(plugin, "bad-metric-test")
    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    before = digest(out)
    result = CliRunner().invoke(main, ["bench", "--models", "pd", "--dataset", "toy",
                                       "--runs-root", str(benched[0] / "runs"), "--n", "64",
                                       "--metrics", "w2,bad", "--out", str(tmp_path / "new")])
    assert result.exit_code == 1
    assert f"metric 'bad' (plugin bad-metric-test ((in-process))) {problem}" in result.output
    assert "row 'PD' (NFE 1) of method 'pd'" in result.output
    # another bench's folder is never touched; the refused table holds no row
    assert digest(out) == before
    assert not (tmp_path / "new" / "table.json").exists()


def raise_on_batches(denoiser, x, sigmas, *, generator=None, class_labels=None):
    """Euler steps on the planning call (one sample); a KeyError on real batches."""
    if len(x) > 1:
        raise KeyError("sigma_max")
    return sample_euler(denoiser, x, sigmas, class_labels=class_labels)


def nan_sampler(denoiser, x, sigmas, *, generator=None, class_labels=None):
    return sample_euler(denoiser, x, sigmas, class_labels=class_labels) * float("nan")


@pytest.fixture
def failing_samplers():
    for fn in (raise_on_batches, nan_sampler):
        fn.parameterization = "edm"
    plugin = type("Plugin", (), {"register_samplers": staticmethod(zoo.hookimpl(
        lambda register: [register("raises", raise_on_batches),
                          register("nans", nan_sampler)]))})
    zoo.plugins.register_plugin(plugin, "failing-samplers")


def test_a_sampler_failing_mid_bench_names_itself_and_keeps_the_finished_rows(
        benched, tmp_path, failing_samplers):
    out, runs = tmp_path / "out", str(benched[0] / "runs")
    bench = ["bench", "--models", "pd,edm:raises", "--dataset", "toy", "--runs-root", runs,
             "--n", "64", "--out", str(out)]
    result = CliRunner().invoke(main, bench)
    assert result.exit_code == 1
    message = result.output
    assert "of method 'edm' (edm (fewstep-zoo)) failed with sampler 'raises' " \
           "(failing-samplers ((in-process))): KeyError: 'sigma_max'" in message
    assert "the 3 finished rows are in" in message and "Can't close the ZIP" not in message
    table = json.loads((out / "table.json").read_text())
    assert not table["complete"] and [r["label"] for r in table["rows"]] == ["PD"] * 3
    assert [p.name for p in out.rglob(".*")] == [".lock"]  # no temporary file left behind
    kept = digest(out / "samples")
    # a rerun continues: the finished rows are reused, not sampled again
    result = CliRunner().invoke(main, ["--traceback", *bench], catch_exceptions=True)
    # --traceback: the error is raised with its traceback and its cause, the sampler's own
    assert isinstance(result.exception, BenchError)
    assert isinstance(result.exception.__cause__, KeyError)
    result = CliRunner().invoke(main, ["bench", "--models", "pd", "--dataset", "toy",
                                       "--runs-root", runs, "--n", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("reusing the finished row") == 3
    assert digest(out / "samples") == kept
    assert json.loads((out / "table.json").read_text())["complete"]


def test_a_sampler_returning_nan_never_enters_the_table(benched, tmp_path, failing_samplers):
    result = CliRunner().invoke(main, ["bench", "--models", "edm:nans", "--dataset", "toy",
                                       "--runs-root", str(benched[0] / "runs"), "--n", "64",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "64 of 64 samples (seeds 0..63) are not finite (NaN or inf)" in result.output
    assert "with sampler 'nans' (failing-samplers" in result.output
    assert not (tmp_path / "out" / "table.json").exists()


def test_a_bench_records_its_stream_and_never_mixes_two_in_one_table(benched, tmp_path):
    """Rows drawn from another noise stream cannot share a table: a --noise-stream torch bench
    into the (default) Philox bench's folder is refused before any work, naming the flag that
    would add to it; into its own folder it records the stream, and its numbers are another
    draw of the same model. A table written before the stream was recorded counts as torch's."""
    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    assert json.loads((out / "table.json").read_text())["noise_stream"] == "philox"
    before = digest(out)
    args = ["bench", "--models", "pd", "--dataset", "toy", "--runs-root",
            str(benched[0] / "runs"), "--n", "64"]
    result = CliRunner().invoke(main, [*args, "--noise-stream", "torch", "--out", str(out)])
    assert result.exit_code == 1
    assert "(noise stream 'philox' there, 'torch' now)" in result.output
    assert "or pass --noise-stream philox to add to it" in " ".join(result.output.split())
    assert digest(out) == before
    result = CliRunner().invoke(main, [*args, "--noise-stream", "torch", "--out",
                                       str(tmp_path / "torch")])
    assert result.exit_code == 0, result.output
    assert "seeds 0..63 (torch noise)" in result.output
    record = json.loads((tmp_path / "torch" / "table.json").read_text())
    assert record["noise_stream"] == "torch"
    philox_rows = {(r.row.label, r.row.nfe): r.metrics["W2"] for r in benched[1].results}
    torch_rows = {(r["label"], r["nfe"]): r["metrics"]["W2"] for r in record["rows"]}
    assert all(philox_rows[k] != torch_rows[k] for k in torch_rows)
    # an older table, without the record, was sampled with torch's stream: the default refuses
    del record["noise_stream"]
    (tmp_path / "torch" / "table.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "torch")])
    assert result.exit_code == 1
    assert "(noise stream 'torch' there, 'philox' now)" in result.output


def test_a_bench_into_another_benchs_folder_is_refused_before_any_work(benched, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    before = digest(out)
    monkeypatch.setattr(bench_module, "prepare_runs",
                        lambda *a, **k: pytest.fail("the bench trained or planned first"))
    result = CliRunner().invoke(main, ["bench", "--models", "pd", "--dataset", "toy",
                                       "--runs-root", str(benched[0] / "runs"), "--n", "128",
                                       "--out", str(out)])
    assert result.exit_code == 1
    assert f"--out {out} holds another bench's results (n 64 there, 128 now)" in result.output
    assert f"mv {out} {out}.old" in result.output
    assert digest(out) == before
    (out / "table.json").write_text("{not json")
    result = CliRunner().invoke(main, ["bench", "--models", "pd", "--dataset", "toy",
                                       "--runs-root", str(benched[0] / "runs"), "--n", "64",
                                       "--out", str(out)])
    assert result.exit_code == 1 and "table.json is not a readable bench table" in result.output


def test_two_benches_into_one_folder_cannot_run_at_once(tmp_path):
    from zoo.training.rundir import RunLock

    held = RunLock(tmp_path / "out").acquire()
    try:
        result = CliRunner().invoke(main, ["bench", "--models", "pd", "--dataset", "toy",
                                           "--out", str(tmp_path / "out")])
        assert result.exit_code == 1
        assert f"{tmp_path / 'out'} is in use by another zoo process (PID {os.getpid()})" \
            in result.output and "--out" in result.output
    finally:
        held.release()


def test_rescore_reads_no_decompression_bomb_and_names_a_truncated_file(benched, tmp_path):
    """A samples file declaring 2 GiB of zeros in a few MB is refused from its npy header,
    before decompression; a truncated one is a one-line error, not a BadZipFile traceback."""
    import resource
    import zipfile

    out = tmp_path / "out"
    shutil.copytree(benched[0] / "out", out)
    path = out / "samples" / "pd-nfe1.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (2**31 // 8,)}
            np.lib.format.write_array_header_1_0(member, header)
            chunk = bytes(2**24)
            for _ in range(2**31 // 2**24):
                member.write(chunk)
    assert path.stat().st_size < 10 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BenchError, match=r"pd-nfe1.npz declares 2.0 GiB of arrays"):
        check_npz_sizes(path, limit=2**30)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 2**10  # KiB
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BenchError, match=r"pd-nfe1.npz is not a complete bench samples file"):
        rescore_bench("toy", out=out, progress=False)


@pytest.mark.parametrize("name", ["cm", "rf", "scm", "pd"])
def test_the_printed_train_command_makes_the_runs_config(name, tmp_path, monkeypatch):
    """What `zoo bench` prints for a missing run (`zoo train ...`) recreates that run's config:
    the mode and only what differs from that mode's preset."""
    import shlex

    from zoo.bench.plan import train_command

    monkeypatch.chdir(tmp_path)
    method = zoo.plugins.get("methods", name)
    for run_name, config in method.bench_configs("toy", tmp_path / "runs").items():
        config.lr = 0.0123
        command = train_command(name, method, config, "toy", tmp_path / "runs" / run_name)
        args = shlex.split(command)[1:] + ["--dry-run"]
        result = CliRunner().invoke(main, args)
        lines = result.output.splitlines()
        end = next(i for i, line in enumerate(lines) if line.startswith("run directory:"))
        settings = json.loads("\n".join(lines[1:end]))
        assert settings == json.loads(json.dumps(zoo.training.config_to_dict(config))), command


def test_set_scopes_every_run_a_method_or_one_run():
    from zoo.bench.plan import apply_settings, parse_settings

    settings = parse_settings(["iterations=7", "cm.lr=0.001", "cm/cm-ct.lr=0.002",
                               "cm/cm-ct.mu0=0.95"])
    cm = zoo.plugins.get("methods", "cm")
    configs = cm.bench_configs("toy")
    cd = apply_settings("cm", configs["cm-cd"], settings, "cm-cd")
    ct = apply_settings("cm", configs["cm-ct"], settings, "cm-ct")
    assert (cd.iterations, cd.lr, cd.mu0) == (7, 0.001, configs["cm-cd"].mu0)
    assert (ct.iterations, ct.lr, ct.mu0) == (7, 0.002, 0.95)
