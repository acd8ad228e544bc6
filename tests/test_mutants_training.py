"""The batch loader, checkpoints and the trainer's schedule against hand computations of what
their docs promise, written against cosmic-ray's survivors (issue 16; docs/testing.md)."""

import json
import time

import pytest
import torch
from interrupt import Killed, kill_at
from test_mutants import trainer_for

from zoo.data import BatchLoader
from zoo.data.datasets import Dataset
from zoo.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)


def dataset(n, kind="points", labels=True):
    """Sample i is the value i (images: i at every pixel but a marker at the left edge)."""
    if kind == "image":
        x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).repeat(1, 1, 2, 3)
        x[:, :, :, 0] = -1  # the left column marks a flip
    else:
        x = torch.arange(n, dtype=torch.float32).view(n, 1)
    y = torch.arange(n) % 3 if labels else None
    return Dataset("hand", x, y, "0", kind, num_classes=3 if labels else 0)


def hand_stream(n, seed, positions, hflip=False):
    """Indices (and flips) at stream positions: epoch e is randperm(n) from the generator seeded
    seed·1_000_003 + e, its flips torch.rand(n) < 1/2 drawn after it (the loader's docstring)."""
    out, flips = [], []
    for p in positions:
        e = p // n
        g = torch.Generator().manual_seed(seed * 1_000_003 + e)
        order = torch.randperm(n, generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        out.append(order[p - e * n].item())
        flips.append(bool(flip[p - e * n]) if hflip else False)
    return out, flips


@pytest.mark.parametrize("n,batch,world", [(10, 4, 1), (10, 4, 2), (3, 8, 4), (7, 7, 1)])
def test_batches_are_the_documented_stream_positions(n, batch, world):
    ds = dataset(n)
    for rank in range(world):
        loader = BatchLoader(ds, batch, seed=5, rank=rank, world_size=world)
        local = batch // world
        for step in (0, 1, 2, 5):
            start = step * batch + rank * local
            indices, _ = hand_stream(n, 5, range(start, start + local))
            x, y = loader.batch_at(step)
            assert x.flatten().tolist() == indices
            assert y.tolist() == [i % 3 for i in indices]


def test_flips_are_drawn_after_the_permutation_from_the_same_generator():
    ds = dataset(6, "image", labels=False)
    loader = BatchLoader(ds, 4, seed=2, hflip=True)
    for step in range(4):
        indices, flips = hand_stream(6, 2, range(4 * step, 4 * step + 4), hflip=True)
        x, y = loader.batch_at(step)
        assert y is None
        for row, i, flip in zip(x, indices, flips):
            expected = ds.x[i].flip(-1) if flip else ds.x[i]
            assert torch.equal(row, expected)


def test_iteration_and_resume_follow_the_step():
    ds = dataset(9)
    loader = BatchLoader(ds, 4, seed=1)
    first = [next(loader)[0] for _ in range(3)]
    assert loader.state_dict() == {"step": 3, "seed": 1, "batch_size": 4}
    resumed = BatchLoader(ds, 4, seed=1)
    resumed.load_state_dict({"step": 1, "seed": 1, "batch_size": 4})
    assert torch.equal(next(resumed)[0], first[1])
    for key, value in (("seed", 2), ("batch_size", 8)):
        with pytest.raises(ValueError, match=f"loader state has {key}={value} but this loader"):
            resumed.load_state_dict({"step": 0, "seed": 1, "batch_size": 4, key: value})


def test_loader_refuses_bad_settings():
    ds = dataset(4)
    bad = [({"batch_size": 0}, "batch_size must be >= 1"),
           ({"world_size": 0}, "rank 0 of 0"), ({"rank": 2, "world_size": 2}, "rank 2 of 2"),
           ({"rank": -1, "world_size": 2}, "rank -1 of 2"),
           ({"batch_size": 3, "world_size": 2}, "3 is not divisible by world_size 2"),
           ({"hflip": True}, "hflip is for images")]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            BatchLoader(ds, **{"batch_size": 4, **kw})
    audio = Dataset("hand", torch.zeros(4, 1, 8), None, "0", "audio")  # any kind but images
    with pytest.raises(ValueError, match="hflip is for images; dataset 'hand' holds audio"):
        BatchLoader(audio, 2, hflip=True)
    BatchLoader(ds, 1)  # one sample a batch, rank 1 of 2: fine
    BatchLoader(ds, 2, rank=1, world_size=2)
    with pytest.raises(ValueError, match="is empty"):
        BatchLoader(dataset(0), 1)


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_keeps_the_replaced_file_as_previous_and_falls_back_to_it(tmp_path):
    latest, previous = tmp_path / "checkpoint.pt", tmp_path / "checkpoint-prev.pt"
    save_checkpoint({"step": 1}, latest, previous=previous)
    assert not previous.exists()  # nothing replaced yet
    save_checkpoint({"step": 2}, latest, previous=previous)
    assert torch.load(previous, weights_only=True)["step"] == 1
    state = load_checkpoint(tmp_path)  # a folder means its checkpoint.pt
    assert (state["step"], state["format"], state["format_version"]) == (2, "zoo-checkpoint", 1)
    assert load_latest_checkpoint(tmp_path) == (state, latest, None)
    latest.write_bytes(b"damaged")
    state, path, note = load_latest_checkpoint(tmp_path)
    assert (state["step"], path) == (1, previous)
    assert note.startswith("cannot read checkpoint") and note.endswith(
        f"; using the previous checkpoint {previous} instead")
    previous.unlink()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_latest_checkpoint(tmp_path)


def test_load_checkpoint_refuses_what_is_not_a_zoo_checkpoint_of_this_version(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    for state, message in (({"step": 1}, "is not a zoo checkpoint"), ([1, 2], "not a zoo"),
                           ({"format": "zoo-checkpoint", "format_version": 2},
                            "has checkpoint format version 2, this zoo reads version 1"),
                           ({"format": "zoo-checkpoint", "format_version": 0}, "version 0")):
        torch.save(state, tmp_path / "x.pt")
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / "x.pt")


# ------------------------------------------------------------------ the trainer's schedule


def test_intervals_end_where_the_sample_count_crosses_a_multiple_and_at_the_last_step(tmp_path):
    """Batch 32, every 0.1 kimg = 100 samples, 12 iterations: 32·s crosses 100, 200, 300 at
    s = 4, 7, 10 (128, 224, 320), and s = 12 is the last step; every 0 kimg: never."""
    trainer = trainer_for(tmp_path, iterations=12)
    due = []
    for step in range(1, 13):
        trainer.step = step
        if trainer._due(0.1):
            due.append(step)
        assert not trainer._due(0)
    assert due == [4, 7, 10, 12]


def test_batch_noise_of_a_rank_is_its_slice_of_the_global_batchs_draws():
    """Each rank's numbers are its contiguous share of what one process draws for the global
    batch (BatchNoise's docstring), for every kind of draw."""
    from zoo.training import BatchNoise

    whole = BatchNoise(3, 7, 8)
    draws = [whole.randn(2), whole.rand(), whole.randint(0, 5)]
    for rank in range(2):
        part = BatchNoise(3, 7, 8, rank=rank, world_size=2)
        rows = slice(4 * rank, 4 * rank + 4)
        for got, full in zip([part.randn(2), part.rand(), part.randint(0, 5)], draws):
            assert torch.equal(got, full[rows])


def test_throughput_is_the_timed_steps_samples_over_their_seconds(tmp_path, monkeypatch):
    """samples/s = steps·batch / (seconds of the timed steps), on a clock that reads 100 s when
    the timed steps start and 102 s when they end."""
    import zoo.training.trainer as trainer_module

    trainer = trainer_for(tmp_path, iterations=5)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: next(clock))
    assert trainer.throughput(steps=3, warmup=1) == 3 * 32 / 2.0


