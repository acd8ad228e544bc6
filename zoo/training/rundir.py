"""A run directory owned by one process: the lock, the log and leftovers of killed writes."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

LOCK_NAME = ".lock"
LOG_NAME = "log.jsonl"


class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``, held while the process trains into the run.

    The OS drops the lock when the process dies (even by SIGKILL), so it is never stale; the file
    holds the holder's PID for the message a second writer gets.
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(
                f"{self.path.parent} is in use by another zoo process (PID {holder}); wait for "
                "it to finish, stop it, or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete the ``*.tmp`` files that a write killed before its rename left behind (call it only
    while holding the run's lock: then no write of ours is in flight)."""
    run_dir = Path(run_dir)
    stale = (sorted(run_dir.glob("*.tmp")) + sorted(run_dir.glob("snapshots/*.tmp"))
             # sample grids are written to hidden ".grid-stepN.<random>.png" files, then renamed
             + sorted(run_dir.glob("samples/.grid-*.png")))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def trim_log(run_dir, step: int, name: str = LOG_NAME) -> int:
    """Keep the rows of the log ``name`` up to ``step`` (the checkpoint a resume continues from),
    so replayed steps are not logged twice; torn last lines are dropped. Returns the rows
    removed."""
    path = Path(run_dir) / name
    if not path.exists():
        return 0
    kept, removed = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            removed += 1
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
        else:
            removed += 1
    if removed:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return removed
