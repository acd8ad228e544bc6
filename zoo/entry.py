"""The ``zoo`` command's entry point: a SIGTERM handler first, then the slow imports (torch and
the plugins take seconds, a minute on a loaded machine), so a job stopped while starting, or at
any moment outside training (whose own handler checkpoints first), says so and exits 143
instead of dying silently."""

import os
import signal


def main():
    def stopped(signum, frame):
        # at once, not by an exception: one raised inside an import (numpy's, say) leaves the
        # half-imported module broken and the exit code wrong; zoo writes every file whole or
        # not at all, so nothing is left half-written
        os.write(2, f"zoo: {signal.Signals(signum).name} outside training: stopped at once "
                    "(no file is left half-written)\n".encode())
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    from zoo.cli import main as cli

    return cli()
