"""Paired, interleaved timing for the performance benchmarks: A and B alternate round by round
(their order flipped every round), so a change of machine load shifts both; the answer is the
median of the per-round ratios B/A with its interquartile range, and whether it is stable (the
median of the first and the second half of the rounds agree within the tolerance)."""

from __future__ import annotations

import statistics
import time


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_ratio(a, b, *, rounds: int = 21, warmup: int = 2, tolerance: float = 0.03) -> dict:
    """Time ``a()`` and ``b()`` interleaved for ``rounds`` rounds (after ``warmup`` of each);
    returns the median ratio b/a, its quartiles, the median times and ``stable``: the first
    and second half's medians within ``tolerance`` of each other (else: run more rounds)."""
    for _ in range(warmup):
        a(), b()
    ratios, times_a, times_b = [], [], []
    for i in range(rounds):
        if i % 2:
            tb, ta = _seconds(b), _seconds(a)
        else:
            ta, tb = _seconds(a), _seconds(b)
        times_a.append(ta)
        times_b.append(tb)
        ratios.append(tb / ta)
    half = rounds // 2
    first, second = statistics.median(ratios[:half]), statistics.median(ratios[half:])
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {"ratio": statistics.median(ratios), "q1": q1, "q3": q3, "rounds": rounds,
            "a_s": statistics.median(times_a), "b_s": statistics.median(times_b),
            "stable": abs(first - second) <= tolerance * statistics.median(ratios)}


def describe(name: str, result: dict) -> str:
    return (f"{name}: {result['ratio']:.3f} (IQR {result['q1']:.3f}–{result['q3']:.3f}, "
            f"{result['rounds']} paired rounds; {result['b_s'] * 1e3:.2f} ms vs "
            f"{result['a_s'] * 1e3:.2f} ms)" + ("" if result["stable"] else
                                                 "  [unstable: run more --rounds]"))
