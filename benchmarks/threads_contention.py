"""Training throughput of a small model when the CPU is shared: the automatic thread policy
(one intra-op thread for networks under 5M parameters) against torch's default (one thread per
core), each with and without busy processes competing for the cores.

Every configuration trains the same toy EDM run (`zoo train edm --dataset toy`) in a fresh
process; throughput is the median samples/s of its log rows (start-up excluded). A run that does
not finish within --timeout is reported with the rows it logged so far.

    python benchmarks/threads_contention.py [--iterations 300] [--busy 2] [--timeout 180]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def train(iterations: int, threads: int, timeout: float) -> dict:
    """Train in a child process; returns its median samples/s and whether it finished."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ZOO_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "zoo.cli", "train", "edm", "--dataset", "toy",
                   "--run-dir", str(run), "--iterations", str(iterations), "--log-every", "20",
                   "--checkpoint-every", str(iterations), "--threads", str(threads),
                   "--no-progress"]
        start = time.perf_counter()
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=timeout, check=True)
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "loss" in r]
    used = [r["threads"] for r in rows if r.get("event") == "start"]
    return {"threads": used[0] if used else threads, "finished": finished, "wall_s": wall,
            "samples_per_s": statistics.median(rates) if rates else 0.0, "rows": len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--busy", type=int, default=2, help="competing busy processes")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    policies = {"automatic (1 thread)": 0, f"torch default ({cores} threads)": cores}
    results = {}
    for contended in (False, True):
        hogs = []
        if contended:
            hogs = [multiprocessing.Process(target=spin, args=(10 * args.timeout,))
                    for _ in range(args.busy)]
            for h in hogs:
                h.start()
        try:
            for name, threads in policies.items():
                results[(name, contended)] = train(args.iterations, threads, args.timeout)
        finally:
            for h in hogs:
                h.terminate()
                h.join()
    print(f"toy EDM, {args.iterations} iterations, {cores} cores, {args.busy} busy processes "
          "when contended\n")
    print("| threads | contended | samples/s | wall s | finished |\n|---|---|---:|---:|---|")
    for (name, contended), r in results.items():
        finished = "yes" if r["finished"] else f"no ({r['rows']} log rows)"
        print(f"| {name} | {'yes' if contended else 'no'} | {r['samples_per_s']:.0f} | "
              f"{r['wall_s']:.1f} | {finished} |")
    auto, default = (results[(name, True)]["samples_per_s"] for name in policies)
    alone = results[(next(iter(policies)), False)]["samples_per_s"]
    print(f"\ncontended: automatic ÷ torch default throughput = {auto / max(default, 1e-9):.1f}×")
    print(f"automatic policy, contended ÷ alone = {auto / max(alone, 1e-9):.2f}")


if __name__ == "__main__":
    main()
