"""The README's first command from nothing, timed per phase.

    OMP_NUM_THREADS=1 python benchmarks/first_five_minutes.py [--root /tmp/ffm] [-- BENCH OPTIONS]

Runs `zoo bench --models cm,edm,pd --dataset toy --train-missing` into a fresh scratch ROOT
(ROOT/runs, ROOT/bench; ROOT must not exist yet), then prints the wall time of each phase: each
run's training (from the bench's "training it" line to the last file its run directory wrote)
and the evaluation (from the last training's end to the bench's exit), with the load average
before and after, since timings on a shared machine depend on it. Options after `--` go to
`zoo bench` (e.g. `--set edm.iterations=2000`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

COMMAND = ["bench", "--models", "cm,edm,pd", "--dataset", "toy", "--train-missing",
           "--no-progress"]
TRAINING = re.compile(r"^(\S+): (\S+) .*; training it:")


def last_write(run_dir: Path) -> float:
    """The modification time of the newest file under ``run_dir``."""
    return max(p.stat().st_mtime for p in run_dir.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/zoo-first-five-minutes"))
    parser.add_argument("bench_options", nargs="*", help="More `zoo bench` options (after --).")
    args = parser.parse_args()
    if args.root.exists():
        sys.exit(f"--root {args.root} exists: give a path that does not (runs are trained there "
                 "from nothing)")
    zoo = Path(sys.executable).with_name("zoo")
    command = [str(zoo), *COMMAND, "--runs-root", str(args.root / "runs"),
               "--out", str(args.root / "bench"), *args.bench_options]
    print(" ".join(command), f"\nload average before: {os.getloadavg()}", flush=True)
    started, phases = time.time(), []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as bench:
        for line in bench.stdout:
            print(line, end="", flush=True)
            match = TRAINING.match(line)
            if match:
                phases.append((match.group(1), Path(match.group(2)), time.time()))
    finished = time.time()
    if bench.returncode:
        sys.exit(f"zoo bench failed with exit status {bench.returncode}")
    print(f"\nload average after: {os.getloadavg()}\n\n| phase | wall s |\n|---|---:|")
    start_of_eval = started
    for name, run_dir, begun in phases:
        start_of_eval = last_write(run_dir)
        print(f"| train {name} ({run_dir.name}) | {start_of_eval - begun:.1f} |")
    if phases:
        print(f"| start-up before the first training | {phases[0][2] - started:.1f} |")
    print(f"| evaluation (sampling, W2, outputs) | {finished - start_of_eval:.1f} |")
    print(f"| total | {finished - started:.1f} |")


if __name__ == "__main__":
    main()
