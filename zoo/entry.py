"""The ``zoo`` command's entry point: a SIGTERM handler first, then the slow imports (torch and
the plugins take seconds, a minute on a loaded machine), so a job stopped while starting says so
instead of dying silently."""

import signal
import sys


def main():
    def stopped(signum, frame):
        sys.stderr.write(f"zoo: {signal.Signals(signum).name} while starting; nothing was "
                         "written\n")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stopped)
    from zoo.cli import main as cli

    return cli()
