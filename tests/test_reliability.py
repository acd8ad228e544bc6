"""Runs users can trust: kills, signals, resume semantics, one writer, snapshots, EMA ramp-up.

Each test reproduces a way a real run loses work or spoils results (pre-emption, a second job in
the same directory, a damaged checkpoint, a short run's EMA) and asserts what the user gets.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_training import TINY as TRAINING_TINY

import zoo.plugins
from zoo.cli import main
from zoo.data import load_dataset
from zoo.training import CheckpointError, NonFiniteLossError, Trainer, load_checkpoint
from zoo.training.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from zoo.training.ema import ema_beta
from zoo.training.rundir import RunLock, RunLockedError
from zoo.training.threads import SMALL_NETWORK_PARAMS, THREADS_ENV, choose_threads

# the trainer tests' tiny run, with an EMA half-life (the ramp-up applies to it) and a row a step
TINY = {**TRAINING_TINY, "ema_rate": 0.0, "ema_halflife_kimg": 0.5, "log_every": 1}
ITERATIONS = 14


def edm():
    return zoo.plugins.get("methods", "edm")


def tiny_config(**overrides):
    return edm().configure("toy", **{**TINY, "iterations": ITERATIONS, **overrides})


def trainer_for(config, run_dir):
    dataset = load_dataset(config.dataset, **config.dataset_options)
    config.method = "edm"
    return Trainer(edm().make_task(config, dataset), config, dataset, run_dir, progress=False)


def assert_same_weights(run_a, run_b):
    a, b = load_checkpoint(run_a), load_checkpoint(run_b)
    assert a["step"] == b["step"]
    for part in ("net", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def loss_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    run = tmp_path_factory.mktemp("straight")
    trainer_for(tiny_config(), run).fit()
    return run


# A child process that trains and SIGKILLs itself at a chosen point: after a step, or inside the
# k-th checkpoint write right before its final rename (the temporary file is complete, and the
# replaced checkpoint has already been linked to checkpoint-prev.pt).
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import zoo.plugins
    from zoo.data import load_dataset
    from zoo.training import Trainer

    run_dir, where, at, settings = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    method = zoo.plugins.get("methods", "edm")
    config = method.configure("toy", **json.loads(settings))
    config.method = "edm"
    data = load_dataset("toy", **config.dataset_options)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if where == "rename":
        real_replace, seen = os.replace, []
        def replace(src, dst):
            if Path(dst).name == "checkpoint.pt":
                seen.append(dst)
                if len(seen) == at:
                    die()
            real_replace(src, dst)
        os.replace = replace
    on_step = (lambda step, loss: die() if step == at else None) if where == "step" else None
    Trainer(method.make_task(config, data), config, data, run_dir, progress=False).fit(
        resume=True, on_step=on_step)
""")


def run_child(run_dir, where, at):
    settings = json.dumps({**TINY, "iterations": ITERATIONS})
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), where, str(at), settings],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("where, at", [
    ("step", 1),     # before the first periodic checkpoint: only the step-0 one exists
    ("step", 6),     # between checkpoints (4 and 8): steps 5-6 are replayed
    ("rename", 2),   # inside the write of the step-4 checkpoint, before its final rename
    ("rename", 3),   # the same for step 8, with checkpoint-prev.pt holding step 4
])
def test_sigkill_anywhere_then_resume_reproduces_the_uninterrupted_run(tmp_path, straight,
                                                                       where, at):
    run = tmp_path / "run"
    run_child(run, where, at)
    if where == "rename":
        # the checkpoint being replaced stays in place until the new one is renamed over it
        assert (run / CHECKPOINT_NAME).exists() or at == 1
        assert list(run.glob("*.tmp")), "the killed write should have left its temporary file"
    trainer_for(tiny_config(), run).fit(resume=True)
    assert_same_weights(straight, run)
    steps = loss_steps(run)
    assert steps == sorted(set(steps)) == list(range(1, ITERATIONS + 1))  # no replayed duplicates
    assert not list(run.glob("*.tmp")), "stale temporary files must be removed on resume"


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight, capsys):
    run = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):  # the run dies at step 9
        trainer_for(tiny_config(), run).fit(on_step=lambda s, _: s == 9 and 1 / 0)
    (run / CHECKPOINT_NAME).write_bytes(b"\0" * 100)  # the latest (step 8) is damaged
    assert load_checkpoint(run / PREVIOUS_NAME)["step"] == 4
    trainer_for(tiny_config(), run).fit(resume=True)
    err = capsys.readouterr().err
    assert "using the previous checkpoint" in err and "from step 4" in err
    assert_same_weights(straight, run)


