"""How many CPU threads torch uses for a run.

torch's default (one intra-op thread per core) pays off for large convolutions, but small networks
(the 2D MLPs, the 8×8-digits U-Net) spend their time in thread synchronisation: when the cores are
shared with other busy processes, each step waits for the slowest thread and training slows by an
order of magnitude (benchmarks/threads_contention.py measures it). One thread avoids that.
"""

from __future__ import annotations

import os

import torch

#: Below this many parameters a network trains with one CPU thread unless told otherwise.
SMALL_NETWORK_PARAMS = 5_000_000
THREADS_ENV = "ZOO_THREADS"


def choose_threads(requested: int, num_params: int, device) -> tuple[int, str]:
    """The intra-op thread count for a run and why: ``requested`` (> 0) wins, then $ZOO_THREADS;
    with $OMP_NUM_THREADS set, torch's setting (which follows it) is kept; else one thread for
    small networks on the CPU, and torch's default for the rest."""
    if requested > 0:
        return requested, "--threads"
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"${THREADS_ENV} must be a positive integer, got {env!r}")
        return int(env), f"${THREADS_ENV}"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads(), "$OMP_NUM_THREADS"
    if torch.device(device).type == "cpu" and num_params < SMALL_NETWORK_PARAMS:
        return 1, f"automatic: network of {num_params:,} parameters < {SMALL_NETWORK_PARAMS:,}"
    return torch.get_num_threads(), "torch default"
