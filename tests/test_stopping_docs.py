"""docs/stopping_and_seeds.md's tables are its results files: each equals what bench/stopping_docs.py generates
from bench/results/ with the project's own report code, and a changed cell or a missing table is caught. Text
only: no training.

    python -m pytest tests/test_stopping_docs.py -q
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import stopping_docs  # noqa: E402


def test_the_tables_are_the_committed_results():
    assert stopping_docs.check() == ""


def test_a_changed_cell_or_a_missing_table_is_caught(tmp_path):
    with open(stopping_docs.PAGE) as f:
        text = f.read()
    table = stopping_docs.gold_audit()
    row = next(line for line in table.splitlines() if line.startswith("| audit, window 4"))
    cell = row.rsplit(" | ", 1)[1]  # the mean gold kept, as "0.544 |"
    page = tmp_path / "page.md"
    page.write_text(text.replace(row, row.replace(" | " + cell, " | 0.999 |"), 1))
    problem = stopping_docs.check(str(page))
    assert "'gold_audit' differs" in problem and f"+{row}" in problem
    page.write_text(text.replace("<!-- end table: seed_fits -->", "", 1))
    assert "'seed_fits' is missing" in stopping_docs.check(str(page))
