"""Stopping a run cleanly: SIGINT or SIGTERM (what cluster schedulers send before they kill a job)
end training after the current step, whose checkpoint is written first."""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a step; that step's checkpoint was written."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint written to {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum


class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step (cluster schedulers send
    SIGTERM before they kill a job); a second signal exits at once. Installed only in the main
    thread, and the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, echo):
        self.signum: int | None = None
        self.echo = echo
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        self.echo(f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                  "(send it again to exit at once)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
