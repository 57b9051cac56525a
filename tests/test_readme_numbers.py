"""Numbers README quotes come from a results file it names: keep the two in step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(\d+(?:\.\d+)?)"

# The quickstart sentence (multi-exit section) and the feature table's quickstart row.
QUOTES = {
    "sentence": (r"The quickstart measured here \(`([\w/.]+\.json)`\): final exit " + NUMBER
                 + r"% on SST-2 dev, " + NUMBER + r"% at " + NUMBER
                 + r"% expected time \(entropy < " + NUMBER + r"\)"),
    "table row": (r"\| `quickstart` \(romebert\) \| yes \| SST-2, 4,000 sentences \(`([\w/.]+"
                  r"\.json)`\): " + NUMBER + r"% final, " + NUMBER + r"% at " + NUMBER
                  + r"% time \(entropy < " + NUMBER + r"\) \|"),
}


def readme_text() -> str:
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def same(quoted: str, value: float) -> bool:
    """The quoted number is the file's value rounded to the quoted number of decimals."""
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    return quoted == f"{value:.{decimals}f}"


def test_readme_quickstart_numbers_match_the_results_file_it_names():
    text = readme_text()
    recipe = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    for where, pattern in QUOTES.items():
        found = re.findall(pattern, text)
        assert len(found) == 1, f"README's quickstart {where} not found once: {pattern}"
        path, final, early, time, threshold = found[0]
        results = json.loads((ROOT / path).read_text())
        assert (results["mode"], results["task"], results["model"]) == (
            recipe["mode"], recipe["task"], recipe["model"]), path
        assert results["exit_policy"] == {"name": "entropy"}, path
        metric = results["primary_metric"]
        assert same(final, results["exit_metrics"][-1][metric] * 100), (where, final)
        point = next(p for p in results["sweep"] if p["threshold"] == float(threshold))
        assert same(early, point[metric] * 100), (where, early, point)
        assert same(time, point["time_percent"]), (where, time, point)


DENSE = (r"has nothing between that and " + NUMBER + r"% at " + NUMBER + r"% \(entropy < "
         + NUMBER + r"\)\. Its dense sweep \(`gradsurg compare ([\w/.]+)`, from the stored "
         r"`exit_logits.safetensors`\): " + NUMBER + r"% within 30% time, " + NUMBER
         + r"% within 60% time, within 1 point of the final exit from " + NUMBER + r"% time")


def test_readme_quickstart_dense_numbers_match_compare_on_the_stored_run():
    from gradsurg.report.compare import compare_runs, load_run

    found = re.findall(DENSE, readme_text())
    assert len(found) == 1, "README's quickstart dense-sweep sentence not found once"
    next_metric, next_time, threshold, folder, within30, within60, least = found[0]
    results = json.loads((ROOT / folder / "results.json").read_text())
    point = next(p for p in results["sweep"] if p["threshold"] == float(threshold))
    assert same(next_metric, point["accuracy"] * 100) and same(next_time, point["time_percent"])
    comparison = compare_runs([load_run(ROOT / folder)])
    (run,) = comparison.runs
    assert run.curve == "dense: entropy threshold"  # from the stored logits, not the list
    assert same(within30, run.summary.best_within["30"]["accuracy"] * 100)
    assert same(within60, run.summary.best_within["60"]["accuracy"] * 100)
    assert same(least, run.summary.least_time_within)


def test_same_compares_at_the_quoted_precision():
    assert same("80.3", 80.28) and same("79.13", 79.1284) and same("57", 56.9)
    # README's numbers before this test: 80.3 / 80.2 at 56.7 against a fresh 79.13 / 78.67 at 56.9.
    assert not same("80.3", 79.13) and not same("80.2", 78.67) and not same("56.7", 56.9)


def test_readme_study_numbers_are_in_the_study_report_it_names():
    """Every two-decimal number of README's study paragraph is in docs/study.md (the report
    `bench/study.py --report` writes from the runs and bench/results/study_cost.json)."""
    text = readme_text()
    start = text.index("**Study")
    paragraph = text[start:text.index("Without `GLUE_DIR`", start)]
    assert "docs/study.md" in paragraph
    report = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    quoted = re.findall(r"(?<![\d.])\d+\.\d\d(?![\d])", paragraph)
    assert len(quoted) >= 10, quoted
    for number in quoted:
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", report), \
            f"README's study paragraph quotes {number}, which docs/study.md does not have"
