"""One checkpoint format, written atomically, verified on every load and loaded without running
code from the file.

``torch.save`` writes a zip archive with a CRC-32 per record, but ``torch.load`` never checks
them: a checkpoint with damaged bytes loads with changed tensors. :func:`load_checkpoint`
therefore checks every record's CRC first (:func:`verify_checkpoint`) and treats any failure to
read the file as damage, so a run falls back to ``checkpoint-prev.pt`` instead of loading it.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import torch

from zoo.files import file_kind, temporary_file, unreadable_file_message

FORMAT = "zoo-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
#: The checkpoint before the latest, kept as a fallback for a damaged latest one.
PREVIOUS_NAME = "checkpoint-prev.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not a zoo checkpoint."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that exists but cannot be read intact (failed CRC, truncation, ...)."""


class CheckpointFallbackWarning(UserWarning):
    """The latest checkpoint was damaged or missing and the previous one was loaded instead."""


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


def _keep_as_previous(path: Path, previous: Path) -> None:
    """Make ``previous`` a copy of ``path`` while ``path`` stays in place: a hard link (a copy
    where the file system has none) under a temporary name, renamed over ``previous``."""
    tmp = previous.with_name(f"{previous.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, previous)


def save_checkpoint(state: dict, path, *, previous=None) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, rename.

    A run killed mid-write leaves the previous checkpoint intact. With ``previous`` (a path), the
    checkpoint being replaced is first linked there, so ``path`` exists at every instant: a
    reader never finds the run without a checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    fd, tmp = temporary_file(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                torch.save(state, f)
            except RuntimeError as exc:  # torch reports a full disk as "unexpected pos"
                free = shutil.disk_usage(path.parent).free
                if free < 64 * 2**20:
                    raise OSError(errno.ENOSPC, f"no space left on the device of {path.parent} "
                                  f"({free / 2**20:.0f} MiB free) while writing the checkpoint; "
                                  "the previous checkpoint is intact") from exc
                raise
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            _keep_as_previous(path, Path(previous))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def verify_checkpoint(file) -> None:
    """Raise :class:`DamagedCheckpointError` unless every record of the zip archive ``file`` (a
    path or an open binary file; torch.save's format) matches its CRC-32 and the archive's
    directory is readable."""
    name = getattr(file, "name", file)
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except Exception as exc:  # noqa: BLE001 - any unreadable directory or header is damage
        raise DamagedCheckpointError(
            f"{name} is damaged: its zip directory cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    if bad is not None:
        raise DamagedCheckpointError(f"{name} is damaged: its record {bad!r} fails the CRC check")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a zoo checkpoint with ``weights_only=True`` (tensors and plain data only, no code)
    after verifying its CRCs, both from one open file. A run directory loads its latest intact
    checkpoint (:func:`load_latest_checkpoint`), warning when that is the previous one."""
    path = Path(path)
    if path.is_dir():
        state, _, note = load_latest_checkpoint(path, map_location)
        if note:
            warnings.warn(note, CheckpointFallbackWarning, stacklevel=2)
        return state
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    todo = "restore it from a copy or train the run again"
    try:
        kind = file_kind(path)
        if kind != "zip":
            message = unreadable_file_message(path, ValueError(kind), "a zoo checkpoint", todo)
            raise DamagedCheckpointError(f"cannot read checkpoint: {message}")
        with open(path, "rb") as f:  # a checkpoint renamed in meanwhile cannot slip in unchecked
            verify_checkpoint(f)
            f.seek(0)
            state = torch.load(f, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever fails to read is damage, never a crash
        # One line on what the file is, without torch's advice to retry with weights_only=False.
        message = unreadable_file_message(path, exc, "a zoo checkpoint", todo)
        raise DamagedCheckpointError(f"cannot read checkpoint: {message}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a zoo checkpoint (format {FORMAT!r} expected)")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {state.get('format_version')}, "
            f"this zoo reads version {FORMAT_VERSION}"
        )
    return state


def load_latest_checkpoint(run_dir, map_location="cpu") -> tuple[dict, Path, str | None]:
    """The run's latest intact checkpoint: ``checkpoint.pt``, else the previous one kept beside
    it. Returns ``(state, path, note)``; ``note`` says why the fallback was used (else None).
    When neither can be read, the error names both files and the way out."""
    run_dir = Path(run_dir)
    latest, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    try:
        return load_checkpoint(latest, map_location), latest, None
    except CheckpointError as exc:
        if not previous.exists():
            if latest.exists():
                raise CheckpointError(f"{exc}; there is no previous checkpoint "
                                      f"{previous.name} to fall back to. {way_out(run_dir)}"
                                      ) from None
            raise
        problem = exc
    try:
        state = load_checkpoint(previous, map_location)
    except CheckpointError as exc:
        raise CheckpointError(f"both checkpoints of {run_dir} are unreadable: {problem}; and "
                              f"{exc}. {way_out(run_dir)}") from None
    return state, previous, f"{problem}; using the previous checkpoint {previous} instead"


def way_out(run_dir) -> str:
    """What to do with a run whose checkpoints are all damaged."""
    run_dir = Path(run_dir)
    return (f"Restore the files from a copy, or move the run aside "
            f"(mv {run_dir} {run_dir}.damaged) and train it again")


def damaged_checkpoints(run_dir) -> str | None:
    """Why none of ``run_dir``'s checkpoints can be loaded, or None when one can (or none
    exists)."""
    run_dir = Path(run_dir)
    if not any((run_dir / n).exists() for n in (CHECKPOINT_NAME, PREVIOUS_NAME)):
        return None
    try:
        load_latest_checkpoint(run_dir)
    except CheckpointError as exc:
        return str(exc)
    return None
