"""Training a bench's missing runs: one after another, or ``--jobs`` at once in spawned processes
that start as soon as the runs they need are trained."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from pathlib import Path

from zoo.bench.results import BenchError, BenchInterrupted
from zoo.methods import Method


def train_one(method: Method, config, run_dir: Path, overrides: dict | None, *,
               progress: bool, echo) -> None:
    """Train one missing run; an unfinished one (``overrides`` not None) continues with its own
    settings and the ``--set`` ``overrides``."""
    if overrides is None:
        method.train(config, run_dir, progress=progress)
    else:
        method.resume(run_dir, {"device": config.device, **overrides}, progress=progress,
                      echo=echo)


def _train_child(method: Method, config, run_dir: Path, overrides: dict | None) -> None:
    """A spawned process's training (spawned, not forked: OpenMP and other threads' locks do
    not survive a fork); its error goes to stderr and its exit code to the parent. It leaves
    the terminal's process group: a Ctrl-C reaches the bench alone, which stops each child
    once (a second signal would make a trainer exit before its checkpoint)."""
    os.setpgid(0, 0)
    try:
        train_one(method, config, run_dir, overrides, progress=False, echo=print)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


def train_runs(methods: dict[str, Method], missing: list, *, jobs: int = 1, progress: bool,
               echo=print) -> None:
    """Train the ``missing`` runs ``[(method name, run_dir, config, resume overrides)]`` (given
    requirements
    first). ``jobs`` > 1 trains up to that many at once in spawned processes (one CPU thread
    each for small networks, zoo.training.threads), each as soon as every run of the methods it
    requires (``Method.requires``) and its own ``config.teacher`` run (e.g. 2-RF's 1-RF) are
    trained, the longest (``Method.total_iterations`` × batch) first; a run trains exactly as it
    would alone (its noise
    depends only on its seed and step). A failed run stops the others (they checkpoint on
    SIGTERM, so ``--train-missing`` continues them) and is an error naming its run."""
    if jobs <= 1 or len(missing) <= 1:
        for name, run_dir, config, overrides in missing:
            train_one(methods[name], config, run_dir, overrides, progress=progress, echo=echo)
        return
    context = multiprocessing.get_context("spawn")
    # the longest first (training images), so that they do not end last
    waiting = sorted(missing, key=lambda job: -methods[job[0]].total_iterations(job[2])
                     * job[2].batch_size)
    running = {}
    pending = {job[0] for job in missing}

    def stop(signum, frame):  # the finally below stops the children: they checkpoint, then exit
        raise BenchInterrupted(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while waiting or running:
            for job in list(waiting):
                name, run_dir, config, overrides = job
                teacher = Path(getattr(config, "teacher", "") or "/").resolve()
                blocked = any(r in pending for r in methods[name].requires) or any(
                    Path(j[1]).resolve() == teacher for j in waiting + [
                        j for _, j in running.values()])
                if len(running) < jobs and not blocked:
                    process = context.Process(target=_train_child,
                                              args=(methods[name], config, run_dir, overrides))
                    process.start()
                    running[process.sentinel] = (process, job)
                    waiting.remove(job)
            if not running:
                raise BenchError(f"runs {[str(j[1]) for j in waiting]} wait on requirements "
                                 "that no run trains")
            for sentinel in multiprocessing.connection.wait(list(running)):
                process, (name, run_dir, _, _) = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:
                    raise BenchError(f"training {name} run {run_dir} failed (exit "
                                     f"{process.exitcode}; its error is printed above)")
                echo(f"{name}: {run_dir} trained")
                if not any(j[0] == name for j in waiting) and not any(
                        j[0] == name for _, j in running.values()):
                    pending.discard(name)
    finally:
        for process, _ in running.values():
            process.terminate()  # SIGTERM: the trainer checkpoints the step it reached
        for process, _ in running.values():
            process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
