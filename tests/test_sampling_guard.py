"""Sampling and editing never lose or spoil output; ``--weights ema|raw`` and ``teacher_weights``.

Bad output paths and sampler/σ settings are refused before any sampling; the raw ``.npz`` is
written before the picture; non-finite results are an error naming the likely cause, with the
``.npz`` kept. ``--weights raw`` samples exactly what the run's raw weights give.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import zoo_edm.method
from click.testing import CliRunner
from PIL import Image

import zoo.viz
from zoo import metrics as zoo_metrics
from zoo.bench import format_table, run_bench
from zoo.cli import main
from zoo.data import load_dataset
from zoo.diffusion import append_zero, karras_sigmas
from zoo.diffusion.samplers import generate, sample_heun
from zoo.editing import read_image
from zoo.plugins import get
from zoo.training import load_checkpoint, save_checkpoint
from zoo.training.config import config_from_dict

TOY_NET = {"hidden": 16, "num_layers": 1}
DIGITS_NET = {"model_channels": 8, "num_blocks": 1}


def make_weights_differ(run):
    """Rewrite the run's raw weights so that they differ from its EMA weights by construction."""
    state = load_checkpoint(run)
    state["net"] = {k: v * 1.5 + 0.05 if v.is_floating_point() else v
                    for k, v in state["net"].items()}
    save_checkpoint(state, run / "checkpoint.pt")


def nan_copy(run, dest, key="ema"):
    """A copy of ``run`` whose ``key`` weights are all NaN (a diverged run)."""
    shutil.copytree(run, dest)
    state = load_checkpoint(dest)
    state[key] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                  for k, v in state[key].items()}
    save_checkpoint(state, dest / "checkpoint.pt")
    return dest


def raw_denoiser(run):
    """The run's raw weights loaded by hand (not through ``Method.load``)."""
    state = load_checkpoint(run)
    method = get("methods", state["method"])
    config = config_from_dict(method.config_class, state["config"])
    denoiser = method.build_denoiser(config, state["dataset"]["shape"])
    denoiser.load_state_dict(state["net"])
    return denoiser.eval().requires_grad_(False), config


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A 6-iteration EDM on 500 toy points whose raw and EMA weights differ."""
    edm = get("methods", "edm")
    config = edm.configure("toy", iterations=6, batch_size=32, network_kwargs=TOY_NET,
                           dataset_options={"n": 500})
    run = edm.train(config, tmp_path_factory.mktemp("edm") / "run", progress=False)
    make_weights_differ(run)
    return run


@pytest.fixture(scope="module")
def cm_run(tmp_path_factory):
    """A 2-iteration CT run on digits whose raw and EMA weights differ."""
    cm = get("methods", "cm")
    config = cm.configure("digits", mode="ct", iterations=2, batch_size=8,
                          network_kwargs=DIGITS_NET)
    run = cm.train(config, tmp_path_factory.mktemp("cm") / "run", progress=False)
    make_weights_differ(run)
    return run


@pytest.fixture
def digit_png(tmp_path):
    path = tmp_path / "d.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), np.uint8)).save(path)
    return path


@pytest.fixture
def no_sampling(monkeypatch):
    """Any sampling fails the test: errors must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the settings were checked")

    monkeypatch.setattr("zoo.diffusion.samplers.NFECounter.__call__", refuse)


def sample(run, *args, method="edm"):
    return CliRunner().invoke(main, ["sample", method, "--run", str(run), "--n", "6", *args])


def edit(run, *args):
    return CliRunner().invoke(main, ["edit", str(run), *args])


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ output paths

@pytest.mark.parametrize("out, message", [
    ("s", "--out {}: no file extension; accepted: .png, .jpg, .jpeg"),
    ("s.tiff", "--out {}: unknown extension '.tiff'; accepted: .png, .jpg, .jpeg"),
])
def test_sample_out_extension_is_checked_before_sampling(edm_run, tmp_path, no_sampling, out,
                                                         message):
    result = sample(edm_run, "--out", str(tmp_path / out))
    assert result.exit_code == 1 and message.format(tmp_path / out) in result.output
    assert files(tmp_path) == []


def test_samples_out_must_be_npz_and_out_parent_must_be_creatable(edm_run, tmp_path,
                                                                   no_sampling):
    result = sample(edm_run, "--out", str(tmp_path / "s.png"), "--samples-out",
                    str(tmp_path / "s.txt"))
    assert result.exit_code == 1 and "unknown extension '.txt'; accepted: .npz" in result.output
    (tmp_path / "file").write_text("")
    result = sample(edm_run, "--out", str(tmp_path / "file" / "s.png"))
    assert result.exit_code == 1 and "--out: cannot create the folder" in result.output
    assert files(tmp_path) == ["file"]