SIGTERM_CHILD = textwrap.dedent("""
    import sys
    from zoo.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_current_step_and_says_how_to_resume(tmp_path, signum):
    run = tmp_path / "run"
    args = ["train", "edm", "--dataset", "toy", "--run-dir", str(run), "--iterations", "100000",
            "--checkpoint-every", "100000", "--log-every", "1", "--batch-size", "64",
            "--network-kwargs", '{"hidden": 32, "num_layers": 2}', "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, *args], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until it has trained a few steps
        if (run / "log.jsonl").exists() and len(loss_steps(run)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    step = load_checkpoint(run)["step"]
    assert step >= loss_steps(run)[-1] >= 3  # the checkpoint is at the step it stopped at
    assert f"resume with: zoo train edm --run-dir {run} --resume" in err
    result = CliRunner().invoke(main, ["train", "edm", "--run-dir", str(run), "--resume",
                                       "--iterations", str(step + 3), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"from step {step}" in result.output
    assert load_checkpoint(run)["step"] == step + 3


def cli(*args):
    return CliRunner().invoke(main, [*args, "--no-progress"])


def test_resume_keeps_the_runs_own_settings(tmp_path):
    run = str(tmp_path / "rr")
    common = ["--dataset", "toy", "--run-dir", run, "--network-kwargs",
              '{"hidden": 16, "num_layers": 2}', "--dataset-options", '{"n": 500}']
    result = cli("train", "edm", *common, "--iterations", "6", "--lr", "1e-4",
                 "--batch-size", "32", "--checkpoint-every", "2")
    assert result.exit_code == 0, result.output
    # a finished run: nothing re-applied from the preset (12000 iterations, lr 2e-3)
    result = cli("train", "edm", "--run-dir", run, "--resume")
    assert result.exit_code == 0, result.output
    assert "already finished at step 6" in result.output
    config = json.loads((tmp_path / "rr" / "config.json").read_text())
    assert (config["iterations"], config["lr"], config["batch_size"]) == (6, 1e-4, 32)
    # extending it: the overriding flag is named, the rest is the run's
    result = cli("train", "edm", "--run-dir", run, "--resume", "--iterations", "8")
    assert result.exit_code == 0, result.output
    assert "iterations=8 instead of the run's 6" in result.output
    assert "from step 6" in result.output
    state = load_checkpoint(run)
    assert state["step"] == 8 and state["config"]["lr"] == 1e-4
    assert state["config"]["batch_size"] == 32


def test_resume_refuses_run_defining_changes_and_missing_runs(tmp_path):
    run = str(tmp_path / "rr")
    assert cli("train", "edm", "--dataset", "toy", "--run-dir", run, "--iterations", "2",
               "--network-kwargs", '{"hidden": 16, "num_layers": 2}').exit_code == 0
    result = cli("train", "edm", "--run-dir", run, "--resume", "--batch-size", "64")
    assert result.exit_code == 1
    assert "batch_size: run has 512, asked 64" in result.output
    result = cli("train", "edm", "--run-dir", run, "--resume", "--dataset", "digits")
    assert result.exit_code == 1 and "dataset: run has 'toy'" in result.output
    result = cli("train", "edm", "--run-dir", str(tmp_path / "nothing"), "--resume")
    assert result.exit_code == 1 and "there is no run at" in result.output
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("method, setting, value", [
    ("pd", "teacher_steps", 16), ("cm", "mode", "ct"), ("cm", "teacher_weights", "raw"),
    ("edm", "sigma_data", 0.3)])  # EDM's σ_data sets its preconditioning, as ECT's does
def test_method_settings_that_define_a_run_are_refused_on_resume(method, setting, value):
    from zoo.training.config import resume_config

    m = zoo.plugins.get("methods", method)
    saved = m.configure("toy", **({} if method == "edm" else {"teacher": "runs/toy/edm"}))
    saved.method = method
    with pytest.raises(ValueError, match=f"{setting}: run has"):
        resume_config(m.config_class, json.loads(json.dumps(vars(saved))), {setting: value})
    config, changes, _ = resume_config(m.config_class, json.loads(json.dumps(vars(saved))),
                                    {"lr": 1e-5})
    assert changes == [("lr", saved.lr, 1e-5)] and config.lr == 1e-5


def test_a_run_from_before_a_setting_resumes_as_it_was_trained_and_says_so(tmp_path):
    """A run saved before ema_rampup existed trained without a ramp-up: it resumes with
    ema_rampup = 0 (not today's default 0.05) and the resume says so."""
    from zoo.training import save_checkpoint

    run = tmp_path / "run"
    m = edm()
    config = tiny_config(iterations=4)
    config.method = "edm"
    m.train(config, run, progress=False)
    state = load_checkpoint(run)
    del state["config"]["ema_rampup"]
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "format_version")},
                    run / CHECKPOINT_NAME)
    said = []
    m.resume(run, {"iterations": 6}, progress=False, echo=said.append)
    assert any("predates the setting ema_rampup" in line and "ema_rampup=0.0" in line
               for line in said), said
    assert load_checkpoint(run)["config"]["ema_rampup"] == 0.0


