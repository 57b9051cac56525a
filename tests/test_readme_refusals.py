"""README's "What gradsurg refuses" rows that name their test files (issue 26 on) give the
number of test cases those files hold: counted by pytest's own collection, not by hand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

#: Which collected cases each row counts: its files, and a filter for a file it shares.
PARTS = {
    "test_nonfinite_rows.py": lambda case: "gradscaler_under" not in case
    and "closure" not in case,
}
SHARED = {  # rows that count only some cases of a file another row counts
    "Python API": {"test_nonfinite_rows.py": lambda case: "gradscaler_under" in case
                   or "closure" in case,
                   "test_packaging.py": lambda case: "trainer_integration" in case},
}


def rows() -> list[tuple[str, list[str], int]]:
    block = README[README.index("| class | cases | examples |"):].split("\n\n", 1)[0]
    found = []
    for line in block.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        files = re.findall(r"`(test_\w+\.py)`", cells[0])
        if files:
            found.append((cells[0], files, int(cells[1].replace(",", ""))))
    return found


def collected(files: list[str]) -> list[str]:
    """The node ids pytest collects from `files` (one collection for all of them)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *[f"tests/{name}" for name in sorted(set(files))]],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    return [line for line in result.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_every_issue_26_row_counts_its_tests():
    table = rows()
    assert len(table) == 7, [row[0] for row in table]
    everything = collected([name for _, files, _ in table for name in files])
    for title, files, cases in table:
        shared = next((parts for name, parts in SHARED.items() if title.startswith(name)), {})
        count = 0
        for name, case in ((line.split("::")[0].split("/")[-1], line) for line in everything):
            if name not in files:
                continue
            keep = shared.get(name) or PARTS.get(name) or (lambda case: True)
            count += bool(keep(case))
        assert count == cases, (title, count, cases)
