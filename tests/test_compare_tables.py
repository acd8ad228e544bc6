"""``benchmarks/compare_tables.py``: two digits tables side by side in one metric, joined on
(METHOD, NFE), so that the README's untuned-against-tuned comparison is computed, not copied."""

import importlib.util
from pathlib import Path

import pytest

path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_tables.py"
spec = importlib.util.spec_from_file_location("compare_tables", path)
compare_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_tables)

UNTUNED = """\
| METHOD | NFE | FD297↓ | memorised↓ | train passes (G fwd-eq) |
| --- | ---: | ---: | ---: | ---: |
| real data (floor) | — | 0.1059 | 0.05051 |  |
| CD (L2) | 1 | 0.2954 ± 0.024 | 0.007 | 0.00384 |
| EDM (3-DEIS)² | 10 | 0.1612 ± 0.013 | 0.133 | 0.002304 |
| sCD | 1 | 0.6659 ± 0.047 | 0.014 | 0.00384 |

digits, n = 2000 samples per row
"""
TUNED = """\
| METHOD | NFE | FD297↓ | memorised↓ | train passes (G fwd-eq) | tuning passes (G fwd-eq) |
| --- | ---: | ---: | ---: | ---: | ---: |
| CD (L2) | 1 | 0.25 ± 0.032 | 0.01 | 0.00384 | 0.0128 |
| EDM (3-DEIS) | 10 | 0.17 | 0.1 | 0.002304 | 0.0073 |
| EDM (4-DEIS) | 10 | 0.15 ± 0.02 | 0.1 | 0.002304 | 0.0073 |
"""


def rows(text):
    lines = [line.strip("|").split("|") for line in text.splitlines()[2:]]
    return [[c.strip() for c in line] for line in lines]


def test_rows_join_on_method_and_nfe_with_the_change_and_its_error(tmp_path):
    (tmp_path / "a.md").write_text(UNTUNED)
    (tmp_path / "b.md").write_text(TUNED)
    table = compare_tables.comparison(tmp_path / "a.md", tmp_path / "b.md", "FD297",
                                      ("untuned", "tuned"))
    assert table.splitlines()[0] == ("| row | NFE | untuned | tuned | change (tuned − untuned) "
                                     "| tuning passes (G fwd-eq, tuned) |")
    assert rows(table) == [
        ["real data (floor)", "—", "0.1059", "", "", ""],
        # the errors in quadrature: hypot(0.024, 0.032) = 0.04
        ["CD (L2)", "1", "0.2954 ± 0.024", "0.25 ± 0.032", "-0.0454 ± 0.04", "0.0128"],
        # a footnote mark does not part a row from itself; a value without error, no error
        ["EDM (3-DEIS)", "10", "0.1612 ± 0.013", "0.17", "+0.0088", "0.0073"],
        ["sCD", "1", "0.6659 ± 0.047", "", "", ""],  # in one table only
        ["EDM (4-DEIS)", "10", "", "0.15 ± 0.02", "", "0.0073"],
    ]
    # without a tuning column in the second table, none in the comparison
    swapped = compare_tables.comparison(tmp_path / "b.md", tmp_path / "a.md", "memorised",
                                        ("tuned", "untuned"))
    assert "tuning passes" not in swapped
    assert rows(swapped)[0] == ["CD (L2)", "1", "0.01", "0.007", "-0.003"]


