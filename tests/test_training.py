"""The shared trainer: exact resume, atomic checkpoints, non-finite losses, recorded configs."""

import json

import pytest
import torch
from interrupt import Killed, kill_at

import zoo.plugins
from zoo.data import load_dataset
from zoo.training import BatchNoise, CheckpointError, NonFiniteLossError, Trainer, load_checkpoint
from zoo.training.checkpoint import save_checkpoint

TINY = dict(
    network_kwargs={"hidden": 32, "num_layers": 2},
    batch_size=64,
    lr=1e-3,
    lr_warmup=3,
    lr_decay="linear",
    ema_rate=0.9,
    checkpoint_every=4,
    log_every=2,
    dataset_options={"n": 2000},
)


def edm():
    return zoo.plugins.get("methods", "edm")


def tiny_config(**overrides):
    return edm().configure("toy", **{**TINY, **overrides})


def trainer_for(config, run_dir):
    dataset = load_dataset(config.dataset, **config.dataset_options)
    config.method = "edm"
    return Trainer(edm().make_task(config, dataset), config, dataset, run_dir, progress=False)


def weights(run_dir):
    state = load_checkpoint(run_dir)
    return state["net"], state["ema"], state["step"]


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    torch.manual_seed(0)
    trainer_for(tiny_config(iterations=12), tmp_path / "straight").fit()

    torch.manual_seed(123)  # a different global RNG state must not matter
    with pytest.raises(Killed):
        trainer_for(tiny_config(iterations=12), tmp_path / "resumed").fit(on_step=kill_at(10))
    assert load_checkpoint(tmp_path / "resumed")["step"] == 8  # last checkpoint before the kill
    trainer_for(tiny_config(iterations=12), tmp_path / "resumed").fit(resume=True)

    net_a, ema_a, step_a = weights(tmp_path / "straight")
    net_b, ema_b, step_b = weights(tmp_path / "resumed")
    assert step_a == step_b == 12
    for key in net_a:
        torch.testing.assert_close(net_a[key], net_b[key], rtol=0, atol=0)
        torch.testing.assert_close(ema_a[key], ema_b[key], rtol=0, atol=0)


def test_run_dir_records_config_and_log(tmp_path):
    trainer_for(tiny_config(iterations=4), tmp_path).fit()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == "edm" and config["iterations"] == 4 and config["p_mean"] == -1.2
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    start, *losses = rows
    assert start["event"] == "start" and start["step"] == 0 and start["threads"] >= 1
    assert [r["step"] for r in losses] == [2, 4] and all(r["samples_per_s"] > 0 for r in losses)
    state = load_checkpoint(tmp_path)
    assert state["dataset"]["checksum"] == load_dataset("toy", n=2000).checksum


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    trainer_for(tiny_config(iterations=4), tmp_path).fit()
    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        trainer_for(tiny_config(iterations=8), tmp_path).fit()


def test_resume_refuses_other_data(tmp_path):
    trainer_for(tiny_config(iterations=4), tmp_path).fit()
    other = tiny_config(iterations=8, dataset_options={"n": 2000, "seed": 1})
    with pytest.raises(CheckpointError, match="trained on different data"):
        trainer_for(other, tmp_path).fit(resume=True)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = trainer_for(tiny_config(iterations=20), tmp_path)

    def poison(step, loss):
        if step == 5:
            with torch.no_grad():
                next(trainer.net.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="iteration 5.*last good checkpoint"):
        trainer.fit(on_step=poison)
    state = load_checkpoint(tmp_path)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["net"].values())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint({"step": 1}, tmp_path / "checkpoint.pt")

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the write dies part-way, as on a full disk
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_loading_refuses_code_and_foreign_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import os; os.environ['ZOO_PWNED'] = '1'",))

    torch.save({"format": "zoo-checkpoint", "format_version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    import os

    assert "ZOO_PWNED" not in os.environ
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a zoo checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_batch_noise_is_independent_of_world_size():
    whole = BatchNoise(0, 7, 8).randn(3)
    halves = [BatchNoise(0, 7, 8, rank=r, world_size=2).randn(3) for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)
    assert not torch.equal(BatchNoise(0, 8, 8).randn(3), whole)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="optimizer='sgd' is not one of adam, radam"):
        tiny_config(optimizer="sgd")
    with pytest.raises(ValueError, match="unknown edm settings: bogus"):
        edm().configure("toy", bogus=1)


def test_device_auto_is_cuda_where_available_and_recorded_resolved(monkeypatch):
    from click.testing import CliRunner

    from zoo.cli import main

    for available, expected in ((False, "cpu"), (True, "cuda")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        assert edm().configure("toy").device == expected  # the default is auto
        assert tiny_config(device="auto").device == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert edm().configure("cifar10").device == "cpu"  # presets leave the device to auto
    result = CliRunner().invoke(main, ["sample", "edm", "--device", "gpu0"])
    assert result.exit_code == 2 and "accepted: auto, cpu, cuda, cuda:N" in result.output


def test_network_kwargs_merge_into_the_preset_as_set_does():
    """--network-kwargs with one key keeps the preset's others: a CT run given a width keeps its
    preset's dropout 0 (it used to fall back to the network's default 0.13)."""
    from zoo.plugins import get

    cm = get("methods", "cm")
    preset = cm.configure("cifar10", mode="ct")
    given = cm.configure("cifar10", mode="ct", network_kwargs={"model_channels": 16})
    assert given.network_kwargs == {**preset.network_kwargs, "model_channels": 16}
    assert given.network_kwargs["dropout"] == 0.0
    edm = get("methods", "edm")
    assert edm.configure("toy", network_kwargs={"hidden": 8}).network_kwargs == \
        {**edm.configure("toy").network_kwargs, "hidden": 8}


@pytest.mark.parametrize("name,mode", [("edm", None), ("cm", "ct"), ("rf", None)])
def test_accumulated_passes_equal_one_large_step(tmp_path, name, mode):
    """batch_gpu: a batch of 32 trained in passes of 8 gives the weights of one pass of 32 (the
    same noise rows, the gradient of the same mean), to float rounding, over several steps."""
    method = zoo.plugins.get("methods", name)
    settings = dict(iterations=3, batch_size=32, checkpoint_every=3, lr=1e-2,
                    network_kwargs={"hidden": 16, "num_layers": 2}, dataset_options={"n": 256})
    if mode:
        settings["mode"] = mode
    runs = {}
    for batch_gpu in (0, 8):
        config = method.configure("toy", batch_gpu=batch_gpu, **settings)
        runs[batch_gpu] = method.train(config, tmp_path / f"gpu{batch_gpu}", progress=False)
    one, passes = (load_checkpoint(runs[b])["net"] for b in (0, 8))
    for key in one:
        torch.testing.assert_close(passes[key], one[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_gpu=5 must divide"):
        method.configure("toy", batch_gpu=5, **settings)
