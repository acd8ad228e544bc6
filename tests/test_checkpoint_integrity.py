"""Nothing damaged ever loads silently: byte damage anywhere in a checkpoint is refused (or the
loaded state is exactly the saved one), readers fall back to the previous checkpoint, and
``checkpoint.pt`` exists at every instant while checkpoints are written."""

import io
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from test_reliability import tiny_config, trainer_for

from zoo.training import CheckpointError, load_checkpoint, save_checkpoint
from zoo.training import checkpoint as ckpt
from zoo.training.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_NAME,
    CheckpointFallbackWarning,
    DamagedCheckpointError,
    load_latest_checkpoint,
)


def state_of(seed: int) -> dict:
    """A checkpoint-like state: a network, an EMA, an optimiser's moments and plain records."""
    g = torch.Generator().manual_seed(seed)
    tensors = lambda: {f"layer{i}.weight": torch.randn(64, 32, generator=g) for i in range(3)}
    return {"step": seed, "method": "edm", "config": {"lr": 1e-3, "name": "tiny"},
            "net": tensors(), "ema": tensors(),
            "optimizer": {"state": {0: {"exp_avg": torch.randn(500, generator=g)}}}}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("pristine") / CHECKPOINT_NAME
    save_checkpoint(state_of(7), path)
    return path.read_bytes(), load_checkpoint(path)


@pytest.mark.parametrize("width", [1, 16, 5000])
def test_random_byte_damage_never_loads_silently(tmp_path, pristine, width):
    """Overwrite ``width`` random bytes at 60 random offsets (one at a time): every load either
    refuses the file or returns exactly the saved state (torch.load alone loads most of these
    with changed tensors: it never checks the zip CRCs)."""
    data, saved = pristine
    g = torch.Generator().manual_seed(width)
    offsets = torch.randint(0, len(data) - 1, (60,), generator=g).tolist()
    refused = 0
    for offset in offsets:
        noise = torch.randint(0, 256, (width,), generator=g, dtype=torch.uint8).numpy().tobytes()
        damaged = bytearray(data)
        damaged[offset:offset + width] = noise[:len(damaged) - offset]
        path = tmp_path / f"damaged-{offset}.pt"
        path.write_bytes(bytes(damaged[:len(data)]))
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            refused += 1
            continue
        assert same(state, saved), f"{width} damaged byte(s) at {offset} loaded silently"
    assert refused >= 50  # nearly every offset lies in tensor data or the pickle


def test_torch_load_alone_would_accept_damaged_tensor_bytes(tmp_path, pristine):
    """Why the CRCs are checked: the same damage passes torch.load with changed weights."""
    data, saved = pristine
    offset = data.index(saved["net"]["layer1.weight"].numpy().tobytes()[:64]) + 100
    damaged = bytearray(data)
    damaged[offset] ^= 0xFF
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(bytes(damaged))
    loose = torch.load(path, weights_only=True)
    assert not torch.equal(loose["net"]["layer1.weight"], saved["net"]["layer1.weight"])
    with pytest.raises(DamagedCheckpointError, match="fails the CRC check"):
        load_checkpoint(path)


