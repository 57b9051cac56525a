"""`loggers: [jsonl, tensorboard]`: TensorBoard gets the same keys and values as
train_log.jsonl, each step once after a resume; without the package the recipe is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gradsurg.errors import ConfigError
from gradsurg.loggers import JsonlLog, TensorBoardLog, is_number, open_loggers
from gradsurg.recipes import load_recipe

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator")
ROOT = Path(__file__).resolve().parents[1]
ROMEBERT = ROOT / "recipes" / "romebert_glue.yaml"


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of one TensorBoard run folder as (step, value) pairs, as TensorBoard
    shows them (events a restart purged left out)."""
    accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def jsonl_as_scalars(path: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """train_log.jsonl regrouped the TensorBoard way: stage -> key -> (step, value)."""
    stages: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        tags = stages.setdefault(record["stage"], {})
        for key, value in record.items():
            if key not in ("stage", "step"):
                tags.setdefault(key, []).append((record["step"], value))
    return stages


def assert_same_as_jsonl(output: Path) -> None:
    expected = jsonl_as_scalars(output / "train_log.jsonl")
    stages = sorted(p.name for p in (output / "tensorboard").iterdir())
    assert stages == sorted(expected)
    for stage, tags in expected.items():
        logged = scalars(output / "tensorboard" / stage)
        assert sorted(logged) == sorted(tags), stage
        for tag, points in tags.items():
            assert [step for step, _ in logged[tag]] == [step for step, _ in points], tag
            assert [value for _, value in logged[tag]] == pytest.approx(
                [value for _, value in points], rel=1e-6), tag  # TensorBoard keeps float32


def test_jsonl_log_truncates_back_to_a_checkpoint(tmp_path):
    path = tmp_path / "train_log.jsonl"
    log = JsonlLog(path)
    log.write({"step": 1, "loss": 0.5})
    offset = log.tell()
    log.write({"step": 2, "loss": float("nan")})
    log.close()
    assert path.read_text().splitlines()[1] == '{"step": 2, "loss": null}'
    resumed = JsonlLog(path, truncate_to=offset)  # the killed run's step 2 goes
    resumed.write({"step": 2, "loss": 0.25})
    resumed.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


def test_tensorboard_restarts_purge_what_a_killed_session_logged_after_its_checkpoint(tmp_path):
    killed = TensorBoardLog(tmp_path)
    for step in range(1, 6):
        killed.write({"stage": "joint", "step": step, "lr": 0.1, "loss/final": float(step)})
    killed.close()
    resumed = TensorBoardLog(tmp_path)  # the checkpoint was at step 3
    for step in range(4, 8):
        resumed.write({"stage": "joint", "step": step, "lr": 0.1, "loss/final": 10.0 + step})
    resumed.write({"stage": "stage2", "step": 1, "lr": 0.2, "note": "text is not a scalar"})
    resumed.close()
    logged = scalars(tmp_path / "joint")
    assert logged["loss/final"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0),
                                    (6, 16.0), (7, 17.0)]
    assert [step for step, _ in logged["lr"]] == list(range(1, 8))
    assert scalars(tmp_path / "stage2") == {"lr": [(1, pytest.approx(0.2))]}


def test_records_go_to_every_logger_and_tell_is_the_jsonl_offset(tmp_path):
    both = open_loggers(["jsonl", "tensorboard"], tmp_path)
    both.write({"stage": "joint", "step": 2, "lr": 0.5})
    assert both.tell() == (tmp_path / "train_log.jsonl").stat().st_size > 0
    both.close()
    assert scalars(tmp_path / "tensorboard" / "joint") == {"lr": [(2, 0.5)]}
    only_tensorboard = open_loggers(["tensorboard"], tmp_path / "tb")
    only_tensorboard.write({"stage": "joint", "step": 1, "lr": 0.5})
    assert only_tensorboard.tell() == 0
    nothing = open_loggers(["jsonl", "tensorboard"], None)  # a non-main rank
    nothing.write({"stage": "joint", "step": 1})
    assert nothing.logs == []
    assert [is_number(v) for v in (1, 0.5, True, None, "x")] == [True, True, False, False, False]


@pytest.mark.slow
def test_a_run_logs_the_same_keys_and_values_to_tensorboard(tiny_bert_dir, shared_glue_dir,
                                                            tmp_path):
    """Two stages (deebert): one TensorBoard run per stage, each step's record as scalars."""
    from gradsurg.programs.multiexit_glue import run
    from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

    config = MultiExitGlueConfig(
        program="multiexit_glue", mode="deebert", model=str(tiny_bert_dir),
        data_dir=str(shared_glue_dir), train_rows=24, eval_rows=8, batch_size=8,
        eval_batch_size=8, epochs=1, max_length=32, optimizer={"lr": 1e-3}, log_every=1,
        threads=2, save_model=False, checkpoints=False, loggers=["jsonl", "tensorboard"])
    run(config, tmp_path)
    assert_same_as_jsonl(tmp_path)
    assert {"lr", "epoch", "skipped_steps", "loss/final"} <= set(
        scalars(tmp_path / "tensorboard" / "stage1"))


@pytest.mark.slow
def test_a_resumed_run_has_each_step_once_in_tensorboard(tiny_bert_dir, shared_glue_dir,
                                                         tmp_path):
    """SIGKILL before step 5 (the checkpoint is at 3, step 4 was logged), resume: TensorBoard
    shows steps 1..N once each, with the values of the finished train_log.jsonl."""
    from cli_runs import SIGKILLED, run_killed_at

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(
        program="multiexit_glue", mode="romebert", model=str(tiny_bert_dir),
        data_dir=str(shared_glue_dir), train_rows=48, eval_rows=8, batch_size=8,
        eval_batch_size=8, epochs=1, max_length=32, optimizer={"lr": 1e-3}, log_every=1,
        threads=1, deterministic=True, checkpoint_every=3, save_model=False,
        loggers=["jsonl", "tensorboard"])))
    out = tmp_path / "run"
    assert run_killed_at("step", 5, "run", str(recipe), "--output", str(out)) == SIGKILLED
    killed = scalars(out / "tensorboard" / "joint")
    assert [step for step, _ in killed["lr"]] == [1, 2, 3, 4]
    assert run_killed_at("none", 0, "run", str(recipe), "--output", str(out), "--resume") == 0
    assert_same_as_jsonl(out)
    assert [step for step, _ in scalars(out / "tensorboard" / "joint")["lr"]] == list(
        range(1, 7))


def test_tensorboard_without_its_package_is_refused_before_training(monkeypatch, tmp_path):
    from gradsurg.cli import app

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"key 'loggers': this needs the 'tensorboard' "
                                          r"package.*pip install 'gradsurg\[tensorboard\]'"):
        load_recipe(ROMEBERT, ["loggers=[jsonl, tensorboard]"])
    assert load_recipe(ROMEBERT, ["loggers=[jsonl]"])[1].loggers == ["jsonl"]
    result = CliRunner().invoke(app, ["run", str(ROMEBERT), "--output", str(tmp_path / "out"),
                                      "--set", "loggers=[tensorboard]"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gradsurg[tensorboard]" in errors[0], result.output
    assert not (tmp_path / "out").exists()


def test_a_logger_listed_twice_is_refused():
    with pytest.raises(ConfigError, match="key 'loggers': logger 'jsonl' is listed twice"):
        load_recipe(ROMEBERT, ["loggers=[jsonl, jsonl]"])