def test_learning_rate_warms_up_linearly_then_decays_linearly_to_zero(tmp_path):
    """lr·(s+1)/W for s < W = 4, then lr·(K − s)/(K − W) for K = 10 (the docstring's schedule)."""
    trainer = trainer_for(tmp_path, iterations=10, lr=0.5, lr_warmup=4, lr_decay="linear")
    expected = [0.5 * (s + 1) / 4 for s in range(4)] + [0.5 * (10 - s) / 6 for s in range(4, 10)]
    assert [trainer.lr_at(s) for s in range(10)] == pytest.approx(expected, rel=1e-12)


def test_only_rank_zero_speaks(tmp_path):
    said = []
    trainer = trainer_for(tmp_path, iterations=1)
    trainer._echo = said.append
    trainer.echo("from rank 0")
    trainer.rank = 1
    trainer.echo("from rank 1")
    assert said == ["from rank 0"]


def logged_steps(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return rows, [r["step"] for r in rows if "loss" in r]


def test_a_resumed_run_logs_each_step_once_and_its_rate_counts_samples(tmp_path):
    """Killed after step 4 with the checkpoint at 3: the resume drops the killed run's row of
    step 4 and logs it again, so steps 1..6 appear once each; the logged samples/s is at least
    the samples of its window over the whole call's wall time (measured here)."""

    with pytest.raises(Killed):
        trainer_for(tmp_path, iterations=6, log_every=1).fit(on_step=kill_at(4))
    assert logged_steps(tmp_path)[1] == [1, 2, 3, 4]
    start = time.perf_counter()
    trainer_for(tmp_path, iterations=6, log_every=1).fit(resume=True)
    seconds = time.perf_counter() - start
    rows, steps = logged_steps(tmp_path)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(r["samples_per_s"] >= 32 / seconds for r in rows if r["step"] > 3 and "loss" in r)


@pytest.mark.parametrize("settings, message", [
    ({"num_classes": -1}, r"num_classes must be >= 0 \(0: unconditional\), got -1"),
    ({"ema_rate": 1.0}, r"ema_rate must be in \[0, 1\), got 1.0"),
    ({"ema_rate": 1.5}, r"ema_rate must be in \[0, 1\), got 1.5"),
    ({"ema_rate": -0.1}, r"ema_rate must be in \[0, 1\)"),
    ({"grad_clip": -0.5}, "grad_clip must be >= 0, got -0.5"),
    ({"lr_warmup": -1}, "lr_warmup must be >= 0, got -1"),
    ({"eval_n": float("nan")}, "eval_n must be an integer, got nan"),  # type before range
    ({"log_every": 0}, "log_every must be positive, got 0"),
    ({"lr": 0.0}, "lr must be positive, got 0.0"),
])
def test_train_config_refuses_out_of_range_settings_by_name(settings, message):
    from zoo.training.config import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings).validate()


