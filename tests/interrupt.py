"""Interrupting a training run at a chosen step, as a pre-emption would (the resume tests)."""


class Killed(Exception):
    """Raised by :func:`kill_at`'s callback: the run stops as if its process had died."""


def kill_at(step: int):
    """An ``on_step`` callback that raises :class:`Killed` when the run has done ``step``."""

    def on_step(done, loss):
        if done == step:
            raise Killed

    return on_step