def test_a_second_writer_is_refused_and_the_first_completes_untouched(tmp_path, straight):
    run = tmp_path / "run"
    refusals = []

    def intrude(step, loss):
        if step == 5:
            with pytest.raises(RunLockedError, match=f"in use by another zoo process \\(PID "
                                                     f"{os.getpid()}\\)") as exc:
                trainer_for(tiny_config(iterations=30), run).fit(resume=True)
            refusals.append(exc)

    trainer_for(tiny_config(), run).fit(on_step=intrude)
    assert len(refusals) == 1
    assert_same_weights(straight, run)
    assert loss_steps(run) == list(range(1, ITERATIONS + 1))
    with RunLock(run):  # released when the first run ended
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from zoo.training.rundir import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"PID {holder.pid}"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    RunLock(tmp_path).acquire().release()  # no stale lock after kill -9


def test_a_failed_resume_leaves_the_recorded_config_of_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    trainer_for(tiny_config(iterations=4), run).fit()
    trainer = trainer_for(tiny_config(iterations=8, lr=5e-3), run)

    def poison(step, loss):
        with torch.no_grad():
            next(trainer.net.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError):
        trainer.fit(resume=True, on_step=poison)
    config = json.loads((run / "config.json").read_text())
    assert (config["iterations"], config["lr"]) == (4, 1e-3)  # the settings of the kept checkpoint
    assert load_checkpoint(run)["config"]["lr"] == 1e-3