def test_reported_name_is_the_written_name_and_folders_are_created(edm_run, tmp_path):
    out = tmp_path / "new" / "deeper" / "s.JPG"
    result = sample(edm_run, "--out", str(out), "--steps", "2")
    assert result.exit_code == 0, result.output
    assert f"{out} {out.with_suffix('.npz')}" in result.output
    assert files(tmp_path) == ["new/deeper/s.JPG", "new/deeper/s.npz"]


def test_npz_is_written_before_the_picture(edm_run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full while drawing")

    monkeypatch.setattr(zoo.viz, "save_samples_picture", broken)
    result = sample(edm_run, "--out", str(tmp_path / "s.png"), "--steps", "2")
    assert result.exit_code != 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (6, 2)


# ------------------------------------------------------------------ sampler settings

@pytest.mark.parametrize("args, message", [
    (["--sampler", "edm-stochastic", "--s-churn", "-50"],
     "S_churn (--s-churn) must be a finite number >= 0, got -50.0"),
    (["--sampler", "edm-stochastic", "--s-noise", "nan"],
     "S_noise (--s-noise) must be a finite number >= 0, got nan"),
    (["--sampler", "edm-stochastic", "--s-tmin", "5", "--s-tmax", "1"],
     "S_tmax (--s-tmax) must be >= S_tmin=5.0"),
    (["--s-churn", "5"], "sampler 'heun' takes no option S_churn; its options: (none)"),
])
def test_bad_sampler_settings_are_refused_before_sampling(edm_run, tmp_path, no_sampling, args,
                                                          message):
    result = sample(edm_run, *args, "--out", str(tmp_path / "s.png"))
    assert result.exit_code == 1 and message in result.output, result.output
    assert files(tmp_path) == []


def test_a_sampler_for_another_model_kind_is_refused_before_sampling(edm_run, tmp_path,
                                                                     no_sampling):
    result = sample(edm_run, "--sampler", "consistency", "--out", str(tmp_path / "s.png"))
    assert result.exit_code == 2, result.output  # not among --sampler's choices
    assert "'consistency' is not one of 'ddim', 'deis-3'" in result.output
    edm = get("methods", "edm")
    with pytest.raises(ValueError, match="sampler 'consistency' needs a consistency model, but "
                       "this run is a diffusion model; valid samplers for it: ddim, deis-3, "
                       "dpm-solver\\+\\+2m, dpm-solver-2, dpm-solver-3, edm-stochastic, euler, "
                       "heun, ipndm, rhoab-deis-3"):
        edm.sample(edm.load(edm_run), 2, sampler="consistency")
    assert files(tmp_path) == []


def test_every_method_with_a_sampler_takes_sampler_options_checked_before_sampling(
        cm_run, tmp_path, no_sampling):
    result = sample(cm_run, "--sampler-options", '{"eta": 1}', "--out", str(tmp_path / "s.png"),
                    method="cm")
    assert result.exit_code == 1, result.output
    assert "sampler 'consistency' takes no option eta; its options: sigma_min (float), clip " \
           "(tuple[float, float] | None)" in result.output
    result = sample(cm_run, "--sampler-options", '{"sigma_min": "x"}', "--out",
                    str(tmp_path / "s.png"), method="cm")
    assert result.exit_code == 1 and "option sigma_min must be float, got 'x'" in result.output
    # a diffusion sampler is not among a consistency model's choices
    result = sample(cm_run, "--sampler", "heun", "--out", str(tmp_path / "s.png"), method="cm")
    assert result.exit_code == 2 and "'heun' is not 'consistency'" in result.output
    assert files(tmp_path) == []


@pytest.mark.parametrize("method, kind, samplers", [
    ("cm", "consistency models", ["consistency"]), ("rf", "velocity field (flow)s", ["rf-euler"]),
    ("meanflow", "average-velocity model (MeanFlow)s", ["meanflow"]),
    ("edm", "diffusion models", ["ddim", "deis-3", "dpm-solver++2m", "dpm-solver-2",
                                 "dpm-solver-3", "edm-stochastic", "euler", "heun", "ipndm",
                                 "rhoab-deis-3"]),
])
def test_sampler_choices_are_the_registered_samplers_of_the_methods_kind(method, kind, samplers):
    """Each method's --sampler offers exactly the registered samplers that declare its
    parameterization (and those that declare none)."""
    assert get("methods", method).samplers() == samplers
    flat = " ".join(CliRunner().invoke(main, ["sample", method, "--help"]).output.split())
    assert f"A registered sampler of {kind}: {', '.join(samplers)}" in flat
    assert "--sampler-options JSON" in flat


def test_a_method_without_sampler_choice_offers_none():
    pd = get("methods", "pd")
    assert pd.samplers() == []
    assert "--sampler" not in CliRunner().invoke(main, ["sample", "pd", "--help"]).output
    with pytest.raises(ValueError, match="method 'pd' samples its own way and offers no sampler "
                                         "choice"):
        pd.resolve_sampler("euler")


@pytest.mark.parametrize("sigmas, message", [
    ("80,nan", "--sigmas 80,nan: every σ must be a finite number"),
    ("80,80", "--sigmas 80,80: σ must be strictly decreasing"),
    ("100,1", "--sigmas 100,1: every σ must lie in [sigma_min, sigma_max] = [0.002, 80]; "
              "out of range: 100"),
    ("80,0.0001", "out of range: 0.0001"),
    ("80,x", "--sigmas must be numbers like 80,0.8, got '80,x'"),
])
def test_cm_sigmas_are_checked_before_sampling(cm_run, tmp_path, no_sampling, sigmas, message):
    result = sample(cm_run, "--sigmas", sigmas, "--out", str(tmp_path / "s.png"), method="cm")
    assert result.exit_code == 1 and message in result.output, result.output
    assert files(tmp_path) == []


# ------------------------------------------------------------------ non-finite results

def test_non_finite_samples_are_an_error_naming_the_settings(edm_run, tmp_path):
    out = tmp_path / "s.png"
    result = sample(edm_run, "--sampler", "edm-stochastic", "--s-churn", "10", "--s-noise",
                    "1e30", "--steps", "3", "--out", str(out))
    assert result.exit_code == 1
    assert "6 of 6 results are not finite (NaN or inf), likely caused by the sampling settings " \
           "given: --sampler edm-stochastic, --steps 3, --s-churn 10.0, --s-noise 1e+30" \
           in result.output
    assert f"the raw values are kept in {out.with_suffix('.npz')}" in result.output
    assert not out.exists() and not np.isfinite(np.load(out.with_suffix(".npz"))["samples"]).all()


def test_nan_weights_are_named_and_raw_weights_still_sample(edm_run, tmp_path):
    run = nan_copy(edm_run, tmp_path / "nan")
    result = sample(run, "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert result.exit_code == 1
    assert "the run's EMA weights hold NaN or inf (try --weights raw, or retrain)" in result.output
    assert (tmp_path / "s.npz").exists() and not (tmp_path / "s.png").exists()
    result = sample(run, "--steps", "2", "--weights", "raw", "--out", str(tmp_path / "r.png"))
    assert result.exit_code == 0 and (tmp_path / "r.png").exists(), result.output


# ------------------------------------------------------------------ --weights

def test_sample_weights_raw_gives_what_the_raw_weights_give(edm_run, tmp_path):
    denoiser, config = raw_denoiser(edm_run)
    sigmas = append_zero(karras_sigmas(3, config.sigma_min, config.sigma_max, config.rho))
    expected, _ = generate(denoiser, sample_heun, sigmas, (2,), range(5, 11), distributed=False)
    for weights in ("raw", "ema"):
        result = sample(edm_run, "--steps", "3", "--seed", "5", "--weights", weights, "--out",
                        str(tmp_path / f"{weights}.png"))
        assert result.exit_code == 0, result.output
    raw, ema = (np.load(tmp_path / f"{w}.npz") for w in ("raw", "ema"))
    np.testing.assert_allclose(raw["samples"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ema["samples"], expected.numpy(), atol=1e-3)
    assert json.loads(str(raw["info"]))["weights"] == "raw"


def test_edit_weights_raw_gives_what_the_raw_weights_give(cm_run, digit_png, tmp_path):
    out = tmp_path / "e.png"
    result = edit(cm_run, "--task", "denoise", "--sigma", "0.5", "--input", str(digit_png),
                  "--weights", "raw", "--out", str(out))
    assert result.exit_code == 0, result.output
    f, _ = raw_denoiser(cm_run)
    y = read_image(digit_png, 1, (8, 8))[None]
    expected = f(y, 0.5).clamp(-1, 1)
    saved = np.load(out.with_suffix(".npz"))
    np.testing.assert_allclose(saved["samples"][0, 1], expected[0].numpy(), rtol=1e-5, atol=1e-6)
    assert json.loads(str(saved["info"]))["weights"] == "raw"


def test_bench_weights_raw_rows_measure_the_raw_weights(tmp_path, monkeypatch):
    edm = get("methods", "edm")
    monkeypatch.setitem(zoo_edm.method.PRESETS, "toy", {**zoo_edm.method.PRESETS["toy"],
                        "iterations": 6, "batch_size": 32, "network_kwargs": TOY_NET})
    run = edm.train(edm.configure("toy"), tmp_path / "runs" / "toy" / "edm", progress=False)
    make_weights_differ(run)
    monkeypatch.setattr(edm, "bench_steps", (1,))
    monkeypatch.setattr(edm, "fast_bench", {})
    result = CliRunner().invoke(main, [
        "bench", "--models", "edm", "--dataset", "toy", "--runs-root", str(tmp_path / "runs"),
        "--n", "64", "--batch-size", "32", "--weights", "raw", "--out", str(tmp_path / "out"),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "EDM (Heun) [raw weights]" in result.output
    (row,) = json.loads((tmp_path / "out" / "table.json").read_text())["rows"]
    denoiser, config = raw_denoiser(run)
    x, _ = generate(denoiser, sample_heun, edm.sigmas(config, 1), (2,), range(64),
                    distributed=False)
    expected = zoo_metrics.evaluate(x, load_dataset("toy"), seed=0)["W2"]
    assert row["weights"] == "raw" and row["metrics"]["W2"] == pytest.approx(expected, rel=1e-5)
    report = run_bench(["edm"], "toy", runs_root=tmp_path / "runs", n=64, batch_size=32,
                       out=tmp_path / "ema", progress=False, echo=lambda msg: None)
    assert report.results[0].weights == "ema" and "raw" not in format_table(report)
    assert report.results[0].metrics["W2"] != pytest.approx(expected, rel=1e-3)


# ------------------------------------------------------------------ teacher_weights

def test_distillation_teachers_use_their_teacher_weights(edm_run):
    cm, pd = get("methods", "cm"), get("methods", "pd")
    state = load_checkpoint(edm_run)
    data = load_dataset("toy", n=500)
    common = dict(teacher=str(edm_run), dataset_options={"n": 500}, network_kwargs=TOY_NET)
    for weights, key in (("raw", "net"), ("ema", "ema")):
        config = cm.configure("toy", mode="cd", teacher_weights=weights, **common)
        teacher = cm.load_teacher(config, data).denoiser.state_dict()
        assert all(torch.equal(teacher[k], v) for k, v in state[key].items())
        config = pd.configure("toy", teacher_steps=4, teacher_weights=weights, **common)
        task = pd.make_task(config, data)
        assert all(torch.equal(task.teacher.state_dict()[k], v) for k, v in state[key].items())
        # the student starts from the teacher it learns from
        assert all(torch.equal(task.net.state_dict()[k], v) for k, v in state[key].items())
    assert pd.stage_config(config, 1, edm_run).teacher_weights == "ema"
    for method, extra in ((cm, {"mode": "cd"}), (pd, {})):
        with pytest.raises(ValueError, match="teacher_weights='best' is not one of ema, raw"):
            method.configure("toy", teacher_weights="best", **extra, **common)


# ------------------------------------------------------------------ zoo edit

@pytest.mark.parametrize("sigmas, message", [
    ("80,nan", "--sigmas 80,nan: every σ must be a finite number"),
    ("80,90", "--sigmas 80,90: σ must be strictly decreasing"),
    ("200,1", "out of range: 200"),
    ("80,0.0001", "out of range: 0.0001"),
    ("80,x", "--sigmas must be numbers like 80,0.8, got '80,x'"),
])
def test_edit_sigmas_are_checked_before_editing(cm_run, digit_png, tmp_path, sigmas, message,
                                                no_sampling):
    out = tmp_path / "o" / "e.png"
    result = edit(cm_run, "--task", "inpaint", "--input", str(digit_png), "--mask",
                  str(digit_png), "--sigmas", sigmas, "--out", str(out))
    assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists() and not out.with_suffix(".npz").exists()


def test_edit_out_is_checked_before_editing(cm_run, digit_png, tmp_path, no_sampling):
    result = edit(cm_run, "--task", "denoise", "--sigma", "1", "--input", str(digit_png),
                  "--out", str(tmp_path / "e"))
    assert result.exit_code == 1
    assert "no file extension; accepted: .png, .jpg, .jpeg" in result.output
    (tmp_path / "taken").write_text("")
    result = edit(cm_run, "--task", "denoise", "--sigma", "1", "--input", str(tmp_path / "in"),
                  "--out", str(tmp_path / "taken"))
    assert result.exit_code == 2  # click: the input folder does not exist
    (tmp_path / "in").mkdir()
    shutil.copy(digit_png, tmp_path / "in")
    result = edit(cm_run, "--task", "denoise", "--sigma", "1", "--input", str(tmp_path / "in"),
                  "--out", str(tmp_path / "taken"))
    assert result.exit_code == 1 and "--out: cannot create the folder" in result.output


def test_edit_non_finite_results_are_an_error_and_the_npz_is_kept(cm_run, digit_png, tmp_path):
    run = nan_copy(cm_run, tmp_path / "nan")
    out = tmp_path / "e.png"
    result = edit(run, "--task", "denoise", "--sigma", "1", "--input", str(digit_png), "--out",
                  str(out))
    assert result.exit_code == 1
    assert "1 of 1 results are not finite" in result.output
    assert "EMA weights hold NaN or inf (try --weights raw" in result.output
    assert not out.exists() and out.with_suffix(".npz").exists()


def test_diverged_weights_are_named_as_the_cause_not_the_settings(edm_run, tmp_path):
    """Both weight sets NaN: no advice to try the other; weights scaled by 1e15 (finite, but a
    diverged run): the weights are named, not the sampling settings given."""
    both = nan_copy(nan_copy(edm_run, tmp_path / "both"), tmp_path / "both2", key="net")
    result = sample(both, "--steps", "2", "--out", str(tmp_path / "b.png"))
    assert result.exit_code == 1
    assert "its EMA and raw weights alike: the run diverged" in result.output
    assert "--weights raw" not in result.output
    huge = tmp_path / "huge"
    shutil.copytree(edm_run, huge)
    state = load_checkpoint(huge)
    state["ema"] = {k: v * 1e15 if v.is_floating_point() else v for k, v in state["ema"].items()}
    save_checkpoint(state, huge / "checkpoint.pt")
    result = sample(huge, "--steps", "2", "--out", str(tmp_path / "h.png"))
    assert result.exit_code == 1, result.output
    assert "weights are extreme (largest |w| = " in result.output
    assert "likely caused by the sampling settings" not in result.output


def test_existing_outputs_are_not_replaced_without_overwrite(edm_run, tmp_path, no_sampling):
    out = tmp_path / "s.png"
    out.write_bytes(b"an earlier picture")
    result = sample(edm_run, "--out", str(out))
    assert result.exit_code == 1
    assert f"--out {out} exists; pass --overwrite to replace it" in result.output
    assert out.read_bytes() == b"an earlier picture" and not (tmp_path / "s.npz").exists()
    (tmp_path / "t.npz").write_bytes(b"earlier samples")
    result = sample(edm_run, "--out", str(tmp_path / "t.png"))
    assert result.exit_code == 1 and "--samples-out" in result.output and "exists" in result.output
    result = sample(edm_run, "--out", str(out), "--overwrite")
    assert "exists" not in result.output


def test_sample_streams_batch_by_batch_into_its_npz(edm_run, tmp_path, monkeypatch):
    """`zoo sample` asks the method for one batch at a time and writes each into the .npz (memory
    holds a batch and the picture's share, not all n); the file equals one call's samples."""
    edm = get("methods", "edm")
    real, asked = type(edm).sample, []

    def spy(self, run, n, **kwargs):
        asked.append(n)
        return real(self, run, n, **kwargs)

    monkeypatch.setattr(type(edm), "sample", spy)
    result = sample(edm_run, "--steps", "2", "--batch-size", "4", "--out",
                    str(tmp_path / "s.png"))
    assert result.exit_code == 0, result.output
    assert asked == [4, 2]  # n = 6 in batches of 4
    monkeypatch.undo()
    with np.load(tmp_path / "s.npz") as f:
        streamed, info = f["samples"], json.loads(str(f["info"]))
    whole = edm.sample(edm.load(edm_run), 6, steps=2).x.numpy()
    np.testing.assert_array_equal(streamed, whole)
    assert info["n"] == 6 and info["seeds"] == [0, 5] and info["nfe"] == 3
