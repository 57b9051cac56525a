"""`gradsurg plugins` lists every method with what it is tested against, and says what
README's feature tables say."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.combiners import COMBINERS
from gradsurg.registry import BUILT_IN
from gradsurg.tested_against import COMBINERS as COMBINER_TESTS
from gradsurg.tested_against import WEIGHTINGS as WEIGHTING_TESTS
from gradsurg.weightings import WEIGHTINGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_rows(header: str) -> dict[str, str]:
    """name -> the last cell of its row in the README table that starts with `header`."""
    block = README[README.index(header):].split("\n\n", 1)[0].splitlines()[2:]
    rows = {}
    for line in block:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for name in re.findall(r"`(\w+)`", cells[0]):
            rows[name] = cells[-1]
    return rows


def test_every_built_in_method_has_its_readme_row():
    built_in_combiners = {e.name for e in COMBINERS.entries() if e.source == BUILT_IN}
    built_in_weightings = {e.name for e in WEIGHTINGS.entries() if e.source == BUILT_IN}
    assert set(COMBINER_TESTS) == built_in_combiners
    assert set(WEIGHTING_TESTS) == built_in_weightings
    combiner_rows = readme_rows("| combiner | tested against |")
    weighting_rows = readme_rows("| name | what | state | tested against |")
    for name, text in COMBINER_TESTS.items():
        assert combiner_rows[name] == text, name
    for name, text in WEIGHTING_TESTS.items():
        assert weighting_rows[name] == text, name


def test_plugins_json_lists_what_each_method_is_tested_against():
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    combiners = {e["name"]: e["tested_against"] for e in listing["combiners"]["entries"]}
    assert combiners["upgrad"] == COMBINER_TESTS["upgrad"]
    assert combiners["balanced_sum"].startswith("a numpy reference")  # the plugin's own
    weightings = {e["name"]: e["tested_against"] for e in listing["loss_weightings"]["entries"]}
    assert all(weightings[name] for name in WEIGHTING_TESTS)
    assert all(e["tested_against"] is None for e in listing["programs"]["entries"])