def test_snapshots_hold_the_ema_at_their_step_and_follow_the_retention_rule(tmp_path):
    # batch 64: a snapshot every 0.256 kimg is one every 4 steps, and one at the end; keep 2
    run = tmp_path / "run"
    config = tiny_config(snapshot_every_kimg=0.256, snapshot_keep=2)
    trainer = trainer_for(config, run)
    emas = {}
    trainer.fit(on_step=lambda s, _: emas.update(
        {s: {k: v.clone() for k, v in trainer.ema.state_dict().items()}}))
    names = sorted(p.name for p in (run / "snapshots").iterdir())
    assert names == ["snapshot-step0000012.pt", "snapshot-step0000014.pt"]
    for name, step in zip(names, (12, 14)):
        snap = load_checkpoint(run / "snapshots" / name)
        assert snap["step"] == step and "optimizer" not in snap
        assert all(torch.equal(v, emas[step][k]) for k, v in snap["ema"].items())
    loaded = edm().load(run / "snapshots" / names[0])  # samples like a run
    assert loaded.step == 12
    assert all(torch.equal(v, emas[12][k]) for k, v in loaded.denoiser.state_dict().items())
    result = CliRunner().invoke(main, ["sample", "edm", "--run", str(run / "snapshots" / names[0]),
                                       "--n", "8", "--out", str(tmp_path / "snap.png")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["sample", "edm", "--run", str(run / "snapshots" / names[0]),
                                       "--weights", "raw", "--out", str(tmp_path / "raw.png")])
    assert result.exit_code == 1 and "EMA weights only" in result.output
    # a snapshot is weights only: it cannot be resumed as a training state
    other = tmp_path / "other"
    other.mkdir()
    (other / CHECKPOINT_NAME).write_bytes((run / "snapshots" / names[0]).read_bytes())
    with pytest.raises(CheckpointError, match="weights only"):
        trainer_for(tiny_config(), other).fit(resume=True)


def test_the_ema_follows_edms_ramp_up_formula():
    """β after n images, computed by hand from EDM's training loop: half-life
    min(H, n·r) images, β = 0.5^(batch / half-life)."""
    batch, halflife_kimg, rampup = 128, 50.0, 0.05
    for step in (0, 1, 10, 1000, 10_000):
        n = step * batch
        expected = 0.5 ** (batch / min(halflife_kimg * 1000, n * rampup)) if n else 0.0
        assert ema_beta(0.0, halflife_kimg, batch, rampup, n) == pytest.approx(expected, rel=1e-12)
    assert ema_beta(0.0, halflife_kimg, batch, 0.0, 0) == pytest.approx(0.5 ** (128 / 50_000))
    assert ema_beta(0.9999, halflife_kimg, batch, rampup, 0) == 0.9999  # a fixed rate wins


def test_the_trainers_ema_is_the_hand_folded_average(tmp_path):
    """The EMA after k steps equals Σ folded by hand from the raw weights after each step."""
    config = tiny_config(iterations=5, ema_halflife_kimg=0.2, ema_rampup=0.3)
    trainer = trainer_for(config, tmp_path)
    raw = []
    trainer.fit(on_step=lambda s, _: raw.append({k: v.clone() for k, v in
                                                 trainer.net.state_dict().items()}))
    first = trainer.ema.module.state_dict().keys()
    for key in first:
        folded = None
        for step, weights in enumerate(raw):
            n = step * 64
            half = min(200.0, n * 0.3)
            beta = 0.5 ** (64 / half) if half > 0 else 0.0
            folded = weights[key] if folded is None else beta * folded + (1 - beta) * weights[key]
        torch.testing.assert_close(trainer.ema.state_dict()[key], folded, rtol=1e-5, atol=1e-6)


def score_sde_ema(initial: dict, raws: list[dict], decay: float) -> dict:
    """score_sde's ExponentialMovingAverage (models/ema.py, use_num_updates=True) written out as
    its update reads: num_updates += 1; d = min(decay, (1 + num_updates) / (10 + num_updates));
    s ← s − (1 − d)(s − θ)."""
    shadow, num_updates = {k: v.clone() for k, v in initial.items()}, 0
    for raw in raws:
        num_updates += 1
        d = min(decay, (1 + num_updates) / (10 + num_updates))
        for k in shadow:
            shadow[k] -= (1 - d) * (shadow[k] - raw[k])
    return shadow


def test_ema_num_updates_is_score_sdes_exponential_moving_average(tmp_path):
    """With --ema-num-updates a fixed rate warms up exactly as score_sde's EMA (rectified flow's
    official averaging); the initial weights take part, as there."""
    assert ema_beta(0.999999, 0, 128, num_updates=1) == 2 / 11
    assert ema_beta(0.999999, 0, 128, num_updates=1000) == 1001 / 1010
    assert ema_beta(0.99, 0, 128, num_updates=10_000) == 0.99  # the rate caps the warm-up
    assert ema_beta(0.99, 0, 128, num_updates=0) == 0.99       # off: the plain fixed rate
    config = tiny_config(iterations=6, ema_rate=0.9, ema_num_updates=True)
    trainer = trainer_for(config, tmp_path)
    initial = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    raws = []
    trainer.fit(on_step=lambda s, _: raws.append({k: v.clone() for k, v in
                                                  trainer.net.state_dict().items()}))
    expected = score_sde_ema(initial, raws, 0.9)
    for key, value in expected.items():
        torch.testing.assert_close(trainer.ema.state_dict()[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settings, warns", [
    ({"ema_rate": 0.99}, True),                            # 0.99^14 = 87 % of the init left
    ({"ema_rate": 0.99, "ema_num_updates": True}, False),  # Π (1+n)/(10+n) ≈ 0.001 %
    ({"ema_rate": 0.5}, False),                            # 0.5^14 ≈ 0.006 %
    ({"ema_halflife_kimg": 50.0, "ema_rampup": 0.0}, True),
    ({"ema_halflife_kimg": 50.0, "ema_rampup": 0.05}, False),
])
def test_the_ema_warning_measures_what_is_left_of_the_initialisation(tmp_path, capsys,
                                                                      settings, warns):
    """The warning fires for fixed rates too (a fixed 0.999999 over 1.3M steps keeps 27 % of the
    initialisation although its half-life is shorter than the run)."""
    overrides = {"ema_rate": 0.0, "ema_halflife_kimg": 0.0, **settings}
    trainer_for(tiny_config(**overrides), tmp_path).fit()
    err = capsys.readouterr().err
    assert ("of its evaluation EMA will still be the initial weights" in err) == warns, err


def test_rfs_cifar10_preset_averages_as_the_official_code():
    rf = zoo.plugins.get("methods", "rf")
    for mode in ("train", "reflow"):
        config = rf.configure("cifar10", mode=mode)
        assert config.ema_num_updates, mode
    assert rf.configure("cifar10").ema_rate == 0.999999


def test_warm_up_reaches_the_peak_lr_then_decays_linearly_to_zero(tmp_path):
    trainer = trainer_for(tiny_config(iterations=100, lr=1e-3, lr_warmup=10), tmp_path)
    lrs = [trainer.lr_at(s) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert lrs[0] == pytest.approx(1e-4)
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx(0.5e-3)
    assert lrs[99] == pytest.approx(1e-3 / 90)


def test_thread_policy(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(0, 10_000, "cpu")[0] == 1
    assert choose_threads(3, 10_000, "cpu") == (3, "--threads")
    assert choose_threads(0, SMALL_NETWORK_PARAMS * 2, "cpu")[0] == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "2")
    assert choose_threads(0, 10_000, "cpu") == (2, f"${THREADS_ENV}")
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match="ZOO_THREADS must be a positive integer"):
        choose_threads(0, 10_000, "cpu")


def test_a_short_digits_run_samples_through_its_ema(tmp_path):
    """150 digits iterations: with EDM's ramp-up the EMA weights denoise held-out digits about as
    well as the raw weights. Without it the EMA (half-life 50 kimg, β = 0.99956 a step) would
    still be 94 % the initialisation, which denoises far worse."""
    data = load_dataset("digits")
    held_out = torch.as_tensor(data.x[-256:])
    sigma = torch.full((len(held_out),), 0.5)
    noise = torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0)) * sigma[0]

    def denoising_error(denoiser):
        with torch.no_grad():
            return (denoiser(held_out + noise, sigma) - held_out).square().mean().item()

    config = edm().configure("digits", iterations=150, batch_size=32, checkpoint_every=150,
                             ema_halflife_kimg=50.0)  # the preset as written; its study chose 24
    assert config.ema_rampup == 0.05 and config.ema_halflife_kimg == 50.0
    config.method = "edm"
    run = tmp_path / "run"
    Trainer(edm().make_task(config, data), config, data, run, progress=False).fit()
    ema = denoising_error(edm().load(run).denoiser)
    raw = denoising_error(edm().load(run, ema=False).denoiser)
    init = denoising_error(edm().build_denoiser(config, data.shape).eval())
    assert raw < 0.7 * init  # the raw weights learnt something in 150 steps
    assert ema < 1.2 * raw and ema < 0.7 * init