def test_train_config_accepts_the_edges_of_its_ranges():
    from zoo.training.config import TrainConfig

    for settings in ({"num_classes": 0}, {"num_classes": 10}, {"ema_rate": 0.0},
                     {"ema_rate": 0.9999}, {"grad_clip": 0.0}, {"lr_warmup": 0}):
        TrainConfig(**settings).validate()


def test_saved_config_is_sorted_indented_json_so_runs_diff_cleanly(tmp_path):
    """config.json: keys in sorted order, two-space indent, a final newline (``diff`` of two
    runs' configs lines up setting by setting)."""
    from zoo.training.config import TrainConfig, config_to_dict, save_config

    config = TrainConfig(iterations=7, num_classes=3)
    save_config(config, tmp_path / "config.json")
    text = (tmp_path / "config.json").read_text()
    assert text == json.dumps(dict(sorted(config_to_dict(config).items())), indent=2) + "\n"
    assert list(json.loads(text)) == sorted(config_to_dict(config))
    assert not list(tmp_path.glob("*.tmp"))


def test_run_lock_creates_missing_parent_folders_and_records_its_pid(tmp_path):
    import os

    from zoo.training.rundir import RunLock

    run = tmp_path / "runs" / "digits" / "new-run"
    with RunLock(run):
        assert (run / ".lock").read_text() == f"{os.getpid()}\n"


def test_trim_log_keeps_rows_up_to_the_step_and_stepless_rows_and_drops_torn_lines(tmp_path):
    from zoo.training.rundir import trim_log

    assert trim_log(tmp_path, 3) == 0  # no log yet
    rows = [{"event": "start", "step": 0}, {"step": 1}, {"event": "note"}, {"step": 2},
            {"step": 3}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert trim_log(tmp_path, 2) == 2  # step 3 and the torn line
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows[:4]
    assert trim_log(tmp_path, 0) == 2  # steps 1 and 2; the stepless row stays
    assert [json.loads(line) for line in log.read_text().splitlines()] == [rows[0], rows[2]]
    log.write_text(json.dumps(rows[1]) + "\n" + '{"torn')
    assert trim_log(tmp_path, 5) == 1 and log.read_text() == json.dumps(rows[1]) + "\n"


def test_thread_policy_order_and_boundaries(monkeypatch):
    """--threads > $ZOO_THREADS > $OMP_NUM_THREADS (torch's count kept) > one thread for CPU
    networks below SMALL_NETWORK_PARAMS > torch's default, each with its reason."""
    from zoo.training.threads import SMALL_NETWORK_PARAMS, THREADS_ENV, choose_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    default = torch.get_num_threads()
    small, large = SMALL_NETWORK_PARAMS - 1, SMALL_NETWORK_PARAMS
    assert choose_threads(0, small, "cpu") == (
        1, f"automatic: network of {small:,} parameters < {SMALL_NETWORK_PARAMS:,}")
    assert choose_threads(0, large, "cpu") == (default, "torch default")
    assert choose_threads(0, 10 * large, "cpu") == (default, "torch default")
    assert choose_threads(0, small, "cuda") == (default, "torch default")
    assert choose_threads(1, large, "cpu") == (1, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(0, small, "cpu") == (default, "$OMP_NUM_THREADS")
    assert choose_threads(2, small, "cpu") == (2, "--threads")
    monkeypatch.setenv(THREADS_ENV, " 3 ")
    assert choose_threads(0, small, "cpu") == (3, "$ZOO_THREADS")
    assert choose_threads(5, small, "cpu") == (5, "--threads")
    monkeypatch.setenv(THREADS_ENV, "1")
    assert choose_threads(0, large, "cpu") == (1, "$ZOO_THREADS")
    for bad in ("0", "-2", "1.5"):
        monkeypatch.setenv(THREADS_ENV, bad)
        message = rf"\$ZOO_THREADS must be a positive integer, got '{bad}'"
        with pytest.raises(ValueError, match=message):
            choose_threads(0, small, "cpu")
    monkeypatch.setenv(THREADS_ENV, "  ")
    assert choose_threads(0, small, "cpu") == (default, "$OMP_NUM_THREADS")
