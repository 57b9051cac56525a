"""The conflict map as a feature: the map of a training log (each line weighing the steps it
covers), its verdict, its heatmap, `gradsurg compare` drawing it for a run that logged
per-block cosines, and `gradsurg conflicts RECIPE --steps N` measuring it in memory."""

from __future__ import annotations

import json
import re

import pytest
from cli_runs import ROMEBERT_RECIPE, invoke, one_line_error, tiny_recipe
from fake_runs import DEEBERT, ROMEBERT, compare, write_run

from gradsurg.errors import ConfigError
from gradsurg.report.conflicts import block_rates, conflict_map, verdict
from gradsurg.report.plots import plot_conflict_map

L0, L1 = "encoder.layers.0", "encoder.layers.1"


def line(step: int, **cells: float) -> dict:
    """A log line of stage `joint` at `step`: `cells` as `l0_a_b=...` -> cosine / conflict."""
    record: dict = {"stage": "joint", "step": step, "loss/exit1": 0.5}
    for name, value in cells.items():
        measure, layer, a, b = name.split("_")
        record[f"{measure}/encoder.layers.{layer[1:]}/exit{a}/exit{b}"] = value
    return record


def test_each_line_weighs_the_steps_it_covers():
    """log_every 10 over 25 steps: lines at 10, 20, 25; the last covers 5 steps, not 10."""
    records = [line(10, cosine_l0_1_2=0.5, conflict_l0_1_2=0.0),
               line(20, cosine_l0_1_2=0.2, conflict_l0_1_2=0.3),
               line(25, cosine_l0_1_2=-0.4, conflict_l0_1_2=1.0)]
    result = conflict_map(records)
    assert result["mean_cosine"][L0]["exit1/exit2"] == pytest.approx((5 + 2 - 2) / 25)
    assert result["conflict_share"][L0]["exit1/exit2"] == pytest.approx((0 + 3 + 5) / 25)
    assert (result["log_lines"], result["steps"]) == (3, 25)


def test_blocks_and_pairs_in_natural_order_and_unseen_pairs_empty():
    records = [line(1, cosine_l10_2_10=0.1, conflict_l10_2_10=0.0, cosine_l2_1_2=0.3,
                    conflict_l2_1_2=0.0, cosine_l2_2_10=-0.2, conflict_l2_2_10=1.0)]
    result = conflict_map(records)
    assert result["blocks"] == ["encoder.layers.2", "encoder.layers.10"]
    assert result["pairs"] == ["exit1/exit2", "exit2/exit10"]
    assert result["mean_cosine"]["encoder.layers.10"]["exit1/exit2"] is None


def test_nan_logged_as_null_is_skipped_and_lines_without_cells_still_count_steps():
    """A step with a NaN cosine (null in the log) adds nothing; a line of other keys only
    moves the step on (so the next line covers only its own steps)."""
    records = [line(1, cosine_l0_1_2=None, conflict_l0_1_2=None), line(2),
               line(3, cosine_l0_1_2=0.6, conflict_l0_1_2=0.0)]
    result = conflict_map(records)
    assert result["mean_cosine"][L0]["exit1/exit2"] == pytest.approx(0.6)
    assert (result["log_lines"], result["steps"]) == (1, 1)