def rewrite_record(path, name_suffix: str, edit) -> None:
    """Rewrite one record of a torch zip with ``edit(bytes)`` and valid CRCs (damage the CRC
    check cannot see: what remains is the reader's own error)."""
    with zipfile.ZipFile(path) as z:
        records = [(i, z.read(i)) for i in z.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for info, payload in records:
            z.writestr(info, edit(payload) if info.filename.endswith(name_suffix) else payload)
    path.write_bytes(buffer.getvalue())


def test_any_failure_to_read_the_latest_falls_back_to_the_previous(tmp_path):
    """A pickle whose strings no longer decode (UnicodeDecodeError, not a torch error) is damage
    too: the reader falls back to the intact previous checkpoint, saying so."""
    run = tmp_path / "run"
    save_checkpoint(state_of(1), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    save_checkpoint(state_of(2), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    rewrite_record(run / CHECKPOINT_NAME, "data.pkl",
                   lambda b: b.replace(b"method", b"m\xff\xfehod"))
    with pytest.raises(DamagedCheckpointError):
        load_checkpoint(run / CHECKPOINT_NAME)
    state, path, note = load_latest_checkpoint(run)
    assert (state["step"], path.name) == (1, PREVIOUS_NAME)
    assert "using the previous checkpoint" in note
    with pytest.warns(CheckpointFallbackWarning, match="using the previous checkpoint"):
        assert load_checkpoint(run)["step"] == 1


def test_both_checkpoints_damaged_names_both_files_and_the_way_out(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(state_of(1), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    save_checkpoint(state_of(2), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        data = bytearray((run / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (run / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run)
    message = str(info.value)
    assert CHECKPOINT_NAME in message and PREVIOUS_NAME in message
    assert f"mv {run} {run}.damaged" in message


def test_a_fresh_train_over_damaged_checkpoints_says_so_not_pass_resume(tmp_path):
    run = tmp_path / "run"
    trainer_for(tiny_config(iterations=4, checkpoint_every=2), run).fit()
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        (run / name).write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(CheckpointError) as info:
        trainer_for(tiny_config(iterations=4), run).fit()
    assert "--resume" not in str(info.value) and ".damaged" in str(info.value)
    with pytest.raises(CheckpointError, match="both checkpoints"):
        trainer_for(tiny_config(iterations=4), run).fit(resume=True)


def test_checkpoint_exists_at_every_instant_of_a_save(tmp_path, monkeypatch):
    """Every rename a save makes happens with ``checkpoint.pt`` in place (the old save renamed it
    to -prev first, leaving a window with no checkpoint)."""
    run = tmp_path / "run"
    save_checkpoint(state_of(1), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    real_replace, seen = os.replace, []

    def replace(src, dst):
        seen.append((run / CHECKPOINT_NAME).exists())
        real_replace(src, dst)
        seen.append((run / CHECKPOINT_NAME).exists())

    monkeypatch.setattr(ckpt.os, "replace", replace)
    for step in (2, 3):
        save_checkpoint(state_of(step), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    assert seen and all(seen)
    assert load_checkpoint(run / PREVIOUS_NAME)["step"] == 2
    assert load_checkpoint(run)["step"] == 3
    assert not list(run.glob("*.tmp"))


WRITER = textwrap.dedent("""
    import sys, torch
    from zoo.training.checkpoint import save_checkpoint
    run = sys.argv[1]
    for step in range(1, 151):
        save_checkpoint({"step": step, "w": torch.full((2000,), float(step))},
                        f"{run}/checkpoint.pt", previous=f"{run}/checkpoint-prev.pt")
""")


def test_a_reader_in_a_tight_loop_never_finds_no_checkpoint(tmp_path):
    run = tmp_path / "run"
    save_checkpoint({"step": 0, "w": torch.zeros(2000)}, run / CHECKPOINT_NAME)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    reads, failures = 0, []
    while writer.poll() is None:
        try:
            state = load_checkpoint(run)
            assert torch.equal(state["w"], torch.full((2000,), float(state["step"])))
            reads += 1
        except CheckpointError as exc:
            failures.append(str(exc))
    assert writer.returncode == 0
    assert reads > 0 and not failures, failures[:3]


def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous(tmp_path, monkeypatch):
    """torch reports a full disk as "[enforce fail ...] unexpected pos": the save names ENOSPC
    and the device, leaves no temporary file and the earlier checkpoint loadable."""
    import errno
    import shutil

    run = tmp_path / "run"
    save_checkpoint(state_of(1), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")

    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as info:
        save_checkpoint(state_of(2), run / CHECKPOINT_NAME, previous=run / PREVIOUS_NAME)
    assert info.value.errno == errno.ENOSPC and "no space left on the device" in str(info.value)
    assert not list(run.glob("*.tmp"))
    monkeypatch.undo()
    assert load_checkpoint(run)["step"] == 1
