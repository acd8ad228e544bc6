"""Telemetry of long runs: log rows (grad norm, a method's scalars), TensorBoard through its
writer, sample grids and metrics during training, and ``zoo train --dry-run``."""

import json
import math
import sys
import time
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from interrupt import Killed, kill_at
from PIL import Image

import zoo.plugins
import zoo.training.monitor as monitor_module
from zoo.cli import main
from zoo.data import load_dataset
from zoo.metrics import evaluate
from zoo.nets import count_parameters
from zoo.training import load_checkpoint
from zoo.viz import save_samples_picture

TOY = dict(network_kwargs={"hidden": 32, "num_layers": 2}, batch_size=64, lr=1e-3,
           dataset_options={"n": 2000}, checkpoint_every=4, log_every=2)


def method(name):
    return zoo.plugins.get("methods", name)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def trainer_for(name, run_dir, **settings):
    m = method(name)
    config = m.configure("toy", **{**TOY, **settings})
    config.method = name
    data = load_dataset("toy", **config.dataset_options)
    return m.make_trainer(m.make_task(config, data), config, data, run_dir, progress=False)


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])
def test_log_rows_carry_the_gradient_norm_before_clipping(tmp_path, monkeypatch, grad_clip):
    trainer = trainer_for("edm", tmp_path, iterations=6, grad_clip=grad_clip)
    params = [p for p in trainer.net.parameters() if p.requires_grad]
    norms = {}

    def independent():
        return torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item()

    real_step = trainer.optimizer.step

    def spy_step(*args, **kwargs):  # grads as the optimiser gets them (clipped, if asked)
        norms[trainer.step + 1] = independent()
        return real_step(*args, **kwargs)

    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norms[trainer.step + 1] = independent()  # before clipping
        return real_clip(parameters, max_norm, *args, **kwargs)

    if grad_clip:
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    else:
        monkeypatch.setattr(trainer.optimizer, "step", spy_step)
    trainer.fit()
    logged = [r for r in rows(tmp_path / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    for r in logged:
        assert r["grad_norm"] == pytest.approx(norms[r["step"]], rel=1e-5)
        if grad_clip:
            assert r["grad_norm"] > grad_clip  # the clip was active: the norm is the unclipped one


@pytest.mark.parametrize("form", ["paper", "code"])
def test_ct_log_rows_carry_n_and_mu_of_the_papers_schedule(tmp_path, form):
    K, s0, s1, mu0 = 12, 2, 10, 0.9
    config = method("cm").configure("toy", mode="ct", **{**TOY, "log_every": 3}, iterations=K,
                                    s0=s0, s1=s1, mu0=mu0, ct_mu_form=form)
    method("cm").train(config, tmp_path, progress=False)
    logged = [r for r in rows(tmp_path / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == [3, 6, 9, 12]
    for r in logged:
        k = r["step"] - 1  # a row describes the last step of its window, like its lr
        n = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
        mu = math.exp(s0 * math.log(mu0) / (n if form == "paper" else n - 1))
        assert r["num_scales"] == n and r["target_ema"] == pytest.approx(mu, rel=1e-12)
    assert logged[-1]["num_scales"] > logged[0]["num_scales"]  # the schedule moved


class FakeWriter:
    """Stands in for torch's SummaryWriter (tensorboard is an optional dependency)."""

    made = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars, self.images, self.closed = {}, {}, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, {})[step] = value

    def add_image(self, tag, image, step, dataformats):
        assert dataformats == "HWC"
        self.images[step] = image

    def close(self):
        self.closed = True


def test_tensorboard_gets_the_log_rows_grids_and_metrics(tmp_path, monkeypatch):
    FakeWriter.made = []
    monkeypatch.setattr(monitor_module, "summary_writer_class", lambda: FakeWriter)
    trainer_for("edm", tmp_path, iterations=4, tensorboard=True, sample_every_kimg=0.128,
                eval_every_kimg=0.256, eval_n=100, sample_n=50).fit()
    (writer,) = FakeWriter.made
    assert writer.closed and writer.log_dir == str(tmp_path / "tensorboard")
    assert writer.purge_step == 0
    for r in rows(tmp_path / "log.jsonl")[1:]:
        for name in ("loss", "lr", "grad_norm", "samples_per_s"):
            assert writer.scalars[f"train/{name}"][r["step"]] == r[name]
    (m,) = rows(tmp_path / "metrics.jsonl")
    assert writer.scalars["eval/W2"] == {4: m["W2"]}
    assert sorted(writer.images) == [2, 4]
    png = np.asarray(Image.open(tmp_path / "samples" / "grid-step0000004.png").convert("RGB"))
    np.testing.assert_array_equal(writer.images[4], png)


def test_tensorboard_missing_is_a_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        monitor_module.summary_writer_class()
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "edm", "--run-dir", str(run), "--tensorboard",
                                       "--iterations", "2", "--no-progress"])
    assert result.exit_code == 1 and "pip install tensorboard" in result.output
    assert not run.exists()


def test_sample_grids_at_their_steps_match_the_ema_and_survive_a_resume(tmp_path):
    settings = dict(mode="ct", iterations=8, sample_every_kimg=0.128, sample_n=16)

    def train(run_dir, **kw):
        config = method("cm").configure("toy", **{**TOY, **settings})
        return method("cm").train(config, run_dir, progress=False, **kw)

    train(tmp_path / "straight")
    with pytest.raises(Killed):
        train(tmp_path / "resumed", on_step=kill_at(5))
    assert load_checkpoint(tmp_path / "resumed")["step"] == 4
    train(tmp_path / "resumed", resume=True)
    names = [f"grid-step{s:07d}.png" for s in (2, 4, 6, 8)]
    for run in ("straight", "resumed"):
        assert sorted(p.name for p in (tmp_path / run / "samples").iterdir()) == names
    for name in names:
        assert ((tmp_path / "straight" / "samples" / name).read_bytes()
                == (tmp_path / "resumed" / "samples" / name).read_bytes())
    # the last grid: seeds 0..15 of the final EMA weights, as `zoo sample` draws them
    run = method("cm").load(tmp_path / "straight")
    x = method("cm").sample(run, 16, seed=0).x
    ours = save_samples_picture(x, "points", tmp_path / "ours.png", title="step 8")
    assert ours.read_bytes() == (tmp_path / "straight" / "samples" / names[-1]).read_bytes()


def test_eval_every_writes_finite_metrics_at_its_steps_and_resumes_cleanly(tmp_path):
    def trainer():
        return trainer_for("edm", tmp_path, iterations=6, eval_every_kimg=0.128, eval_n=100)

    with pytest.raises(Killed):
        trainer().fit(on_step=kill_at(6))  # measured step 6, but checkpointed step 4 only
    assert [r["step"] for r in rows(tmp_path / "metrics.jsonl")] == [2, 4, 6]
    trainer().fit(resume=True)
    measured = rows(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in measured] == [2, 4, 6]
    for r in measured:
        assert r["n"] == 100 and r["kimg"] == r["step"] * 64 / 1000
        assert all(math.isfinite(r[k]) for k in ("W2", "W2 floor", "seconds"))
    # the last row: the default metrics of seeds 0..99 from the final EMA weights
    run = method("edm").load(tmp_path)
    x = method("edm").sample(run, 100, seed=0).x
    expected = evaluate(x, load_dataset("toy", n=2000))
    assert measured[-1]["W2"] == pytest.approx(expected["W2"], rel=1e-6)


def test_dry_run_writes_nothing_and_reports_what_the_run_would_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--dataset", "toy", "--mode", "ct", "--iterations", "1000", "--batch-size", "32",
             "--network-kwargs", '{"hidden": 24, "num_layers": 2}', "--dataset-options",
             '{"n": 500}', "--no-progress"]
    result = CliRunner().invoke(main, ["train", "cm", *flags, "--dry-run", "--time-steps", "3"])
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/ root, nothing
    lines = result.output.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("run directory:"))
    settings = json.loads("\n".join(lines[1:end]))
    values = dict(line.split(": ", 1) for line in lines[end:] if ": " in line)
    assert values["missing"].startswith("nothing")  # CT from nothing: no teacher, L2
    cm = method("cm")
    config = cm.configure("toy", mode="ct", iterations=1000, batch_size=32,
                          network_kwargs={"hidden": 24, "num_layers": 2})
    assert int(values["parameters"].replace(",", "")) == count_parameters(
        cm.build_net(config, (2,)))
    rate = float(values["samples/s"].split()[0].replace(",", ""))
    assert rate > 0
    # the settings are those the real run records in its config.json
    run = tmp_path / "real"
    result = CliRunner().invoke(main, ["train", "cm", *flags, "--iterations", "2",
                                       "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert settings == {**json.loads((run / "config.json").read_text()), "iterations": 1000}


def test_eval_n_below_what_a_default_metric_measures_is_refused_before_training(tmp_path):
    m = method("edm")
    config = m.configure("digits", iterations=4, eval_every_kimg=0.128, eval_n=100)
    config.method = "edm"
    data = load_dataset("digits")
    with pytest.raises(ValueError, match=r"eval_n=100 .*fdinf-digits needs 297.*eval_n >= 297"):
        m.make_trainer(m.make_task(config, data), config, data, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
    config.eval_n = 297  # the held-out split's size is enough
    m.make_trainer(m.make_task(config, data), config, data, tmp_path / "ok", progress=False)


def test_a_dry_run_needs_no_data_writes_nothing_and_prints_the_settings_first(tmp_path,
                                                                           monkeypatch):
    """The CIFAR-10 preset on a machine without CIFAR-10: the settings in seconds, no data read
    or cached, nothing written; what is missing (LPIPS's VGG16 weights, the teacher) is listed
    and the command fails, as training would before its first step."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path / "data"))  # no CIFAR-10 here
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGG16 weights either
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["train", "cm", "--dataset", "cifar10", "--dry-run",
                                       "--network-kwargs", '{"model_channels": 16}'])
    assert time.perf_counter() - started < 20
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("run directory:"))
    settings = json.loads("\n".join(lines[1:end]))
    assert settings["mode"] == "cd" and settings["distance"] == "lpips"
    assert settings["network_kwargs"]["model_channels"] == 16  # merged into the preset's
    assert settings["network_kwargs"]["dropout"] == method("cm").preset("cifar10").network_kwargs[
        "dropout"]
    missing = [line for line in lines if line.startswith("missing:")]
    assert any("VGG16 ImageNet weights" in m for m in missing), result.output
    assert any("teacher run runs/cifar10/edm has no checkpoint" in m for m in missing)
    assert "2 thing(s) the run needs are missing" in result.output
    assert list(tmp_path.iterdir()) == []  # no data cache, no run, no torch hub folder


def test_a_reflow_dry_run_without_its_1rf_run_fails_and_reports_the_pairs_cost(tmp_path):
    result = CliRunner().invoke(main, ["train", "rf", "--dataset", "toy", "--mode", "reflow",
                                       "--dry-run", "--teacher", str(tmp_path / "rf")])
    assert result.exit_code == 1, result.output
    assert f"the teacher run {tmp_path / 'rf'} has no checkpoint" in result.output
    config = method("rf").configure("toy", mode="reflow")
    pairs = config.reflow_pairs * config.reflow_steps
    assert f"reflow pairs: {pairs:,} network evaluations" in result.output


def test_zoo_train_refuses_a_missing_asset_before_its_first_step(tmp_path, monkeypatch):
    """--eval-every-kimg on data measured by FID without the Inception weights, and a CD run
    whose teacher is missing: refused with every missing file named, no run written."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ZOO_INCEPTION_WEIGHTS", raising=False)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "edm", "--dataset", "folder", "--dataset-options",
        json.dumps({"path": str(images)}), "--iterations", "2", "--eval-every-kimg", "0.001",
        "--network-kwargs", '{"model_channels": 8, "channel_mult": [1], "num_blocks": 1}',
        "--run-dir", str(run), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "--eval-every-kimg measures FID" in result.output and "Inception" in result.output
    assert "--inception-weights" not in result.output  # a flag zoo train does not have
    assert not run.exists()
    result = CliRunner().invoke(main, ["train", "cm", "--dataset", "toy", "--teacher",
                                       str(tmp_path / "edm"), "--run-dir", str(run)])
    assert result.exit_code == 1 and f"teacher run {tmp_path / 'edm'} has no" in result.output
    assert not run.exists()


class FakeWandb:
    """The part of the wandb package zoo uses, recording what it is given."""

    runs: list = []

    class Image:
        def __init__(self, path):
            self.path = path

    @classmethod
    def init(cls, **options):
        run = types.SimpleNamespace(options=options, logged=[], finished=False)
        run.log = lambda data, step: run.logged.append((step, data))
        run.finish = lambda: setattr(run, "finished", True)
        cls.runs.append(run)
        return run


def test_weights_and_biases_gets_the_log_rows_grids_and_continues_on_resume(tmp_path,
                                                                           monkeypatch):
    FakeWandb.runs = []
    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    edm = method("edm")
    config = edm.configure("toy", iterations=4, log_every=2, checkpoint_every=2,
                           sample_every_kimg=0.256, wandb_project="zoo-test",
                           network_kwargs={"hidden": 16, "num_layers": 1}, batch_size=128,
                           dataset_options={"n": 500})
    run_dir = edm.train(config, tmp_path / "run", progress=False)
    (first,) = FakeWandb.runs
    assert first.finished and first.options["project"] == "zoo-test"
    assert first.options["config"]["lr"] == config.lr and first.options["resume"] == "allow"
    logged = {step: data for step, data in first.logged if "train/loss" in data}
    for row in rows(run_dir / "log.jsonl")[1:]:
        assert logged[row["step"]]["train/loss"] == row["loss"]
    grids = [data["samples"].path for _, data in first.logged if "samples" in data]
    assert grids == [str(run_dir / "samples" / "grid-step0000002.png"),
                     str(run_dir / "samples" / "grid-step0000004.png")]
    edm.resume(run_dir, {"iterations": 6}, progress=False, echo=lambda m: None)
    assert FakeWandb.runs[1].options["id"] == first.options["id"]  # the same W&B run goes on
    monkeypatch.undo()  # now as if wandb were not installed
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(FileNotFoundError, match="pip install wandb"):
        edm.train(edm.configure("toy", wandb_project="x"), tmp_path / "no", progress=False)
    assert not (tmp_path / "no").exists()
