"""benchmarks/paired.py, the timing every performance ratio in docs/performance.md rests on:
the CPU clock leaves out time the process does not run, the wall clock counts it, and the
answer keeps its pairing (the median of per-round ratios, the fastest-times ratio)."""

import importlib.util
import time
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "paired", Path(__file__).resolve().parents[1] / "benchmarks" / "paired.py")
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_cpu_clock_leaves_out_waiting_and_the_wall_clock_counts_it():
    """B = A's work + 20 ms asleep (as a descheduled process waits): the wall clock sees B about
    3x A, the CPU clock sees the same work."""
    a = lambda: busy(0.01)  # noqa: E731
    b = lambda: (busy(0.01), time.sleep(0.02))  # noqa: E731
    wall = paired.paired_ratio(a, b, rounds=5, warmup=1, clock="wall")
    cpu = paired.paired_ratio(a, b, rounds=5, warmup=1, clock="cpu")
    assert wall["ratio"] > 2 and wall["min_ratio"] > 2
    assert cpu["ratio"] == pytest.approx(1, abs=0.3) and cpu["clock"] == "cpu"
    assert "5 paired rounds, cpu clock" in paired.describe("B / A", cpu)


def test_the_ratio_is_the_median_of_the_rounds_and_the_order_alternates():
    calls = []
    a = lambda: (calls.append("a"), busy(0.002))  # noqa: E731
    b = lambda: (calls.append("b"), busy(0.006))  # noqa: E731
    result = paired.paired_ratio(a, b, rounds=4, warmup=0, clock="cpu")
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # who goes first flips each round
    assert result["ratio"] == pytest.approx(3, rel=0.3)
    assert result["q1"] <= result["ratio"] <= result["q3"] and result["rounds"] == 4
