"""One checkpoint format, written atomically and loaded without running code from the file."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

FORMAT = "zoo-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint before the latest, kept as a fallback for a damaged latest one.
PREVIOUS_NAME = "checkpoint-prev.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not a zoo checkpoint."""


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path, *, previous=None) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A run killed mid-write leaves the previous checkpoint intact. With ``previous`` (a path), the
    file being replaced is kept there first; a kill between the two renames leaves it readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a zoo checkpoint with ``weights_only=True``: tensors and plain data only, no code."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as exc:
        # One line on what the file is, without torch's advice to retry with weights_only=False.
        from zoo.checkpoint_import import unreadable_file_message

        message = unreadable_file_message(path, exc, "a zoo checkpoint",
                                          "restore it from a copy or train the run again")
        raise CheckpointError(f"cannot read checkpoint: {message}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zoo checkpoint (format {FORMAT!r} expected)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')}, "
            f"this zoo reads version {FORMAT_VERSION}"
        )
    return state


def load_latest_checkpoint(run_dir, map_location="cpu") -> tuple[dict, Path, str | None]:
    """The run's latest readable checkpoint: ``checkpoint.pt``, else the previous one kept beside
    it. Returns ``(state, path, note)``; ``note`` says why the fallback was used (else None)."""
    run_dir = Path(run_dir)
    latest, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    try:
        return load_checkpoint(latest, map_location), latest, None
    except CheckpointError as exc:
        if not previous.exists():
            raise
        problem = exc
    state = load_checkpoint(previous, map_location)
    return state, previous, f"{problem}; using the previous checkpoint {previous} instead"
