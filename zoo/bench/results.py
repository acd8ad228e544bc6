"""What a bench measures and keeps: its rows' results, the report, the sample counts of the
published protocols, and the bench's errors."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from zoo import metrics as zoo_metrics
from zoo.data import Dataset
from zoo.diffusion.random import DEFAULT_STREAM
from zoo.methods import BenchRow

# Samples per row unless asked, by the dataset's default metric: points, five W2 sets of 2000
# (zoo.metrics.W2Metric); digits 2000; Inception FID on real images: the published FID-50k.
DEFAULT_N = {"w2": 10_000, "fdinf-digits": 2_000, "fd-digits": 2_000, "fid": 50_000}


PUBLISHED_N = DEFAULT_N["fid"]


#: Samples shown in each row's picture (the grid; a scatter plot shows every point).
PICTURE_N = 64


class BenchError(ValueError):
    """A bench that cannot run as asked: unknown or missing runs, or runs on other data."""


class BenchInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped a bench while its runs trained in child processes; each child
    checkpointed the step it reached and exited before the bench did."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name}: the bench stopped; its training "
                         "processes checkpointed and exited")
        self.exit_code = 128 + signum


@dataclass
class RowResult:
    """One measured row: the method, its row, the metrics, the sampling throughput, the
    training cost of its run (:func:`~zoo.training.cost.run_cost`; None where unrecorded) and
    the cost of tuning its settings (:func:`~zoo.training.cost.run_tuning_cost`)."""

    method: str
    row: BenchRow
    metrics: dict[str, float]
    samples_per_s: float
    checksum: str
    step: int
    samples_picture: str = ""
    weights: str = "ema"
    cost: dict | None = None
    sampler: str | None = None
    entry: str = ""
    samples_file: str = ""
    stamp: str = ""  # the run's checkpoint file as benched (size-mtime)
    tuning_fwd: float = 0.0


@dataclass
class BenchReport:
    dataset: str
    checksum: str
    n: int
    seed: int
    batch_size: int
    device: str
    results: list[RowResult] = field(default_factory=list)
    note: str = ""
    ref: str | None = None
    metric_names: list[str] | None = None  # the registered metrics that made the columns
    noise_stream: str = DEFAULT_STREAM  # every row's per-sample noise (random.STREAMS)

    @property
    def result_names(self) -> list[str]:
        names: list[str] = []
        for r in self.results:
            names += [k for k in r.metrics if k not in names]
        return names


def default_n(data: Dataset) -> int:
    """Samples per row unless ``--n`` says: :data:`DEFAULT_N` of the dataset's default metric."""
    return DEFAULT_N[zoo_metrics.default_metrics(data)[0]]


def protocol_note(data: Dataset, n: int) -> str:
    """The table's warning when a real image dataset is benched with other than FID-50k."""
    if zoo_metrics.default_metrics(data)[0] != "fid" or n == PUBLISHED_N:
        return ""
    size = f"{n // 1000}k" if n % 1000 == 0 else str(n)
    return f"FID-{size}, not comparable to published FID-{PUBLISHED_N // 1000}k"


def row_result_from_record(saved: dict, metrics: dict | None = None) -> RowResult:
    """A row of a ``table.json`` as a :class:`RowResult` (``metrics`` replaces its own)."""
    row = BenchRow(saved["label"], saved["nfe"], Path(saved["run_dir"]), saved["options"])
    cost = saved["training_cost"]
    return RowResult(
        saved["method"], row, saved["metrics"] if metrics is None else metrics,
        saved["samples_per_s"], saved["run_checksum"], saved["run_step"],
        saved["samples_picture"], saved["weights"],
        None if cost is None else {k: v for k, v in cost.items() if k != "forward_equivalents"},
        saved.get("sampler"), saved.get("entry", saved["method"]), saved["samples_file"],
        saved.get("run_stamp", ""), saved.get("tuning_fwd", 0.0))


def evaluation_of(data: Dataset, metrics, **options):
    """The bench's :class:`zoo.metrics.Evaluation`: its metrics and their weights checked before
    any work; missing Inception weights name the bench's own flag."""
    from zoo.metrics.fidelity import InceptionWeightsError

    try:
        return zoo_metrics.Evaluation(data, metrics, **options)
    except InceptionWeightsError as exc:
        raise InceptionWeightsError(f"{exc} (zoo bench: or pass --inception-weights PATH)"
                                    ) from None
