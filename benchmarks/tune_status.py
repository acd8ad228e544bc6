"""Where the studies of a tuning root stand (benchmarks/tune_study.sh runs for days): per study
its finished, pruned and running trials, its distinct settings, the cost its trials have trained
(each run folder once, :func:`zoo.tuning.study_cost`), the best validation score so far and
whether its confirmation has named a winner (best.json). Reads the studies; trains nothing.

    python benchmarks/tune_status.py [tune/digits]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from zoo.tuning import params_key, study_cost


def study_row(folder: Path) -> list[str]:
    storage = f"sqlite:///{folder / 'study.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    count = {s: sum(t.state == s for t in study.trials)
             for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value, default=None)
    winner = "—"
    if (folder / "best.json").exists():
        record = json.loads((folder / "best.json").read_text())
        (metric, value), = record["validation"].items()
        winner = f"trial {record['trial']}: {metric} {value:.4g}"
    return [folder.name, str(count[TrialState.COMPLETE]), str(count[TrialState.PRUNED]),
            str(count[TrialState.RUNNING]), str(len({params_key(t.params) for t in study.trials})),
            f"{study_cost(study) / 1e9:.4g}",
            f"{best.value:.4g} (trial {best.number})" if best else "—", winner]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="tune/digits",
                        help="a folder of studies, one per subfolder [tune/digits]")
    root = Path(parser.parse_args().root)
    folders = sorted(p.parent for p in root.glob("*/study.db"))
    if not folders:
        raise SystemExit(f"no study under {root} (looked for {root}/*/study.db)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    header = ["study", "finished", "pruned", "running", "distinct settings",
              "trained (G fwd-eq)", "best at the trial length", "confirmed winner (best.json)"]
    rows = [header, ["---"] + ["---:"] * 6 + ["---"], *map(study_row, folders)]
    print("\n".join("| " + " | ".join(r) + " |" for r in rows))


if __name__ == "__main__":
    main()
