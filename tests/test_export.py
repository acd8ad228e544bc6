"""Weights out: `zoo export --format safetensors` and `zoo import-safetensors` back into a run."""

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

import zoo.plugins
from zoo.cli import main
from zoo.export import ExportError, export_safetensors, import_safetensors
from zoo.training import load_checkpoint

TINY = dict(network_kwargs={"hidden": 16, "num_layers": 1}, batch_size=32, iterations=6,
            lr_warmup=0, ema_rate=0.5, checkpoint_every=6, log_every=3,
            snapshot_every_kimg=0.192, dataset_options={"n": 500})


@pytest.fixture(scope="module")
def cm_run(tmp_path_factory):
    """A 6-step consistency-training run (no teacher needed)."""
    zoo.plugins.reset()
    cm = zoo.plugins.get("methods", "cm")
    config = cm.configure("toy", mode="ct", s1=10, init="random", **TINY)
    return cm.train(config, tmp_path_factory.mktemp("runs") / "cm-ct", progress=False)


def test_export_import_gives_the_same_samples(cm_run, tmp_path):
    out = tmp_path / "ct.safetensors"
    result = CliRunner().invoke(main, ["export", str(cm_run), "--format", "safetensors",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    state = load_checkpoint(cm_run)
    assert meta["method"] == "cm" and meta["weights"] == "ema"
    assert int(meta["step"]) == state["step"] == 6
    assert json.loads(meta["config"]) == state["config"]
    assert json.loads(meta["dataset"]) == state["dataset"]

    result = CliRunner().invoke(main, ["import-safetensors", str(out), "--out",
                                       str(tmp_path / "back")])
    assert result.exit_code == 0, result.output
    cm = zoo.plugins.get("methods", "cm")
    original, back = cm.load(cm_run), cm.load(tmp_path / "back")
    assert back.step == original.step and back.config == original.config
    assert back.dataset == original.dataset
    for nfe in (1, 2):
        a = cm.sample(original, 20, seed=3, batch_size=7, nfe=nfe).x
        b = cm.sample(back, 20, seed=3, batch_size=7, nfe=nfe).x
        assert torch.equal(a, b)


def test_raw_weights_are_the_trained_ones(cm_run, tmp_path):
    path = export_safetensors(cm_run, tmp_path / "raw.safetensors", weights="raw")
    run = import_safetensors(path, tmp_path / "raw-run")
    state, back = load_checkpoint(cm_run), load_checkpoint(run)
    assert back["imported_from"]["weights"] == "raw"
    for name, tensor in state["net"].items():
        assert torch.equal(back["ema"][name], tensor) and torch.equal(back["net"][name], tensor)
    assert any(not torch.equal(state["net"][n], state["ema"][n]) for n in state["net"])


def test_foreign_files_and_taken_run_dirs_are_clear_errors(cm_run, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ExportError, match="without zoo's metadata"):
        import_safetensors(foreign, tmp_path / "x")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    result = CliRunner().invoke(main, ["import-safetensors", str(garbage), "--out",
                                       str(tmp_path / "y")])
    assert result.exit_code == 1 and "cannot read" in result.output
    path = export_safetensors(cm_run, tmp_path / "ok.safetensors")
    result = CliRunner().invoke(main, ["import-safetensors", str(path), "--out", str(cm_run)])
    assert result.exit_code == 1 and "already holds a checkpoint" in result.output
    (snapshot,) = (cm_run / "snapshots").glob("*.pt")
    with pytest.raises(ExportError, match="EMA weights only"):
        export_safetensors(snapshot, tmp_path / "s.safetensors", weights="raw")
    assert load_checkpoint(import_safetensors(
        export_safetensors(snapshot, tmp_path / "s.safetensors"), tmp_path / "s"))["step"] == 6


def test_weights_that_do_not_fit_say_which_keys_and_shapes(cm_run, tmp_path):
    """A file whose tensors miss, add or reshape keys: every mismatch named, not just torch's
    first line ("Error(s) in loading state_dict for ...")."""
    from safetensors.torch import load_file

    path = export_safetensors(cm_run, tmp_path / "ok.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    first, second = sorted(tensors)[:2]
    tensors[first] = torch.zeros(3, 3)
    del tensors[second]
    tensors["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    result = CliRunner().invoke(main, ["import-safetensors", str(broken), "--out",
                                       str(tmp_path / "z")])
    assert result.exit_code == 1
    flat = " ".join(result.output.split())
    assert "the weights do not fit the network" in flat
    assert second in flat and "extra.weight" in flat and "size mismatch" in flat


def test_export_does_not_replace_a_file_without_overwrite(cm_run, tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"earlier")
    result = CliRunner().invoke(main, ["export", str(cm_run), "--out", str(out)])
    assert result.exit_code == 1 and "exists; pass --overwrite" in result.output
    assert out.read_bytes() == b"earlier"
    result = CliRunner().invoke(main, ["export", str(cm_run), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["method"] == "cm"


def test_damaged_metadata_names_the_file(cm_run, tmp_path):
    from safetensors.torch import load_file

    path = export_safetensors(cm_run, tmp_path / "ok.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    broken = tmp_path / "broken.safetensors"
    save_file(load_file(str(path)), str(broken), metadata={**meta, "config": "{not json"})
    with pytest.raises(ExportError, match=rf"{broken}: zoo's metadata in it is damaged"):
        import_safetensors(broken, tmp_path / "run")
