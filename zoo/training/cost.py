"""Training cost: the network passes and training images a run took, its teachers' included.

Unit: a *pass* is one evaluation of a network on one sample, forward or backward, counted
separately; a Jacobian-vector product (``torch.func.jvp``: the primal and the tangent) counts
as two forward passes. Forward-equivalents weigh a backward pass as two forward ones
(:func:`forward_equivalents`). A teacher's passes count like the student's (the distilled
networks here share its architecture).

Each :class:`~zoo.training.TrainingTask` declares its passes per sample per step
(``passes_per_sample``) and its one-off passes (``setup_passes``, e.g. the (noise, sample)
pairs of a reflow round); the trainer keeps the running total in every checkpoint under
``"cost"`` (so a resumed run continues the count) and in ``log.jsonl``. :func:`run_cost` adds
the costs of the run's ``config.teacher`` chain: a CD run's EDM teacher, a PD stage's previous
stages and their teacher, a 2-RF run's 1-RF.
"""

from __future__ import annotations

from pathlib import Path

from zoo.training.checkpoint import CheckpointError, load_checkpoint
from zoo.training.config import read_config

#: The counters of a cost record.
COST_KEYS = ("images", "forward", "backward")


def empty_cost() -> dict[str, int]:
    return dict.fromkeys(COST_KEYS, 0)


def add_cost(a: dict, b: dict) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in COST_KEYS}


def forward_equivalents(cost: dict) -> int:
    """Forward passes plus twice the backward ones (a backward pass costs about two forward)."""
    return cost["forward"] + 2 * cost["backward"]


def run_cost(run_dir) -> dict[str, int] | None:
    """The training cost of the run in ``run_dir`` (a run directory or checkpoint) plus that of
    its ``config.teacher`` run, recursively; None when a run of the chain has no cost record
    (an imported run, one trained before costs were recorded, or a teacher that is gone)."""
    total, seen = empty_cost(), set()
    path = Path(run_dir)
    while True:
        key = path.resolve()
        if key in seen:
            raise ValueError(f"the teachers of {run_dir} form a cycle through {path}")
        seen.add(key)
        try:
            state = load_checkpoint(path)
        except CheckpointError:
            return None
        if state.get("cost") is None:
            return None
        total = add_cost(total, state["cost"])
        teacher = state["config"].get("teacher")
        if not teacher:
            return total
        path = Path(teacher)


def run_tuning_cost(run_dir) -> float:
    """Forward-equivalent passes spent choosing the settings of the run in ``run_dir`` and of
    its teachers: the ``zoo tune`` studies their ``config.json`` ``tuned`` records name, each
    once (a staged run's stages share one); 0 for runs trained with the presets as written.
    Reads the settings files only, not the checkpoints."""
    studies, seen, path = {}, set(), Path(run_dir)
    while (config := read_config(path)) is not None and path.resolve() not in seen:
        seen.add(path.resolve())
        if config.get("tuned"):
            studies[config["tuned"]["study"]] = config["tuned"]["tuning_cost_fwd"]
        if not config.get("teacher"):
            break
        path = Path(config["teacher"])
    return float(sum(studies.values()))


#: One training budget per preset scale, in forward-equivalent passes on single samples: the
#: ``teacher`` (the EDM run every distilled or tuned method starts from) and the ``student`` (what
#: each few-step method spends on top of its starting point). Methods trained from nothing (CT,
#: MeanFlow) get both, so every few-step row of the scale's bench costs the same in total.
#: digits: EDM's 6000 iterations of batch 128 at 3 passes (forward, backward); CD's 2000 at 6
#: (student forward and backward, target forward, the teacher's Heun step).
BUDGETS = {"digits": {"teacher": 6000 * 128 * 3, "student": 2000 * 128 * 6}}


def budget_iterations(budget: int, batch_size: int, passes: dict, setup: dict | None = None,
                      stages: int = 1) -> int:
    """The iterations per stage at which a run of ``stages`` stages, ``passes`` per sample and
    step (:meth:`~zoo.training.TrainingTask.passes_per_sample`) and ``setup`` passes once
    spends ``budget`` forward-equivalents, rounded down."""
    per_iteration = batch_size * forward_equivalents(passes) * stages
    left = budget - (forward_equivalents(setup) if setup else 0)
    if left < per_iteration:
        raise ValueError(f"a budget of {budget} forward-equivalents does not cover one iteration "
                         f"({per_iteration}) after the setup's {budget - left}")
    return left // per_iteration
