"""``benchmarks/stage_study_records.py``: a running study's ``study.db`` is committed from a
consistent snapshot, never from a byte copy caught mid-write."""

import importlib.util
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

path = Path(__file__).resolve().parents[1] / "benchmarks" / "stage_study_records.py"
spec = importlib.util.spec_from_file_location("stage_study_records", path)
stage_study_records = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_study_records)


def git(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q")
    study = tmp_path / "tune" / "digits" / "toy-study"
    study.mkdir(parents=True)
    with sqlite3.connect(study / "study.db") as db:
        db.execute("create table trials (number integer, value real)")
        db.executemany("insert into trials values (?, ?)", [(0, 1.5), (1, 0.7)])
    db.close()
    return tmp_path


def staged_rows(repo: Path, tmp_path: Path) -> list:
    copy = tmp_path / "staged.db"
    copy.write_bytes(git(repo, "show", ":tune/digits/toy-study/study.db"))
    db = sqlite3.connect(copy)
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    rows = db.execute("select number, value from trials order by number").fetchall()
    db.close()
    return rows


def test_an_open_write_transaction_is_not_staged(repo, tmp_path):
    writer = sqlite3.connect(repo / "tune" / "digits" / "toy-study" / "study.db")
    writer.execute("begin immediate")
    writer.execute("insert into trials values (2, 9.9)")
    before = (repo / "tune" / "digits" / "toy-study" / "study.db").read_bytes()
    staged = stage_study_records.stage_records(repo / "tune" / "digits")
    assert staged == [(repo / "tune" / "digits" / "toy-study" / "study.db").resolve()]
    assert staged_rows(repo, tmp_path) == [(0, 1.5), (1, 0.7)]
    writer.rollback()
    writer.close()
    assert (repo / "tune" / "digits" / "toy-study" / "study.db").read_bytes() == before


def test_a_write_spilled_to_disk_is_waited_for_not_copied_torn(repo, tmp_path):
    """A transaction larger than the writer's cache writes into the file before it commits,
    under SQLite's exclusive lock: the snapshot waits for that lock (the commit) and stages the
    whole transaction, checked by SQLite's integrity check."""
    db_path = repo / "tune" / "digits" / "toy-study" / "study.db"
    writer = sqlite3.connect(db_path, check_same_thread=False)
    writer.execute("pragma cache_size = 1")
    writer.execute("begin immediate")
    writer.executemany("insert into trials values (?, ?)",
                       [(n, float(n)) for n in range(2, 5000)])
    committer = threading.Timer(1.0, writer.commit)
    committer.start()
    started = time.monotonic()
    stage_study_records.stage_records(repo / "tune" / "digits")
    committer.join()
    writer.close()
    assert time.monotonic() - started >= 0.9, "the snapshot did not wait for the writer"
    assert len(staged_rows(repo, tmp_path)) == 5000


def test_a_finished_studys_best_json_and_plots_are_staged_with_it(repo):
    study = repo / "tune" / "digits" / "toy-study"
    (study / "best.json").write_text("{}")
    (study / "history.png").write_bytes(b"png")
    (study / "notes.txt").write_text("not a record")
    stage_study_records.stage_records(repo / "tune" / "digits")
    staged = git(repo, "diff", "--cached", "--name-only").decode().split()
    assert sorted(staged) == ["tune/digits/toy-study/best.json",
                              "tune/digits/toy-study/history.png",
                              "tune/digits/toy-study/study.db"]


def test_a_missing_root_or_one_without_studies_is_an_error(repo, monkeypatch):
    monkeypatch.setattr("sys.argv", ["stage_study_records.py", str(repo / "missing")])
    with pytest.raises(SystemExit, match="no such tuning root"):
        stage_study_records.main()
    (repo / "tune" / "toy").mkdir()
    monkeypatch.setattr("sys.argv", ["stage_study_records.py", str(repo / "tune" / "toy")])
    with pytest.raises(SystemExit, match="no study.db"):
        stage_study_records.main()
