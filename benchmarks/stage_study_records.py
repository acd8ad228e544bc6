"""Stage a consistent copy of every study's record under a tuning root for a commit, while its
studies run: ``git add`` copies ``study.db`` byte by byte and may catch it mid-write, a torn
database that loses the study; SQLite's online backup reads it under a shared lock instead. Each
copy passes SQLite's integrity check before it is staged (its blob, at the record's own path);
the files in the working tree are not touched. The ``best.json`` and plots a finished study
writes are staged as they are.

    python benchmarks/stage_study_records.py [tune/digits] && git commit -m "..."
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import tempfile
from pathlib import Path


def snapshot(db: Path) -> bytes:
    """The bytes of a consistent copy of the SQLite database ``db`` (its online backup)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / db.name
        source = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True, timeout=120)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
            (verdict,) = target.execute("pragma integrity_check").fetchone()
        finally:
            source.close()
            target.close()
        if verdict != "ok":
            raise SystemExit(f"{db}: the copy fails SQLite's integrity check ({verdict}); "
                             "nothing staged")
        return copy.read_bytes()


def git(*args: str, data: bytes | None = None, cwd: Path) -> str:
    return subprocess.run(["git", *args], input=data, capture_output=True, check=True,
                          cwd=cwd).stdout.decode().strip()


def stage_records(root: Path) -> list[Path]:
    """Stage every ``study.db`` under ``root`` from its snapshot and every ``best.json`` and plot
    beside it as it is; returns the staged paths."""
    top = Path(git("rev-parse", "--show-toplevel", cwd=root))
    staged = []
    for db in sorted(root.resolve().glob("*/study.db")):
        blob = git("hash-object", "-w", "--stdin", data=snapshot(db), cwd=top)
        path = db.relative_to(top).as_posix()
        git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", cwd=top)
        staged.append(db)
        finished = [p for p in db.parent.iterdir() if p.name == "best.json" or p.suffix == ".png"]
        if finished:
            git("add", "--", *(p.relative_to(top).as_posix() for p in finished), cwd=top)
            staged += finished
    return staged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default="tune/digits", type=Path,
                        help="a tuning root: one folder per study, each with its study.db")
    root = parser.parse_args().root
    if not root.is_dir():
        raise SystemExit(f"{root}: no such tuning root "
                         "(expected a folder of studies, e.g. tune/digits)")
    staged = stage_records(root)
    if not staged:
        raise SystemExit(f"{root}: no study.db in any of its folders; nothing staged")
    for path in staged:
        print(f"staged {path}")


if __name__ == "__main__":
    main()
