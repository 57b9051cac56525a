"""Numbers README quotes come from a results file it names: keep the two in step."""

from __future__ import annotations

import json
import re
from itertools import takewhile
from pathlib import Path

import yaml
from quoted_numbers import assert_quotes_only

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
    from gradsurg.multiexit.evaluation.comparison import compare_runs
    from gradsurg.run_folder import load_run

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
    # up to the depth study's bullet, whose numbers come from docs/depth_study.md
    paragraph = text[start:text.index("- **Tuned and compute-matched baselines**", start)]
    assert "docs/study.md" in paragraph
    report = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    assert_quotes_only(paragraph, report, at_least=10, message=(
        "README's study paragraph quotes {number}, which docs/study.md does not have"))


def test_readme_depth_study_numbers_are_in_the_depth_study_report():
    text = readme_text()
    start = text.index("**Tuned and compute-matched baselines**")
    paragraph = text[start:text.index("Without `GLUE_DIR`", start)]
    report = (ROOT / "docs" / "depth_study.md").read_text(encoding="utf-8")
    assert_quotes_only(paragraph, report, at_least=5, message=(
        "README's depth-study bullet quotes {number}, which docs/depth_study.md lacks"))


def load(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def readme_table(after: str) -> tuple[str | None, list[dict[str, str]]]:
    """The first Markdown table after the text `after` (found once) in README: its rows keyed
    by the header's cells, and the results file (`bench/results/....json`) README names last
    between `after` and the table (None if it names none)."""
    raw = (ROOT / "README.md").read_text(encoding="utf-8")
    assert raw.count(after) == 1, f"README has {after!r} {raw.count(after)} times, not once"
    lines = raw[raw.index(after):].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| "))
    block = list(takewhile(str.strip, lines[first:]))  # a table ends at a blank line
    assert all(line.startswith("|") for line in block), block
    header, *rows = ([cell.strip() for cell in line.strip().strip("|").split(" | ")]
                     for line in block[:1] + block[2:])
    named = re.findall(r"`(bench/results/[\w/.]+\.json)`", "\n".join(lines[:first]))
    return (named[-1] if named else None), [dict(zip(header, row, strict=True)) for row in rows]


def check_table(after: str, columns: dict[str, str | tuple[str, float]], key: list[str]) -> str:
    """Every row of README's table after `after` is a row of the results file named before it
    (matched on the `key` columns); every cell is that row's value at the quoted precision.
    Returns the file's path."""
    path, rows = readme_table(after)
    assert path is not None, f"README names no results file before its table after {after!r}"
    stored = load(path)["rows"]
    assert rows, path
    for row in rows:
        matches = [s for s in stored if all(row[h].strip("`") == str(s[columns[h]]) for h in key)]
        assert len(matches) == 1, (path, row)
        for header in row.keys() - key:
            spec = columns[header]
            field, scale = spec if isinstance(spec, tuple) else (spec, 1)
            assert same(row[header], matches[0][field] * scale), (path, row, header)
    return path


def quoted(pattern: str) -> tuple[str, ...]:
    """The numbers README's text matching `pattern` (found once) quotes."""
    found = re.findall(pattern, readme_text())
    assert len(found) == 1, f"README's text not found once: {pattern}"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def check_quotes(quotes: dict[str, list[float]]) -> None:
    for pattern, values in quotes.items():
        numbers = quoted(pattern)
        assert len(numbers) == len(values), pattern
        for number, value in zip(numbers, values, strict=True):
            assert same(number, value), (pattern, number, value)


N = NUMBER
CORE_COLUMNS = {"variant": "variant", "step (s)": "median_step_s", "x plain": "time_ratio",
                "x two_vjps": "time_ratio_to_two_vjps", "extra peak (MB)": "extra_peak_mb",
                "extra peak (flat grads)": "extra_peak_flat_grads"}


def test_readme_core_step_tables_match_the_results_files_they_name():
    assert check_table("`python bench/core_step.py`", CORE_COLUMNS, ["variant"]) == (
        "bench/results/core_step.json")
    assert check_table("The combiners of issue 18, one row each", CORE_COLUMNS, ["variant"]) == (
        "bench/results/core_step_issue18.json")
    assert check_table("The combiners of issue 28, one row each", CORE_COLUMNS, ["variant"]) == (
        "bench/results/core_step_issue28.json")


def test_readme_core_step_prose_matches_its_results_files():
    run, issue18 = load("bench/results/core_step.json"), load(
        "bench/results/core_step_issue18.json")
    setup, targets = run["setup"], run["targets"]
    main = {row["variant"]: row for row in run["rows"]}
    other = {row["variant"]: row for row in issue18["rows"]}
    combiners = [row["time_ratio_to_two_vjps"] for name, row in other.items()
                 if name not in ("plain", "two_vjps")]
    project = main["project_sequential"]
    check_quotes({
        rf"`python bench/core_step.py` \({N}-layer BERT, hidden {N}, random init, {N} exits, "
        rf"batch {N} x {N} tokens, CPU with {N} threads, AdamW; groups `final` and `sd`; surgery "
        rf"on `encoder.layers.\*`, {N} M parameters\)\. Time: median of {N} interleaved steps "
        rf"\(after {N} warm-up rounds\)": [
            setup["layers"], setup["hidden"], setup["exits"], setup["batch"], setup["tokens"],
            setup["threads"], setup["selected_params"] / 1e6, setup["steps"], setup["warmup"]],
        rf"Targets: `sum` <= {N}x plain \(met: {N}x\); `project` <= {N}x plain \(met in this "
        rf"run: {N}x, where the raw two-VJP floor itself took {N}x, so gradsurg's own cost is "
        rf"the `x two_vjps` column: {N};": [
            targets["sum_time_ratio"], main["sum"]["time_ratio"], targets["project_time_ratio"],
            project["time_ratio"], main["two_vjps"]["time_ratio"],
            project["time_ratio_to_two_vjps"]],
        rf"extra peak memory <= {N} flat gradients, i\.e\. 2 \+ 10% \(\*\*not met\*\*: {N} flat "
        rf"gradients, where raw PyTorch's two backward passes already take {N} \({N} in issue "
        rf"18's run\)": [
            targets["extra_peak_flat_grads"], project["extra_peak_flat_grads"],
            main["two_vjps"]["extra_peak_flat_grads"], other["two_vjps"]["extra_peak_flat_grads"]],
        rf"--steps {N} --warmup {N} --memory-steps 2`, results in "
        rf"`bench/results/core_step_issue18.json`\) while the machine was about five times "
        rf"busier \(plain step {N} s\), so only the ratios compare with the table above; "
        rf"`project`'s own ratio came out {N}x there against {N}x here": [
            issue18["setup"]["steps"], issue18["setup"]["warmup"],
            other["plain"]["median_step_s"], other["project_sequential"]["time_ratio"],
            project["time_ratio"]],
        rf"the spread \({N}-{N}x the raw two-VJP floor, `dbmtl` below it\)": [
            min(combiners), max(combiners)],
    })
    words = dict(zip(["one", "two", "three", "four", "five", "six"], range(1, 7), strict=True))
    for pattern, values in {
        r"the machine was about (\w+) times busier": [
            other["plain"]["median_step_s"] / main["plain"]["median_step_s"]],
        r"the matrix's second row adds about (\w+) more": [
            project["extra_peak_flat_grads"] - main["two_vjps"]["extra_peak_flat_grads"]],
        r"keep a k x n running average, (\w+) more flat gradients of memory here": [
            other[name]["extra_peak_flat_grads"]
            - other["project_sequential"]["extra_peak_flat_grads"] for name in ("dbmtl", "moco")],
    }.items():
        (word,) = quoted(pattern)
        assert all(words[word] == round(value) for value in values), (pattern, values)
    # "met" and "not met" are what the numbers say
    assert main["sum"]["time_ratio"] <= targets["sum_time_ratio"]
    assert project["time_ratio"] <= targets["project_time_ratio"]
    assert project["extra_peak_flat_grads"] > targets["extra_peak_flat_grads"]
    assert min(combiners) == other["dbmtl"]["time_ratio_to_two_vjps"] < 1


SPEED_COLUMNS = {"batch": "batch_size", "variant": "variant", "accuracy %": ("accuracy", 100),
                 "time %": "time_percent", "examples/s": "examples_per_second",
                 "speed-up measured": "measured_speedup",
                 "predicted (100 / time %)": "predicted_speedup",
                 "measured / predicted": "measured_over_predicted"}


def test_readme_early_exit_speed_table_and_prose_match_the_results_file_they_name():
    path = check_table("### Measured speed-up", SPEED_COLUMNS, ["batch", "variant"])
    assert path == "bench/results/early_exit_speed.json"
    results = load(path)
    batch1 = [row for row in results["rows"] if row["batch_size"] == 1]
    compacted = [row["measured_over_predicted"] for row in batch1
                 if row["variant"].startswith("entropy") and "no compaction" not in row["variant"]]
    (full,) = (row["seconds_all"] for row in batch1 if row["variant"] == "full depth")
    check_quotes({
        rf"SST-2 dev \({N} sentences, dev order, dynamic padding\), {N} CPU threads, variants "
        rf"alternating batch by batch, median of {N} passes; JSON in `{path}`": [
            results["examples"], results["threads"], results["repeats"]],
        rf"The target, measured / predicted >= {N} at batch 1 and 64, is met in this run": [
            results["target"]],
        rf"\(measured / predicted {N}-{N} with compaction\)": [min(compacted), max(compacted)],
        rf"the full-depth pass at batch 1 took {N}-{N} s across passes": [min(full), max(full)],
    })
    assert results["target_met"] is True


def test_readme_reproduction_numbers_are_in_the_report_it_names():
    """Every decimal number, time budget and exit count of README's reproduction paragraph is
    in docs/reproduction.md (the report `bench/reproduce_romebert.py` writes from its runs)."""
    text = readme_text()
    start = text.index("`bench/reproduce_romebert.py` trains all four modes")
    paragraph = text[start:text.index("## Command line", start)]
    assert "[`docs/reproduction.md`](docs/reproduction.md)" in paragraph
    report = " ".join((ROOT / "docs" / "reproduction.md").read_text(encoding="utf-8").split())
    quotes = re.findall(r"(?<![\d.])\d+\.\d+(?!\d)|<= \d+%|\d+ of the \d+ exits", paragraph)
    assert len(quotes) >= 15, quotes
    for quote in quotes:
        assert re.search(rf"(?<![\d.]){re.escape(quote)}(?!\d)", report), \
            f"README's reproduction paragraph quotes {quote!r}, which docs/reproduction.md lacks"


def recipe_row(name: str) -> dict[str, str]:
    """The row of README's recipes table whose first cell starts with `name` in backticks."""
    _, rows = readme_table("| recipe (mode) | tiny end-to-end | real data |")
    (row,) = (row for row in rows if row["recipe (mode)"].startswith(f"`{name}`"))
    return row


def test_readme_digits_numbers_match_the_results_file_they_name():
    cell = recipe_row("digits_project")["real data"]
    (path,) = re.findall(r"\(`(bench/results/[\w/.]+\.json)`, from `bench/digits_combiners.py`\)",
                         cell)
    stored = {(row["combiner"], row["epochs"]): min(row["exit_accuracy"])
              for row in load(path)["rows"]}
    assert cell.startswith("scikit-learn digits, six epochs, lowest exit accuracy")
    quotes = re.findall(rf"(\w+) {N}(?: \({N} after ten epochs\))?(?=,| \||$)",
                        cell.split("):", 1)[1])
    assert {name for name, *_ in quotes} == {name for name, epochs in stored if epochs == 6}
    for name, six, ten in quotes:
        assert same(six, stored[name, 6]), (name, six)
        assert same(ten, stored[name, 10]) if ten else (name, 10) not in stored, (name, ten)


def stored_run(mode: str, pattern: str) -> tuple[tuple[str, ...], dict, dict]:
    """The numbers README's `mode` row quotes (its real-data cell matching `pattern`, whose
    first group is the results file), that file and the resolved recipe stored beside it,
    checked to be the run the row describes (SST-2, 4,000 sentences, MiniLM, one epoch)."""
    found = re.findall(pattern, recipe_row(mode)["real data"])
    assert len(found) == 1, f"README's {mode} row does not read: {pattern}"
    path, *numbers = found[0]
    results = load(path)
    recipe = yaml.safe_load((ROOT / path).with_name("recipe.yaml").read_text())
    assert (results["mode"], results["task"], results["model"]) == (mode, "sst2", "minilm")
    assert (recipe["train_rows"], recipe["epochs"], recipe["eval_split"]) == (4000, 1, "dev")
    assert (ROOT / path).with_name("exit_logits.safetensors").is_file()
    return tuple(numbers), results, recipe


def test_readme_pabee_numbers_match_the_results_file_it_names():
    numbers, results, _ = stored_run("pabee", (
        rf"^SST-2, 4,000 sentences, MiniLM, one epoch \(`([\w/.]+\.json)`\): final exit {N}%; "
        rf"patience {N}: {N}% at {N}% time, patience {N}: {N}% at {N}%$"))
    final, *points = numbers
    assert same(final, results["exit_metrics"][-1]["accuracy"] * 100)
    assert results["exit_policy"] == {"name": "patience"}
    for patience, accuracy, time in zip(points[::3], points[1::3], points[2::3], strict=True):
        (point,) = (p for p in results["sweep"] if p["patience"] == float(patience))
        assert same(accuracy, point["accuracy"] * 100) and same(time, point["time_percent"])


def test_readme_elbert_numbers_match_the_results_file_it_names():
    numbers, results, recipe = stored_run("elbert", (
        rf"^no ALBERT weights offline; on MiniLM \(SST-2, 4,000 sentences, one epoch; "
        rf"`([\w/.]+\.json)`\): final exit {N}%; early exit gives {N}% at every threshold, at "
        rf"{N}% expected time up to threshold {N} and {N}% at {N} \(the window rule decides; the "
        rf"early exits' weights moved "
        rf"only from 0\.5 to {N}-{N} at lr (\S+)\)$"))
    final, accuracy, time, up_to, last_time, last, low, high, lr = numbers
    assert same(final, results["exit_metrics"][-1]["accuracy"] * 100)
    assert results["exit_policy"]["name"] == "confidence_window"
    sweep = results["sweep"]
    assert max(p["threshold"] for p in sweep) == float(last)
    for point in sweep:  # one accuracy everywhere; the time as quoted on either side of up_to
        quoted_time = time if point["threshold"] <= float(up_to) else last_time
        assert same(accuracy, point["accuracy"] * 100) and same(quoted_time,
                                                                point["time_percent"]), point
    early = [value for key, value in results["loss_terms"].items()
             if key.startswith("joint/exits/exit_weight/")][:-1]
    assert same(low, min(early)) and same(high, max(early))
    assert float(lr) == recipe["optimizer"]["lr"]


def test_readme_elbert_own_rate_numbers_match_both_results_files():
    text = " ".join((ROOT / "README.md").read_text().split())
    found = re.findall(
        rf"Re-measured on the stored ELBERT run's recipe with the weights at their own rate "
        rf"\(`([\w/.]+\.json)`\): the early exits' weights fell to {N}-{N}, the final exit "
        rf"reached {N}%, and the least expected time within one point of it rose from {N}% to "
        rf"{N}%", text)
    assert len(found) == 1, "README lost the re-measured ELBERT sentence"
    path, low, high, final, before, after = found[0]
    results = load(path)
    recipe = yaml.safe_load((ROOT / path).with_name("recipe.yaml").read_text())
    stored = yaml.safe_load((ROOT / "bench/results/elbert/recipe.yaml").read_text())
    # the same run, the weights' rate at its new default (null: 1e-2)
    assert recipe.pop("exit_weights_lr") is None and recipe == stored
    early = [v for k, v in results["loss_terms"].items() if k.startswith("joint/exits/")][:-1]
    assert same(low, min(early)) and same(high, max(early))
    assert same(final, results["exit_metrics"][-1]["accuracy"] * 100)
    assert same(after, results["tradeoff"]["least_time_within"])
    assert same(before, load("bench/results/elbert/results.json")["tradeoff"][
        "least_time_within"])


def test_readme_hard_inputs_table_matches_its_results_file():
    """README's exactness table quotes the worst cases of `bench/hard_inputs.py`, in order."""
    results = load("bench/results/hard_inputs.json")["results"]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    after = text.split("**Exactness on hard inputs.**", 1)[1]
    section = after.split("\n\n", 2)[1]
    assert "`bench/results/hard_inputs.json`" in after.split("\n\n", 1)[0]

    def worst(name: str, key: str, kinds=("wide", "dependent", "copies")) -> float:
        return max(results[kind][name][key] for kind in kinds if key in results[kind][name])

    def order(name: str) -> list[float]:
        return [worst(name, "order", ["dependent"]), worst(name, "order", ["wide", "copies"])]

    expected = {
        "upgrad": [*order("upgrad"), worst("upgrad", "infeasible"), worst("upgrad", "gap"),
                   worst("upgrad", "distance", ["wide"])],
        "dualproj": [*order("dualproj"), worst("dualproj", "infeasible"),
                     worst("dualproj", "gap"), worst("dualproj", "distance", ["wide"])],
        "mgda": [worst("mgda", "order"), worst("mgda", "gap"), worst("mgda", "distance", ["wide"])],
        "cagrad": [worst("cagrad", "order"), worst("cagrad", "infeasible"), worst("cagrad", "gap")],
        "pcd": [worst("pcd", "order"), worst("pcd", "infeasible"), worst("pcd", "gap"),
                worst("pcd", "distance", ["wide"])],
    }
    rows = {re.findall(r"`(\w+)`", line)[0]: line for line in section.splitlines()[2:]}
    for name, values in expected.items():
        quoted_numbers = re.findall(r"\d\.\de-\d+", rows[name])
        assert quoted_numbers == [f"{v:.1e}".replace("e-0", "e-") for v in values], name
    assert f"{-results['dependent']['pcd']['declared_infeasible_cvxpy_step_min']:.1e}".replace(
        "e+0", "e") in text  # "a step over 2.5e6 times the primary's length"


def test_readme_issue_28_core_step_prose_matches_its_results_file():
    rows = {row["variant"]: row for row in load("bench/results/core_step_issue28.json")["rows"]}
    project = rows["project_sequential"]["time_ratio"]
    spread = max(abs(rows[name]["time_ratio"] - project)
                 for name in ("pcd", "cr_mogm", "blockwise_project"))
    sdmgrad, modo = rows["sdmgrad"], rows["modo"]
    check_quotes({
        r"`bench/results/core_step_issue28.json`; plain step ([\d.]+) s,": [
            rows["plain"]["median_step_s"]],
        rf"\({N}x against {N}x plain, the same memory: six rows\)": [
            rows["exit_blockwise_upgrad"]["time_ratio"], rows["exit_upgrad"]["time_ratio"]],
        rf"`sdmgrad` and `modo` cost {N}x and {N}x a plain step per optimizer step, i\.e\. about "
        rf"{N}x and {N}x per batch, but hold three batches' graphs at once: {N} flat": [
            sdmgrad["time_ratio"], modo["time_ratio"], sdmgrad["time_ratio"] / 3,
            modo["time_ratio"] / 3, sdmgrad["extra_peak_flat_grads"]]})
    (bound,) = quoted(r"cost what `project` costs \(within ([\d.]+)x of it")
    assert spread <= float(bound), (spread, bound)
    assert rows["sdmgrad"]["batches_per_step"] == rows["modo"]["batches_per_step"] == 3
    assert rows["exit_upgrad"]["groups"] == rows["exit_blockwise_upgrad"]["groups"] == 6


def test_readme_conflict_blocks_cost_matches_its_results_file():
    rows = {row["variant"]: row
            for row in load("bench/results/core_step_conflict_blocks.json")["rows"]}
    logged, plain_project = rows["project_conflict_blocks"], rows["project_sequential"]
    check_quotes({
        rf"`bench/results/core_step_conflict_blocks.json`\): {N}x plain against {N}x, extra "
        rf"peak {N} flat gradients against {N}\.": [
            logged["time_ratio"], plain_project["time_ratio"],
            logged["extra_peak_flat_grads"], plain_project["extra_peak_flat_grads"]]})
