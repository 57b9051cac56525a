"""The cases that need a (tiny) run: a run whose model goes non-finite fails without
saving, an empty parameter selection or an out-of-range STS-B score stops it, two runs cannot
share an output folder, a finished run is never silently replaced, evaluation settings change
on --resume without training again, and a full disk is one error line with nothing
half-written. Each run is a few steps of a 3-layer random BERT."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import invoke, limited_run, one_line_error, tiny_recipe
from safetensors.torch import load_file

from gradsurg.checkpoint import Checkpoints
from gradsurg.errors import NonFiniteError
from gradsurg.outputs import LOCK_FILE, OutputLock


def strict_lines(path: Path) -> list[dict]:
    """Parse JSON lines refusing NaN / Infinity, as a strict JSON reader would."""
    def refuse(token: str) -> None:
        raise AssertionError(f"{path} holds {token}: not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


# --- wrong results with exit code 0 -----------------------------------------------------------

@pytest.mark.slow
def test_a_model_that_goes_non_finite_fails_and_is_not_saved(tmp_path, tiny_bert_dir,
                                                             shared_glue_dir):
    """lr=1e30: the first step blows the weights up, later steps are skipped (fewer than
    max_nonfinite_steps); the run used to save them and report an accuracy with exit 0."""
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, optimizer={"lr": 1e30},
                         train_rows=32)
    out = tmp_path / "out"
    one_line_error(["run", recipe, "--output", out], "NaN/inf")
    assert not (out / "results.json").exists() and not (out / "model").exists()
    log = strict_lines(out / "train_log.jsonl")
    assert len(log) == 4 and log[-1]["skipped_steps"] >= 1
    assert log[-1]["loss/final"] is None  # a skipped step's loss: null, never NaN
    assert not (out / LOCK_FILE).exists()


def test_checkpoints_refuse_non_finite_weights(tmp_path):
    model = torch.nn.Linear(2, 2)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    checkpoints.save(1, model=model, state={"step": 1})
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="weight"):
        checkpoints.save(2, model=model, state={"step": 2})
    assert checkpoints.steps() == [1]  # the last good checkpoint stays the latest


@pytest.mark.slow
@pytest.mark.parametrize("selection", [
    ["exclude=['*']"], ["include=['encoder.*']", "exclude=['encoder.*']"],
    ["include=null", "exclude=['*']"],
])
def test_an_empty_surgery_selection_is_refused(selection, tmp_path, tiny_bert_dir,
                                               shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, checkpoints=False)
    args: list[object] = ["run", recipe, "--output", tmp_path / "out"]
    for item in selection:
        args += ["--set", item]
    one_line_error(args, "select no trainable parameter")
    assert not (tmp_path / "out" / "results.json").exists()


def stsb_folder(tmp_path: Path, glue_dir: Path, bad_score: str) -> Path:
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    lines = (glue_dir / "STS-B" / "train.tsv").read_text(encoding="utf-8").splitlines()[:6]
    fields = lines[3].split("\t")
    fields[-1] = bad_score
    lines[3] = "\t".join(fields)
    (folder / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder.parent


@pytest.mark.parametrize("score", ["7.5", "-3", "5.0001", "-0.01"])
def test_stsb_scores_outside_0_to_5_are_refused_with_file_and_line(score, tmp_path,
                                                                   tiny_bert_dir,
                                                                   shared_glue_dir):
    data = stsb_folder(tmp_path, shared_glue_dir, score)
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, data, task="stsb", exit_policy="patience")
    one_line_error(["run", recipe, "--output", tmp_path / "out"],
                   f"train.tsv:4: score '{score}' in column 'score' is outside stsb's range")


def test_stsb_range_ends_are_accepted(tmp_path, shared_glue_dir):
    from gradsurg.data.glue import read_glue_tsv

    for score in ("0", "5", "5.000"):
        data = stsb_folder(tmp_path / score, shared_glue_dir, score)
        rows = read_glue_tsv(data / "STS-B" / "train.tsv", "stsb")
        assert float(score) in [row.label for row in rows]


def test_a_one_row_stsb_evaluation_reports_pearson_as_undefined(tmp_path, tiny_bert_dir,
                                                                shared_glue_dir):
    from gradsurg.multiexit.model import MultiExitModel

    model, tokenizer = MultiExitModel.from_backbone(str(tiny_bert_dir), num_labels=1)
    model.config.task = "stsb"
    folder = model.save_pretrained(tmp_path / "model", tokenizer=tokenizer)
    report = tmp_path / "report.json"
    result = invoke("eval", folder, "--data-dir", shared_glue_dir, "--max-rows", "1",
                    "--policy", "fixed", "--layer", "3", "--json", report)
    assert result.exit_code == 0, result.output
    assert next(line for line in result.output.splitlines() if "pearson" in line).count(
        "undefined") == 1
    values = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert values["pearson"] is None and values["spearman"] is None


# --- work lost or corrupted -------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_into_a_locked_folder_stops_at_once(tmp_path, tiny_bert_dir,
                                                         shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir)
    out = tmp_path / "out"
    with OutputLock(out):  # another run holds the folder
        one_line_error(["run", recipe, "--output", out], f"output folder {out} is in use")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    result = invoke("run", recipe, "--output", out)  # free again: runs, and cleans its lock up
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_FILE).exists() and (out / "results.json").is_file()


@pytest.mark.slow
def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path, tiny_bert_dir,
                                                                 shared_glue_dir):
    """Another process holds the folder: `run` stops with one line. Once that process is
    killed (SIGKILL: no clean-up ran), the kernel has dropped its lock and a run succeeds."""
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from gradsurg.outputs import OutputLock; "
         f"OutputLock(pathlib.Path({str(out)!r})).acquire(); print('held', flush=True); "
         "sys.stdin.readline()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        command = [sys.executable, "-m", "gradsurg", "run", str(recipe), "--output", str(out)]
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {holder.pid}" in errors[0], second.stderr
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_FILE).exists()  # left behind by the killed holder: not a stale lock
    result = invoke("run", recipe, "--output", out)
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_FILE).exists()


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch,
                                                               tiny_bert_dir, shared_glue_dir):
    class FrozenClock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 12, 0, 0)

    monkeypatch.setattr("gradsurg.cli.dt.datetime", FrozenClock)
    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, tmp_path / "nodata")  # fails at start
    for _ in range(3):
        one_line_error(["run", recipe], "nodata")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "tiny-20261201-120000", "tiny-20261201-120000-2", "tiny-20261201-120000-3"]


@pytest.mark.slow
def test_a_finished_run_is_never_replaced_and_resume_re_evaluates_it(tmp_path, tiny_bert_dir,
                                                                     shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir)
    out = tmp_path / "out"
    assert invoke("run", recipe, "--output", out).exit_code == 0
    log_before = (out / "train_log.jsonl").read_bytes()
    weights_before = load_file(out / "model" / "model.safetensors")
    one_line_error(["run", recipe, "--output", out], "holds checkpoints of an earlier run")
    # Evaluation keys may change on --resume: evaluated again, not trained again.
    result = invoke("run", recipe, "--output", out, "--resume", "--set", "sweep=[0.05, 0.5]",
                    "--set", "eval_rows=4")
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text(),
                         parse_constant=lambda token: pytest.fail(f"results.json: {token}"))
    assert [p["threshold"] for p in results["sweep"]] == [0.05, 0.5]
    assert sum(results["sweep"][0]["exit_counts"]) == 4
    assert (out / "train_log.jsonl").read_bytes() == log_before
    weights = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in weights_before.items())
    # A training key may not.
    one_line_error(["run", recipe, "--output", out, "--resume", "--set", "optimizer.lr=2e-3"],
                   "key 'optimizer.lr' is 0.002 here but 0.001")


@pytest.mark.slow
def test_a_finished_run_without_checkpoints_is_not_replaced(tmp_path, tiny_bert_dir,
                                                            shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, checkpoints=False)
    out = tmp_path / "out"
    assert invoke("run", recipe, "--output", out).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    one_line_error(["run", recipe, "--output", out], "holds a finished run")
    one_line_error(["run", recipe, "--output", out, "--resume"], "without checkpoints")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "message"), [
    (["max_length=100000"], "key 'max_length': 100000"),
    (["max_length=513"], "key 'max_length': 513"),
    (["exit_policy=fixed", "sweep=[3, 99]"], "layer=99 is out of range"),
    (["exit_policy=patience", "sweep=[5]"], None),  # patience 5 > 3 exits: allowed, never exits
])
def test_what_needs_the_model_is_checked_before_the_first_step(overrides, message, tmp_path,
                                                               tiny_bert_dir, shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir)
    args: list[object] = ["run", recipe, "--output", tmp_path / "out"]
    for item in overrides:
        args += ["--set", item]
    if message is None:
        assert invoke(*args).exit_code == 0
        return
    one_line_error(args, message)
    assert not (tmp_path / "out" / "train_log.jsonl").exists()
    assert not (tmp_path / "out" / "checkpoints").exists()


# --- a full disk: one error line, nothing half-written ----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(("checkpoints", "fraction", "failing"), [
    (True, 0.5, "checkpoints/step-00000002"),  # the first checkpoint's weights
    (False, 0.5, "model"),                     # the saved model's weights
    (True, 0.0, "recipe.yaml"),                # 200 bytes: the first file a run writes
])
def test_a_full_disk_is_one_error_line_with_nothing_half_written(checkpoints, fraction, failing,
                                                                 tmp_path, tiny_bert_dir,
                                                                 shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, checkpoints=checkpoints)
    out = tmp_path / "out"
    weights = (tiny_bert_dir / "model.safetensors").stat().st_size
    limit = int(weights * fraction) or 200
    done = limited_run(["run", str(recipe), "--output", str(out)], max_bytes=limit)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "File too large" in errors[0] and str(out / failing) in errors[0], errors
    leftovers = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert leftovers in ([], ["checkpoints", "recipe.yaml", "train_log.jsonl"],
                         ["exit_logits.safetensors", "plots", "plots/exit_layers.png",
                          "plots/metric_per_exit.png", "plots/metric_vs_time.png",
                          "plots/metric_vs_time_dense.png", "recipe.yaml",
                          "train_log.jsonl"]), leftovers
