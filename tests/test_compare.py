"""`gradsurg compare` through the real CLI on run folders written here, and its refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fake_runs import DEEBERT, LABELS, ROMEBERT, compare, write_run
from safetensors.torch import save_file


def test_compare_writes_tables_plots_and_hand_computed_numbers(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    b = write_run(tmp_path / "b", "romebert", ROMEBERT, [0.75, 0.75])
    out = tmp_path / "out"
    result = compare(a, b, "--output", out)
    assert result.exit_code == 0, result.output
    assert "area" in result.output and "deebert" in result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["reference"] == {"label": "deebert", "value": 1.0,
                                 "what": "best final exit among the runs"}
    deebert, romebert = data["runs"]
    assert [deebert["label"], romebert["label"]] == ["deebert", "romebert"]
    assert deebert["curve"] == romebert["curve"] == "dense: entropy threshold"
    # deebert's sweep: nobody early (100%, 1.0); example 0 leaves (87.5%, 1.0); 0 and 2
    # (75%, 1.0); 0, 2, 3 (62.5%, 0.75); all (50%, 0.5).
    assert deebert["points"] == [[100.0, 1.0], [87.5, 1.0], [75.0, 1.0], [62.5, 0.75],
                                 [50.0, 0.5]]
    # Front (50, .5), (62.5, .75), (75, 1): area (.5 * 12.5 + .75 * 12.5 + 25) / 50.
    assert deebert["summary"]["auc"] == pytest.approx(0.8125)
    assert deebert["summary"]["least_time_within"] == 75.0
    assert deebert["summary"]["best_within"]["40"] is None
    assert deebert["summary"]["best_within"]["60"] == {"accuracy": 0.5, "time_percent": 50.0}
    # romebert: example 1 leaving at exit 1 fixes exit 2's mistake: 1.0 from 62.5% on.
    assert romebert["points"] == [[100.0, 0.75], [87.5, 1.0], [75.0, 1.0], [62.5, 1.0],
                                  [50.0, 0.75]]
    assert romebert["summary"]["auc"] == pytest.approx((0.75 * 12.5 + 37.5) / 50)
    assert romebert["summary"]["least_time_within"] == 62.5
    assert romebert["train_seconds"] == 12.0
    text = (out / "compare.md").read_text()
    assert "| deebert | 50.00 | 100.00 |" in text
    assert "| romebert | 75.00 | 75.00 |" in text
    assert "| deebert | - | - | - | 50.00 (50.0) | 50.00 (50.0) | 100.00 (75.0) |" in text
    assert "| romebert | - | - | - | 75.00 (50.0) | 75.00 (50.0) | 100.00 (62.5) |" in text
    # Held out, halves {0, 1} and {2, 3}. Within 50%: half 1 picks "both leave at exit 1"
    # (a threshold past example 1's entropy), which lets both of half 2 leave: 1 of 2 right at
    # 50%; half 2 picks "both leave" too (past example 3's entropy), which on half 1 lets only
    # example 0 leave: 2 of 2 at 75%. Within 100%: half 1 picks "example 0 leaves" (1.0 at 75%),
    # on half 2 both leave (0.5 at 50%); half 2's pick lets example 0 leave (1.0 at 75%).
    for budget in ("50", "60", "100"):
        assert deebert["held_out_best_within"][budget] == {"accuracy": 0.75,
                                                           "time_percent": 62.5}
    assert deebert["held_out_best_within"]["40"] is None
    assert "| deebert | - | - | - | 75.00 (62.5) | 75.00 (62.5) | 75.00 (62.5) |" in text
    assert "setting chosen on the other half of the evaluation set" in text
    assert "75.00 (62.5)" in result.output  # the held-out table is on screen too
    assert "![per exit](per_exit.png)" in text and "![metric vs time](metric_vs_time.png)" in text
    for png in ("per_exit.png", "metric_vs_time.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")


def test_without_output_only_prints(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = compare(a)
    assert result.exit_code == 0, result.output
    assert "81.25" in result.output  # the area, on screen
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_runs_without_logits_fall_back_to_the_fixed_list_and_say_so(tmp_path):
    a = write_run(tmp_path / "first", "deebert", DEEBERT, [0.5, 1.0])
    old = write_run(tmp_path / "old", "deebert", None, [0.5, 0.9],
                    extra={"sweep": [{"threshold": 0.0, "accuracy": 0.9, "time_percent": 100.0},
                                     {"threshold": 0.5, "accuracy": 0.8, "time_percent": 70.0}]})
    stored = write_run(tmp_path / "stored", "romebert", None, [0.6, 0.8], extra={
        "dense_sweep": {"policy": {"name": "entropy"}, "parameter": "threshold", "points": [
            {"threshold": 0.0, "accuracy": 0.8, "time_percent": 100.0},
            {"threshold": 0.3, "accuracy": 0.7, "time_percent": 60.0}]}})
    out = tmp_path / "out"
    result = compare(a, old, stored, "--output", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    # Two are deebert: labelled by folder name.
    assert [run["label"] for run in data["runs"]] == ["first", "old", "romebert"]
    # Without logits, a dense sweep stored in results.json is used as it is.
    assert data["runs"][2]["curve"] == "dense (results.json): entropy threshold"
    assert data["runs"][2]["points"] == [[100.0, 0.8], [60.0, 0.7]]
    fallback = data["runs"][1]
    assert fallback["curve"] == "fixed list: entropy"
    assert fallback["points"] == [[100.0, 0.9], [70.0, 0.8]]
    assert len(data["notes"]) == 1 and "has no exit_logits.safetensors" in data["notes"][0]
    assert "Note:" in (out / "compare.md").read_text()
    assert "has no exit_logits.safetensors" in result.output


def one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    mrpc = write_run(tmp_path / "m", "romebert", ROMEBERT, [0.75, 0.75], task="mrpc")
    fewer = write_run(tmp_path / "f", "romebert", [x[:3] for x in ROMEBERT], [0.7, 0.7],
                      labels=LABELS[:3])
    relabelled = write_run(tmp_path / "r", "romebert", ROMEBERT, [0.75, 0.75],
                           labels=[1, 0, 1, 0])
    other_split = write_run(tmp_path / "s", "romebert", None, [0.7, 0.7],
                            extra={"eval_split": "train"})
    no_results = tmp_path / "empty"
    no_results.mkdir()
    broken = shutil.copytree(a, tmp_path / "broken")
    (broken / "results.json").write_text("{not json")
    bad_logits = shutil.copytree(a, tmp_path / "bad_logits")
    (bad_logits / "exit_logits.safetensors").write_bytes(b"\x00garbage")
    wrong_shape = shutil.copytree(a, tmp_path / "wrong_shape")
    save_file({"logits": torch.zeros(3, 4, 2), "labels": torch.zeros(4)},
              wrong_shape / "exit_logits.safetensors")
    not_a_run = write_run(tmp_path / "x", "deebert", None, [0.5])
    (not_a_run / "results.json").write_text(json.dumps({"program": "digits_multiexit"}))
    out = tmp_path / "out"
    cases = [
        ((a, mrpc), ("different tasks", "deebert", "sst2", "romebert", "mrpc")),
        ((a, fewer), ("different evaluation sets", "num_eval_examples", str(fewer))),
        ((a, relabelled), ("different evaluation sets", "dev labels", str(relabelled))),
        ((a, other_split), ("different evaluation sets", "eval_split", "train")),
        ((a, no_results), (str(no_results / "results.json"), "missing")),
        ((a, tmp_path / "nowhere"), ("nowhere", "no such run folder")),
        ((a, broken), (str(broken / "results.json"), "not valid JSON")),
        ((a, bad_logits), (str(bad_logits / "exit_logits.safetensors"), "cannot be read")),
        ((a, wrong_shape), ("wrong_shape", "3 exits, but results.json lists 2")),
        ((a, not_a_run), (str(not_a_run / "results.json"), "missing key 'task'")),
        ((a, a), ("given more than once",)),
    ]
    for runs, fragments in cases:
        one_error_line(compare(*runs, "--output", out), *fragments)
        assert not out.exists(), runs
    out.write_text("a file")
    one_error_line(compare(a, "--output", out), "is not a folder")


@pytest.mark.slow
def test_real_runs_write_logits_and_compare(tiny_bert_dir, shared_glue_dir, tmp_path):
    """Two tiny training runs: exit_logits.safetensors, the dense sweep and the summary in
    results.json, then compare on them; STS-B gets a regression curve (patience, tolerance)."""
    from safetensors.torch import load_file

    from gradsurg.data.glue import get_task
    from gradsurg.multiexit.evaluation.sweeps import per_exit_metrics
    from gradsurg.programs.multiexit_glue import run
    from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

    def config(**overrides):
        return MultiExitGlueConfig(
            program="multiexit_glue", model=str(tiny_bert_dir), data_dir=str(shared_glue_dir),
            train_rows=16, eval_rows=20, batch_size=8, eval_batch_size=16, epochs=1,
            max_length=32, optimizer={"lr": 1e-3}, threads=2, save_model=False, checkpoints=False,
            **overrides)

    folders = []
    for mode in ("romebert", "romebert_sd"):
        folder = tmp_path / mode
        results = run(config(mode=mode), folder)
        (folder / "results.json").write_text(json.dumps(results))
        folders.append(folder)
        saved = load_file(folder / "exit_logits.safetensors")
        assert saved["logits"].shape == (3, 20, 2) and saved["labels"].shape == (20,)
        assert per_exit_metrics(saved["logits"], saved["labels"], get_task("sst2")) == \
            results["exit_metrics"]
        assert (results["eval_split"], results["eval_rows"], results["num_eval_examples"]) == (
            "dev", 20, 20)
        dense = results["dense_sweep"]
        assert dense["policy"] == {"name": "entropy"} and dense["parameter"] == "threshold"
        times = [p["time_percent"] for p in dense["points"]]
        assert times[0] == 100.0 and min(times) == pytest.approx(100 / 3)
        assert results["tradeoff"]["final"] == results["exit_metrics"][-1]["accuracy"]
        assert "sweep" in results  # the fixed list stays
        assert (folder / "plots" / "metric_vs_time_dense.png").is_file()
    result = compare(*folders, "--output", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for run_data, folder in zip(data["runs"], folders):
        saved = json.loads((folder / "results.json").read_text())
        assert run_data["points"] == [[p["time_percent"], p["accuracy"]]
                                      for p in saved["dense_sweep"]["points"]]
    stsb = run(config(mode="romebert", task="stsb"), tmp_path / "stsb")
    assert stsb["dense_sweep"]["policy"] == {"name": "patience", "patience": 1}
    assert stsb["dense_sweep"]["parameter"] == "tolerance"
    assert {"pearson", "spearman"} <= set(stsb["dense_sweep"]["points"][0])
    assert stsb["tradeoff"]["metric"] == "pearson"


def test_a_disk_error_while_writing_is_one_error_line(tmp_path):
    """An output folder that cannot be made (its parent is a file) is an OSError inside
    write_comparison: one `error:` line naming the path and exit code 2, not a traceback."""
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, where the output's parent folder should be")
    out = blocker / "out"
    result = compare(a, "--output", out)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an OSError
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(blocker) in errors[0], result.output
    assert blocker.read_text().startswith("a file") and not out.exists()