def test_a_column_or_a_table_that_is_not_there_is_named(tmp_path, capsys):
    (tmp_path / "a.md").write_text(UNTUNED)
    (tmp_path / "b.md").write_text(TUNED)
    with pytest.raises(SystemExit, match=r"a.md: no column 'FID'; its columns are FD297, "
                                         r"memorised, train passes"):
        compare_tables.comparison(tmp_path / "a.md", tmp_path / "b.md", "FID", ("a", "b"))
    (tmp_path / "c.md").write_text("no table here\n")
    with pytest.raises(SystemExit, match="c.md: no Markdown table"):
        compare_tables.comparison(tmp_path / "a.md", tmp_path / "c.md", "FD297", ("a", "b"))
    (tmp_path / "e.md").write_text("| method | plugin |\n|---|---|\n| cm | zoo_cm |\n")
    with pytest.raises(SystemExit, match="e.md: no table's first columns are METHOD, NFE "
                                         r"\(its tables' are method, plugin\)"):
        compare_tables.comparison(tmp_path / "a.md", tmp_path / "e.md", "FD297", ("a", "b"))
    (tmp_path / "d.md").write_text(TUNED.replace("0.25 ± 0.032", "nan"))
    with pytest.raises(SystemExit, match=r"d.md, \('CD \(L2\)', '1'\): 'nan' is not a number"):
        compare_tables.comparison(tmp_path / "a.md", tmp_path / "d.md", "FD297", ("a", "b"))
    with pytest.raises(SystemExit):
        compare_tables.main([str(tmp_path / "a.md"), str(tmp_path / "b.md"), "--names", "x"])
    assert "--names takes two names separated by a comma, got 'x'" in capsys.readouterr().err


def test_the_table_is_found_after_other_tables_of_a_readme(tmp_path):
    """The README itself can be one side: its first table (the methods) is passed over."""
    (tmp_path / "README.md").write_text("# zoo\n\n| method | plugin |\n|---|---|\n"
                                        "| cm | zoo_cm |\n\nThe table:\n\n" + UNTUNED)
    (tmp_path / "b.md").write_text(TUNED)
    table = compare_tables.comparison(tmp_path / "README.md", tmp_path / "b.md", "FD297",
                                      ("untuned", "tuned"))
    assert rows(table)[1] == ["CD (L2)", "1", "0.2954 ± 0.024", "0.25 ± 0.032",
                              "-0.0454 ± 0.04", "0.0128"]


def test_the_plot_draws_the_shared_rows_and_refuses_tables_that_share_none(tmp_path):
    (tmp_path / "a.md").write_text(UNTUNED)
    (tmp_path / "b.md").write_text(TUNED)
    compare_tables.main([str(tmp_path / "a.md"), str(tmp_path / "b.md"), "--plot",
                         str(tmp_path / "fd.png")])
    assert (tmp_path / "fd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "c.md").write_text(TUNED.replace("CD (L2)", "CT (L2)").replace("EDM", "PD"))
    with pytest.raises(SystemExit, match="share no row with a value of FD297"):
        compare_tables.plot_comparison(tmp_path / "a.md", tmp_path / "c.md", "FD297",
                                       ("a", "b"), tmp_path / "none.png")


def test_nfe_keeps_those_rows_and_the_floor(tmp_path, capsys):
    (tmp_path / "a.md").write_text(UNTUNED)
    (tmp_path / "b.md").write_text(TUNED)
    compare_tables.main([str(tmp_path / "a.md"), str(tmp_path / "b.md"), "--nfe", "1"])
    kept = [row[:2] for row in rows(capsys.readouterr().out)]
    assert kept == [["real data (floor)", "—"], ["CD (L2)", "1"], ["sCD", "1"]]


def test_rows_keeps_the_labels_named_at_the_nfe_and_a_label_at_nfe_whatever_nfe_says(
        tmp_path, capsys):
    (tmp_path / "a.md").write_text(UNTUNED)
    (tmp_path / "b.md").write_text(TUNED)
    compare_tables.main([str(tmp_path / "a.md"), str(tmp_path / "b.md"), "--nfe", "1",
                         "--rows", "CD (L2), EDM (3-DEIS)@10"])
    kept = [row[:2] for row in rows(capsys.readouterr().out)]
    assert kept == [["real data (floor)", "—"], ["CD (L2)", "1"], ["EDM (3-DEIS)", "10"]]
    compare_tables.main([str(tmp_path / "a.md"), str(tmp_path / "b.md"), "--rows", "sCD"])
    assert [row[:2] for row in rows(capsys.readouterr().out)] == [
        ["real data (floor)", "—"], ["sCD", "1"]]
