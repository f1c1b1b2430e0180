"""The compatibility matrix tooling: a junit report becomes a cell summary, summaries become
compat_matrix.md, and the matrix's cells are the ones the project promises."""

import json
from pathlib import Path

from tools import compat_cell, compat_report, matrix_cells

ROOT = Path(__file__).resolve().parent.parent

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_bad" time="0.1">
  <failure message="AssertionError: assert 1 == 2&#10;more">long traceback</failure>
</testcase>
<testcase classname="tests.test_b" name="test_old[x]" time="0.0">
  <skipped type="pytest.skip" message="torch 2.0.1 has no early_stop">skip</skipped>
</testcase>
<testcase classname="tests.test_b" name="test_old[y]" time="0.0">
  <skipped type="pytest.skip" message="torch 2.0.1 has no early_stop">skip</skipped>
</testcase>
<testcase classname="tests.test_c" name="test_crash" time="0.0">
  <error message="">E   RuntimeError: boom&#10;E   second line</error>
</testcase>
</testsuite></testsuites>
"""


def test_a_junit_report_becomes_counts_and_one_line_reasons(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    summary = compat_cell.summarise(junit)
    assert summary["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 2}
    assert summary["problems"] == [
        {"test": "tests.test_a::test_bad", "outcome": "failed",
         "reason": "AssertionError: assert 1 == 2"},
        {"test": "tests.test_c::test_crash", "outcome": "error", "reason": "RuntimeError: boom"},
    ]
    assert summary["skips"] == [{"reason": "torch 2.0.1 has no early_stop", "count": 2,
                                 "tests": ["tests.test_b::test_old[x]",
                                           "tests.test_b::test_old[y]"]}]


def test_the_page_is_rendered_from_the_results_only(tmp_path):
    python, torch, transformers = matrix_cells.TORCH_CELLS[0]
    cell = matrix_cells.cell_id(python, torch, transformers)
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    result = {"cell": cell, "date": "2026-11-26 18:00 UTC", "machine": "Test CPU, 2 cores",
              "versions": {"python": "3.9.18", "torch": "2.0.1+cu117",
                           "transformers": transformers, "numpy": "1.26.4"},
              "test_seconds": 120.0, **compat_cell.summarise(junit)}
    (tmp_path / f"{cell}.json").write_text(json.dumps(result))
    (tmp_path / "full-run.json").write_text(json.dumps(
        {"cells": 19, "minutes": 61.4, "finished": "2026-11-26 19:00 UTC"}))
    target = tmp_path / "compat_matrix.md"
    assert compat_report.main([str(tmp_path), str(target)]) == 0
    page = target.read_text()
    assert "Run on 2026-11-26, on: Test CPU, 2 cores." in page
    assert "0 of 19 cells green, 1 red, 18 not run" in page
    assert "took 61 min" in page
    row = next(line for line in page.splitlines() if line.startswith("| 2.0.1+cu117"))
    assert row.split(" | ")[1:8] == [transformers, "3.9.18", "**red**", "1", "2", "2",
                                     "2.0 min"]
    assert f"### {cell}" in page
    assert "- failed: `tests.test_a::test_bad`: AssertionError: assert 1 == 2" in page
    assert "- 2 skipped: torch 2.0.1 has no early_stop" in page
    # every other cell is listed as not run, never left out (torch 2.13.0 with transformers
    # 5.24.0 is a row of both tables)
    assert page.count("| not run |") == len(matrix_cells.MATRIX) + 1 - 1


def test_the_matrix_covers_the_promised_releases():
    torches = [torch for _python, torch, _tf in matrix_cells.TORCH_CELLS]
    assert torches == ["2.0.1", "2.1.2", "2.2.2", "2.3.1", "2.4.1", "2.5.1", "2.6.0", "2.7.1",
                       "2.8.0", "2.9.1", "2.10.0", "2.11.0", "2.12.1", "2.13.0", "2.14.1"]
    on_one_torch = {tf for _python, torch, tf in matrix_cells.MATRIX if torch == "2.13.0"}
    assert on_one_torch == {"4.44.2", "4.52.4", "4.57.6", "5.0.0", "5.24.0"}
    pythons = {python for python, _torch, _tf in matrix_cells.MATRIX}
    assert {"3.9", "3.11", "3.12"} <= pythons
    ids = [matrix_cells.cell_id(*cell) for cell in matrix_cells.MATRIX]
    assert len(ids) == len(set(ids))