@pytest.mark.parametrize(("records", "message"), [
    ([{"step": 1, "cosine/exit1/exit2": 0.3}], "no per-block cosines"),  # whole-vector only
    ([line(5, cosine_l0_1_2=0.1), line(5, cosine_l0_1_2=0.2)], "step 5 of stage 'joint' comes "
     "after step 5"),
    ([line(1, cosine_l0_1_2="high")], "is 'high', not a number"),
])
def test_a_log_the_map_cannot_read_is_a_config_error(records, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        conflict_map(records)


def grid(shares: dict[str, float]) -> dict:
    """A map of layer 0 with the given pair -> conflict share (cosine 0.5 - share)."""
    records = [line(1, **{f"conflict_l0_{pair}": s for pair, s in shares.items()},
                    **{f"cosine_l0_{pair}": 0.5 - s for pair, s in shares.items()})]
    return conflict_map(records)


def test_the_verdict_counts_cells_at_or_above_the_share():
    result = grid({"1_2": 0.1, "1_3": 0.099, "2_3": 0.4})
    judged = verdict(result, 0.1)
    assert judged.acts and judged.cells == 3
    assert judged.hot == [(L0, "exit2/exit3", 0.4), (L0, "exit1/exit2", 0.1)]  # 0.1 counts
    assert judged.text() == ("surgery has something to act on: 2 of 3 (block, pair) cells are "
                             "in conflict on >= 10% of steps (most: exit2/exit3 in "
                             f"{L0}, 40.0%)")
    calm = verdict(result, 0.5)
    assert not calm.acts
    assert calm.text().startswith("nothing to act on: none of the 3 (block, pair) cells is in "
                                  "conflict on >= 50% of steps")
    (row,) = block_rates(result, 0.1)
    assert row["pairs"] == 3 and row["cells_in_conflict"] == 2
    assert row["conflict_share"] == pytest.approx(0.599 / 3)
    with pytest.raises(ConfigError, match="must be in"):
        verdict(result, 0.0)


def test_the_heatmap_is_a_png(tmp_path):
    result = conflict_map([line(1, cosine_l0_1_2=0.5, conflict_l0_1_2=0.0,
                                cosine_l1_2_3=-0.1, conflict_l1_2_3=1.0)])
    path = plot_conflict_map(result, tmp_path / "map.png")
    assert path.read_bytes().startswith(b"\x89PNG")


# ---- gradsurg compare ---------------------------------------------------------------------

def test_compare_draws_the_map_of_a_run_that_logged_block_cosines(tmp_path):
    plain = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    logged = write_run(tmp_path / "b", "romebert", ROMEBERT, [0.75, 0.75])
    records = [line(2, cosine_l0_1_2=-0.2, conflict_l0_1_2=0.5),
               line(3, cosine_l0_1_2=0.4, conflict_l0_1_2=0.0)]
    (logged / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (plain / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss/final": 0.1}) + "\n")
    out = tmp_path / "out"
    result = compare(plain, logged, "--output", out)
    assert result.exit_code == 0, result.output
    # the map: layer 0, exit1/exit2, conflict on 1 of 3 steps, mean cosine (-0.4 + 0.4) / 3
    assert ("conflicts: romebert: its train_log.jsonl holds per-block cosines (3 steps); "
            "surgery has something to act on: 1 of 1") in result.output
    assert f"heatmap: {out / 'conflicts_romebert.png'}" in " ".join(result.output.split())
    assert "conflicts: deebert" not in result.output
    assert (out / "conflicts_romebert.png").read_bytes().startswith(b"\x89PNG")
    assert not (out / "conflicts_deebert.png").exists()
    data = json.loads((out / "compare.json").read_text())
    (label,) = data["conflict_maps"]
    stored = data["conflict_maps"]["romebert"]
    assert label == "romebert" and stored["plot"] == "conflicts_romebert.png"
    assert stored["conflict_share"][L0]["exit1/exit2"] == pytest.approx(1 / 3)
    assert stored["mean_cosine"][L0]["exit1/exit2"] == pytest.approx(0.0)
    text = (out / "compare.md").read_text()
    assert "![conflict map of romebert](conflicts_romebert.png)" in text
    assert f"| {L0} | 1 | 33.3% | +0.000 | exit1/exit2 (33.3%) |" in text


def test_compare_without_such_runs_is_unchanged(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    out = tmp_path / "out"
    result = compare(a, "--output", out)
    assert result.exit_code == 0, result.output
    assert "conflicts:" not in result.output
    assert "conflict_maps" not in json.loads((out / "compare.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md",
                                                     "metric_vs_time.png", "per_exit.png"]


# ---- gradsurg conflicts: refusals, before any step --------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["no-such-recipe.yaml", "--steps", "5"], "recipe no-such-recipe.yaml does not exist"),
    ([ROMEBERT_RECIPE, "--steps", "0"], "--steps 0: must be >= 1"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--set", "no_such_key=1"], "key 'no_such_key': unknown key"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--share", "0"], "--share 0: must be in (0, 1]"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--share", "1.5"], "--share 1.5: must be in (0, 1]"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--set", "mode=pabee", "--set", "combiner=null"],
     "conflicts: mode pabee trains the single loss group 'exits', which has no per-group form"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--set", "mode=elbert", "--set", "combiner=null"],
     "conflicts: mode elbert trains the single loss group 'exits'"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--set", "mode=deebert", "--set", "combiner=null"],
     "conflicts: mode deebert trains one loss group per stage"),
    ([ROMEBERT_RECIPE, "--steps", "5", "--json", "no/such/folder/map.json"],
     "--json no/such/folder/map.json: folder 'no/such/folder' does not exist"),
])
def test_bad_input_is_one_error_line_before_any_step(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(["conflicts", *args], message)
    assert list(tmp_path.iterdir()) == []  # nothing written, no run folder


def test_more_steps_than_the_recipe_trains_is_refused_before_the_first(
        tmp_path, tiny_bert_dir, shared_glue_dir, monkeypatch):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd")
    monkeypatch.chdir(tmp_path)
    output = one_line_error(["conflicts", recipe, "--steps", "3"],
                            "--steps 3: the recipe trains 2 optimizer steps")
    assert "joint" not in output  # no progress bar: not one step trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


# ---- gradsurg conflicts: a real measurement ---------------------------------------------

@pytest.mark.slow
def test_conflicts_measures_in_memory_and_its_verdict_follows_its_numbers(
        tmp_path, tiny_bert_dir, shared_glue_dir, monkeypatch):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert",
                         train_rows=24)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    json_path, plot_path = tmp_path / "map.json", tmp_path / "map.png"
    result = invoke("conflicts", recipe, "--steps", "2", "--json", json_path,
                    "--plot", plot_path)
    assert result.exit_code == 0, result.output
    # nothing but what was asked for: no run folder, no log, no checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.json", "map.png", "tiny.yaml"]
    data = json.loads(json_path.read_text())
    assert data["groups"] == ["exit1", "exit2", "exit3"]  # romebert: per exit, SD shares
    assert "exit_groups: sd" in data["trained_as"]
    assert "combiner project is not applied while measuring" in data["trained_as"]
    assert (data["steps"], data["log_lines"]) == (2, 2)  # one record per step
    assert data["command"][:5] == ["gradsurg", "conflicts", str(recipe), "--steps", "2"]
    assert data["plot"]["file"] == "map.png"
    # 3 exits: layer 1 sees all three pairs, layer 2 exits 2 and 3, layer 3 exit 3 alone
    assert data["blocks"] == [L0, L1]
    assert data["conflict_share"][L1]["exit1/exit2"] is None
    shares = [s for block in data["blocks"] for s in data["conflict_share"][block].values()
              if s is not None]
    assert len(shares) == 4 and all(s in (0.0, 0.5, 1.0) for s in shares)  # of 2 steps
    hot = sum(s >= 0.1 for s in shares)
    expected = (f"surgery has something to act on: {hot} of 4 (block, pair) cells" if hot
                else "nothing to act on: none of the 4 (block, pair) cells")
    assert expected in " ".join(result.output.split())
    assert data["verdict"]["cells_in_conflict"] == hot
    for block in data["blocks"]:  # every cell of the map is on screen
        for pair, share in data["conflict_share"][block].items():
            if share is not None:
                cosine = re.escape(f"{data['mean_cosine'][block][pair]:+.3f}")
                assert re.search(rf"{re.escape(block)}\s+│\s+{pair}\s+│\s+{cosine}\s+│\s+"
                                 rf"{share * 100:.1f}%", result.output), (block, pair)


@pytest.mark.slow
def test_the_measured_steps_are_the_runs_first_steps(tmp_path, tiny_bert_dir, shared_glue_dir):
    """`conflicts --steps 2` trains what `gradsurg run` of its per-group form trains in its
    first 2 steps (3 in all; the same LR schedule): the same records, to the bit."""
    from gradsurg.programs.multiexit_glue.conflicts import measure_conflicts
    from gradsurg.recipes import load_recipe

    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
                         train_rows=24)
    _, config = load_recipe(recipe)
    measured = measure_conflicts(config, 2)
    out = tmp_path / "run"
    result = invoke("run", recipe, "--output", out, "--set", "exit_groups=sd",
                    "--set", "combiner={name: blockwise, inner: sum}", "--set", "save_model=false")
    assert result.exit_code == 0, result.output
    logged = [json.loads(text) for text in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(logged) == 3
    assert json.loads(json.dumps(measured.records)) == logged[:2]


# ---- README: the quickstart model's map ---------------------------------------------------

def test_readme_quickstart_map_is_the_stored_one():
    """README's quickstart conflict map: its command and commit, the verdict and the per-layer
    rows it quotes are the stored JSON's (rows recomputed from its cells), and the PNG it shows
    is the one that run drew (its sha256 is in the JSON)."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    flat = " ".join(text.split())
    found = re.search(r"The quickstart model's conflict map \(`(gradsurg conflicts [^`]+)`, "
                      r"commit ([0-9a-f]{7,}), ([\d.]+) minutes?[^)]*\): `([\w/.]+\.json)`", flat)
    assert found, "README's quickstart conflict map sentence not found"
    command, commit, _, path = found.groups()
    data = json.loads((root / path).read_text())
    recorded = data["command"]
    assert recorded[recorded.index("--json"):] == [
        "--json", path, "--plot", path.removesuffix(".json") + ".png"]
    assert " ".join(recorded[:recorded.index("--json")]) == command
    assert data["recipe"] == "recipes/quickstart.yaml"
    assert data["commit"].startswith(commit) and data["dirty"] is False
    assert data["verdict"]["text"] in flat and data["verdict"]["share"] == 0.1
    # the per-layer rows: | layer | pairs | steps in conflict | mean cosine | most in conflict |
    rows = re.findall(r"^\| (\d+) \| (\d+) \| ([\d.]+)% \| ([+-][\d.]+) \| (exit\d+/exit\d+) "
                      r"\(([\d.]+)%\) \|$", text, flags=re.M)
    assert [int(row[0]) for row in rows] == [int(b.rsplit(".", 1)[1]) + 1
                                             for b in data["blocks"]]
    for row, block in zip(rows, data["blocks"]):
        cells = {p: (data["conflict_share"][block][p], data["mean_cosine"][block][p])
                 for p in data["pairs"] if data["conflict_share"][block][p] is not None}
        most = max(cells, key=lambda p: cells[p][0])
        assert list(row[1:]) == [
            str(len(cells)), f"{100 * sum(s for s, _ in cells.values()) / len(cells):.1f}",
            f"{sum(c for _, c in cells.values()) / len(cells):+.3f}", most,
            f"{100 * cells[most][0]:.1f}"], (block, row)
    image = re.search(r"!\[[^\]]*\]\((bench/results/[\w.]+\.png)\)", flat[found.end():])
    assert image and image.group(1) == path.removesuffix(".json") + ".png"
    png = (root / image.group(1)).read_bytes()
    assert data["plot"] == {"file": Path(image.group(1)).name,
                            "sha256": hashlib.sha256(png).hexdigest()}
