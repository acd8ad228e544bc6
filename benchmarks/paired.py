"""Paired, interleaved timing for the performance benchmarks: A and B alternate round by round
(their order flipped every round), so a change of machine load shifts both; the answer is the
median of the per-round ratios B/A with its interquartile range, and whether it is stable (the
median of the first and the second half of the rounds agree within the tolerance).

Two clocks: ``wall`` (time.perf_counter; what a GPU run or a multi-threaded one needs) and
``cpu`` (time.thread_time, the calling thread's CPU time: on a shared machine it leaves out the
time the process waits descheduled, the largest noise in a one-thread CPU ratio; run such a
benchmark with OMP_NUM_THREADS=1 so that all its work is on the timed thread)."""

from __future__ import annotations

import statistics
import time

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def add_clock_option(parser) -> None:
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this thread's CPU time (one-thread CPU "
                        "runs on a shared machine; see benchmarks/paired.py)")


def _seconds(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def paired_ratio(a, b, *, rounds: int = 21, warmup: int = 2, tolerance: float = 0.03,
                 clock: str = "wall") -> dict:
    """Time ``a()`` and ``b()`` interleaved for ``rounds`` rounds (after ``warmup`` of each) on
    ``clock`` (:data:`CLOCKS`); returns the median ratio b/a, its quartiles, the median times,
    the ratio of the fastest times (``min_ratio``: each side undisturbed) and ``stable``: the
    first and second half's medians within ``tolerance`` of each other (else: run more
    rounds)."""
    timer = CLOCKS[clock]
    for _ in range(warmup):
        a(), b()
    ratios, times_a, times_b = [], [], []
    for i in range(rounds):
        if i % 2:
            tb, ta = _seconds(b, timer), _seconds(a, timer)
        else:
            ta, tb = _seconds(a, timer), _seconds(b, timer)
        times_a.append(ta)
        times_b.append(tb)
        ratios.append(tb / ta)
    half = rounds // 2
    first, second = statistics.median(ratios[:half]), statistics.median(ratios[half:])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"ratio": statistics.median(ratios), "q1": q1, "q3": q3, "rounds": rounds,
            "clock": clock,
            "a_s": statistics.median(times_a), "b_s": statistics.median(times_b),
            "min_ratio": min(times_b) / min(times_a),
            "stable": abs(first - second) <= tolerance * statistics.median(ratios)}


def describe(name: str, result: dict) -> str:
    return (f"{name}: {result['ratio']:.3f} (IQR {result['q1']:.3f}–{result['q3']:.3f}, "
            f"{result['rounds']} paired rounds, {result['clock']} clock; "
            f"{result['b_s'] * 1e3:.2f} ms vs {result['a_s'] * 1e3:.2f} ms; fastest "
            f"{result['min_ratio']:.3f})"
            + ("" if result["stable"] else "  [unstable: run more --rounds]"))