@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "lr must be a finite number, got inf"),
    (["--p-std", "nan"], "p_std must be a finite number, got nan"),
    (["--sigma-data", "0"], "sigma_data must be > 0, got 0.0"),
    (["--sigma-min", "-1", "--sigma-max", "0"], "sigma_max must be > 0, got 0.0"),
    (["--sigma-min", "-1"], "need 0 <= sigma_min < sigma_max, got sigma_min=-1.0"),
    (["--network-kwargs", '{"hidden": "big"}'],
     "network 'mlp': option hidden must be a positive integer (its default is 256), got 'big'"),
    (["--network-kwargs", '{"hidden": -4}'], "option hidden must be a positive integer"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, flags, message):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "edm", "--dataset", "toy", "--run-dir", str(run),
                                       "--no-progress", *flags])
    assert result.exit_code != 0 and message in result.output, result.output
    assert not run.exists()  # nothing was trained or written


def test_bench_set_values_are_type_checked(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--models", "edm", "--dataset", "toy",
                                       "--train-missing", "--runs-root", str(tmp_path / "runs"),
                                       "--set", "edm.iterations=abc",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "iterations must be an integer, got 'abc'" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_to_a_bench_stops_its_training_children_after_their_checkpoints(tmp_path, jobs):
    """The bench's parent forwards SIGTERM to the runs training in child processes (--jobs 2),
    or its own training checkpoints (--jobs 1), waits for the checkpoints, exits 143 (not 1) and
    prints the command that continues; no process is left."""
    settings = ["--set", "iterations=200000", "--set", "checkpoint_every=100000",
                "--set", 'network_kwargs={"hidden": 16, "num_layers": 1}',
                "--set", "batch_size=32", "--set", "log_every=1000000"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", "bench", "--models", "edm,rf", "--dataset", "toy",
         "--train-missing", "--jobs", str(jobs), "--no-progress", *settings,
         "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    runs = [tmp_path / "runs" / "toy" / name for name in ("edm", "rf")[:jobs]]
    deadline = time.time() + 120
    while time.time() < deadline and not all((r / CHECKPOINT_NAME).exists() for r in runs):
        time.sleep(0.2)
    assert all((r / CHECKPOINT_NAME).exists() for r in runs), bench.stderr
    children = [int((r / ".lock").read_text()) for r in runs]
    time.sleep(1.0)  # some steps past the step-0 checkpoint
    bench.send_signal(signal.SIGTERM)
    _, err = bench.communicate(timeout=120)
    assert bench.returncode == 143, err
    assert "resume with the same command: zoo bench --models edm,rf" in err
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert all(load_checkpoint(r)["step"] > 0 for r in runs)  # each checkpointed where it was


def test_bench_set_continues_an_unfinished_run_with_its_values_and_says_so(tmp_path):
    """`zoo bench --set` on an unfinished run: its settings become resume overrides, and the
    command the bench prints is the one it runs; a setting that defines the run is refused with
    the way out."""
    from zoo import bench as bench_module
    from zoo.bench.train import train_one

    run = tmp_path / "runs" / "toy" / "edm"
    with pytest.raises(ZeroDivisionError):  # the run dies at step 9 of 14 (checkpoint at 8)
        trainer_for(tiny_config(), run).fit(on_step=lambda s, _: s == 9 and 1 / 0)
    methods = {"edm": edm()}
    data = load_dataset("toy")
    with pytest.raises(bench_module.BenchError) as info:
        bench_module.prepare_runs(methods, "toy", data, tmp_path / "runs", train_missing=False,
                                  device="cpu", progress=False,
                                  settings={"edm": {"lr": 0.002}})
    assert f"`zoo train edm --run-dir {run} --resume --lr 0.002`" in str(info.value)
    assert bench_module.resume_overrides(edm(), run, "edm", {None: {"lr": 0.002}}) == \
        {"lr": 0.002}
    with pytest.raises(bench_module.BenchError, match=rf"--set batch_size: {run} is an "
                       r"unfinished edm run .* \(mv "):
        bench_module.resume_overrides(edm(), run, "edm", {"edm": {"batch_size": 16}})
    said = []
    train_one(edm(), tiny_config(), run, {"lr": 0.002}, progress=False,
                            echo=said.append)
    assert load_checkpoint(run)["config"]["lr"] == 0.002
    assert any("resuming with lr=0.002" in line for line in said), said


def test_resume_removes_the_temporary_files_of_a_killed_grid_write(tmp_path):
    from zoo.training.rundir import remove_stale_temporaries

    (tmp_path / "samples").mkdir(parents=True)
    stale = [tmp_path / "checkpoint.pt12ab.tmp",
             tmp_path / "samples" / ".grid-step0000010.x1y2.png"]
    kept = tmp_path / "samples" / "grid-step0000010.png"
    for path in [*stale, kept]:
        path.write_bytes(b"")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert kept.exists() and not any(p.exists() for p in stale)


def test_the_consistency_sampler_refuses_a_negative_sigma_min_before_any_evaluation():
    from zoo.diffusion.samplers import run_sampler, sample_consistency

    def never(x, sigma, class_labels=None):
        raise AssertionError("the network was evaluated")

    with pytest.raises(ValueError, match="option sigma_min must be a finite number >= 0"):
        run_sampler(sample_consistency, never, torch.zeros(2, 2), [80.0, 0.8], sigma_min=-1.0)


def test_the_first_log_row_after_a_resume_averages_its_whole_window(tmp_path):
    """Rows every 4 steps, checkpoints every 3: a run resumed from step 6 logs at step 8 the mean
    loss of steps 5-8, the same number as the uninterrupted run (not the mean of 7-8 alone)."""
    settings = dict(iterations=12, log_every=4, checkpoint_every=3)
    trainer_for(tiny_config(**settings), tmp_path / "straight").fit()
    run = tmp_path / "run"
    with pytest.raises(ZeroDivisionError):
        trainer_for(tiny_config(**settings), run).fit(on_step=lambda s, _: s == 7 and 1 / 0)
    trainer_for(tiny_config(**settings), run).fit(resume=True)

    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    assert losses(run) == losses(tmp_path / "straight") and set(losses(run)) == {4, 8, 12}


def test_an_unwritable_run_dir_is_one_line_not_a_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["train", "edm", "--dataset", "toy", "--iterations", "2",
                                       "--run-dir", str(blocker / "run"), "--no-progress"])
    assert result.exit_code == 1
    assert "Error: " in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2, result.output


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_the_zoo_command_says_so_when_stopped_while_importing(delay):
    """The `zoo` entry point installs its SIGTERM handler before importing torch and the
    plugins: a job stopped in those seconds exits 143 with a message, not silently."""
    script = Path(sys.executable).parent / "zoo"
    if not script.exists():
        pytest.skip("the zoo console script is not installed beside this Python")
    proc = subprocess.Popen([str(script), "plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # the interpreter is up; torch, numpy or the plugins are importing
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "zoo: SIGTERM outside training: stopped at once" in err


def test_a_run_resumes_from_another_directory_and_follows_a_moved_dataset(tmp_path,
                                                                         monkeypatch):
    """Started with relative paths (data folder, run directory, teacher) from one directory, a run
    records them absolute and resumes from another; its data, moved, is pointed to again with
    --dataset-options (the checkpoint's checksum still refuses other data)."""
    import numpy as np
    from PIL import Image

    home = tmp_path / "home"
    (home / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            home / "imgs" / f"{i}.png")
    net = '{"model_channels": 8, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": []}'
    common = ["--network-kwargs", net, "--batch-size", "4", "--no-progress",
              "--checkpoint-every", "2"]
    monkeypatch.chdir(home)
    result = CliRunner().invoke(main, ["train", "edm", "--dataset", "folder", "--dataset-options",
                                       '{"path": "imgs", "resolution": 8}', "--run-dir", "run",
                                       "--iterations", "2", *common])
    assert result.exit_code == 0, result.output
    saved = json.loads((home / "run" / "config.json").read_text())
    assert saved["dataset_options"]["path"] == str(home / "imgs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["train", "edm", "--run-dir", str(home / "run"),
                                       "--resume", "--iterations", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(home / "run")["step"] == 4
    (home / "imgs").rename(tmp_path / "moved")
    moved = json.dumps({"path": str(tmp_path / "moved"), "resolution": 8})
    result = CliRunner().invoke(main, ["train", "edm", "--run-dir", str(home / "run"),
                                       "--resume", "--iterations", "6", "--no-progress",
                                       "--dataset-options", moved])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(home / "run")["step"] == 6
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        tmp_path / "moved" / "0.png")  # other data at the same place: refused by its checksum
    result = CliRunner().invoke(main, ["train", "edm", "--run-dir", str(home / "run"),
                                       "--resume", "--iterations", "8", "--no-progress",
                                       "--dataset-options", moved])
    assert result.exit_code == 1 and "different data" in result.output, result.output
    # a distillation teacher given relative is recorded absolute
    monkeypatch.chdir(home)
    cm = zoo.plugins.get("methods", "cm")
    config = cm.configure("toy", teacher="teacher")
    from zoo.training.config import resolve_paths

    resolve_paths(config)
    assert config.teacher == str(home / "teacher")


@pytest.mark.parametrize("warmup, warns", [(40, True), (14, True), (10, False), (0, False)])
def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path, capsys, warmup, warns):
    """The cifar10 presets' warm-ups outlast a short trial: its lr never reaches the peak."""
    config = tiny_config(lr_warmup=warmup, iterations=14)
    trainer_for(config, tmp_path).fit()
    err = capsys.readouterr().err
    assert ("learning-rate warm-up is longer than the 14 iterations" in err) == warns, err
    if warns:
        assert f"the lr ends at {config.lr * 14 / warmup:.3g}" in err


def test_a_batch_jobs_log_gets_one_plain_line_per_log_row_with_an_eta(tmp_path, capsys):
    """Without a terminal (a batch job's log file) there is no progress bar and its carriage
    returns, but one line per log row; log.jsonl rows carry the ETA."""
    config = tiny_config(iterations=6, log_every=2)
    trainer = trainer_for(config, tmp_path)
    trainer.progress = True
    trainer.fit()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("edm step ")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"], err
    assert all(" eta " in line for line in lines) and "\r" not in err
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()][1:]
    assert rows[-1]["eta_s"] == 0 and rows[0]["eta_s"] > 0


def test_files_zoo_writes_take_the_users_umask_like_config_json(tmp_path):
    """Checkpoints, grids, samples and exports are written through temporary files renamed into
    place; they get the mode of any file the user writes (0666 less the umask), not 0600."""
    from zoo.export import export_safetensors

    old = os.umask(0o027)
    try:
        run = zoo.plugins.get("methods", "edm").train(
            tiny_config(iterations=2, sample_every_kimg=0.064), tmp_path / "run", progress=False)
        result = CliRunner().invoke(main, ["sample", "edm", "--run", str(run), "--n", "8",
                                           "--steps", "2", "--out", str(tmp_path / "s.png")])
        assert result.exit_code == 0, result.output
        export_safetensors(run, tmp_path / "w.safetensors")
        files = [run / "checkpoint.pt", run / "config.json", tmp_path / "s.png",
                 tmp_path / "s.npz", tmp_path / "w.safetensors",
                 *sorted((run / "samples").glob("*.png"))]
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
            f.name: oct(0o640) for f in files}
    finally:
        os.umask(old)


def test_runs_of_two_image_folders_default_to_two_directories(tmp_path):
    edm = zoo.plugins.get("methods", "edm")
    dirs = {edm.default_run_dir(edm.configure("folder", dataset_options={"path": str(p)}))
            for p in (tmp_path / "flowers", tmp_path / "faces")}
    assert dirs == {Path("runs/folder-flowers/edm"), Path("runs/folder-faces/edm")}
    assert edm.default_run_dir(edm.configure("toy")) == Path("runs/toy/edm")


@pytest.mark.parametrize("name", ["edm", "cm", "rf", "meanflow", "ect", "scm"])
def test_bench_rows_of_a_folder_without_a_run_name_it(tmp_path, name):
    """A folder with nothing trained in it gives no rows silently made of defaults, and no bare
    FileNotFoundError: the error names the folder and the missing config.json; PD's plan has no
    stages there, so it gives no rows."""
    with pytest.raises(CheckpointError, match=rf"{tmp_path}.*no config\.json"):
        zoo.plugins.get("methods", name).bench_rows(tmp_path)
    assert zoo.plugins.get("methods", "pd").bench_rows(tmp_path) == []
