"""Checkpoints and `gradsurg run --resume`: SIGKILL at several points, resume, and end bit for
bit where an uninterrupted run ends (deterministic CPU, one thread)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gradsurg.checkpoint import CheckpointError, Checkpoints
from gradsurg.errors import ConfigError

DRIVER = Path(__file__).with_name("kill_points.py")
SIGKILLED = -9


def write_recipe(folder: Path, tiny_bert_dir: Path, glue_dir: Path, **overrides) -> Path:
    recipe = dict(program="multiexit_glue", model=str(tiny_bert_dir), data_dir=str(glue_dir),
                  train_rows=40, eval_rows=24, batch_size=8, eval_batch_size=16, epochs=2,
                  max_length=32, optimizer={"lr": 1e-3}, log_every=2, threads=1, deterministic=True,
                  checkpoint_every=3, keep_checkpoints=2)
    recipe.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def gradsurg(point: str, nth: int, *args: str) -> int:
    """Run the CLI in a fresh process that SIGKILLs itself at (point, nth); its return code."""
    done = subprocess.run([sys.executable, str(DRIVER), point, str(nth), "--", *args],
                          capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, SIGKILLED):
        raise AssertionError(f"gradsurg {args} failed:\n{done.stdout}\n{done.stderr}")
    return done.returncode


def outcome(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """results.json without wall times, the saved weights, the training log lines."""
    results = json.loads((run_dir / "results.json").read_text())
    for stage in results["train"].values():
        stage.pop("seconds")
    results.pop("model_dir")
    weights = load_file(run_dir / "model" / "model.safetensors")
    return results, weights, (run_dir / "train_log.jsonl").read_text().splitlines()


def assert_same_run(resumed: Path, reference: Path) -> None:
    results, weights, log = outcome(resumed)
    expected_results, expected_weights, expected_log = outcome(reference)
    assert results == expected_results
    assert log == expected_log
    assert weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name


# Each kill schedule: the points where successive attempts die; the last attempt finishes.
# deebert has two stages of 10 steps (40 rows / batch 8 x 2 epochs); checkpoints at stage
# steps 3, 5 (epoch end), 6, 9, 10, i.e. global steps 3 5 6 9 10 13 15 16 19 20.
SCHEDULES = {
    # dies while committing global step 5 (resumes at 3), in stage 2 (its step 6; resumes at
    # global 15), then while evaluating (resumes at 20 and only evaluates)
    "deebert": [("commit", 2), ("step", 13), ("eval", 1)],
    # one stage with the `project` combiner: dies at step 4 (resumes at 3)
    "romebert": [("step", 4)],
}


@pytest.mark.parametrize("mode", sorted(SCHEDULES))
def test_sigkill_and_resume_reproduce_the_uninterrupted_run(
    mode, tiny_bert_dir, shared_glue_dir, tmp_path
):
    recipe = write_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode=mode)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert gradsurg("none", 0, "run", str(recipe), "--output", str(reference)) == 0

    first = True
    for point, nth in SCHEDULES[mode]:
        args = ["run", str(recipe), "--output", str(resumed)] + ([] if first else ["--resume"])
        assert gradsurg(point, nth, *args) == SIGKILLED, (point, nth)
        assert not (resumed / "results.json").exists()
        first = False
    assert gradsurg("none", 0, "run", str(recipe), "--output", str(resumed), "--resume") == 0
    assert_same_run(resumed, reference)
    # no half-written checkpoint is left behind, and only `keep_checkpoints` remain
    entries = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert entries == sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert len(entries) == 2 and all(name.startswith("step-") for name in entries)


def test_a_kill_before_the_first_commit_leaves_no_checkpoint(
    tiny_bert_dir, shared_glue_dir, tmp_path
):
    recipe = write_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd")
    run_dir = tmp_path / "run"
    assert gradsurg("commit", 1, "run", str(recipe), "--output", str(run_dir)) == SIGKILLED
    assert Checkpoints(run_dir / "checkpoints").latest() is None  # the staging folder is hidden


def test_cli_refuses_to_overwrite_or_to_resume_with_another_recipe(
    tiny_bert_dir, shared_glue_dir, tmp_path
):
    from typer.testing import CliRunner

    from gradsurg.cli import app

    recipe = write_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
                          epochs=0.5)
    run_dir = tmp_path / "run"
    cli = CliRunner()
    assert cli.invoke(app, ["run", str(recipe), "--output", str(run_dir)]).exit_code == 0
    again = cli.invoke(app, ["run", str(recipe), "--output", str(run_dir)])
    assert again.exit_code == 2 and "pass --resume" in again.output
    changed = cli.invoke(app, ["run", str(recipe), "--output", str(run_dir), "--resume",
                               "--set", "optimizer.lr=0.5"])
    assert changed.exit_code == 2
    assert "key 'optimizer.lr' is 0.5" in changed.output
    no_output = cli.invoke(app, ["run", str(recipe), "--resume"])
    assert no_output.exit_code == 2 and "--resume needs --output" in no_output.output


def test_program_refuses_a_checkpoint_of_another_recipe(tiny_bert_dir, shared_glue_dir,
                                                        tmp_path):
    from gradsurg.programs.multiexit_glue import run
    from gradsurg.recipes import load_recipe

    recipe = write_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
                          epochs=0.5)
    _, config = load_recipe(recipe)
    run(config, tmp_path / "run")
    _, other = load_recipe(recipe, ["gamma=0.5"])
    with pytest.raises(ConfigError, match=r"key 'gamma' is 0\.5"):
        run(other, tmp_path / "run", resume=True)


def test_checkpoints_are_atomic_pruned_and_loaded_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    store = Checkpoints(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3):
        store.save(step, model=model, state={"step": step, "rng": torch.get_rng_state()})
    assert store.steps() == [2, 3] and store.latest() == store.path(3)
    fresh = torch.nn.Linear(3, 2)
    state = store.load(store.latest(), model=fresh)
    assert state["step"] == 3 and torch.equal(fresh.weight, model.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"step": 4, "payload": Evil()}, store.path(3) / "state.pt")
    with pytest.raises(CheckpointError, match=r"state\.pt does not match the checksum"):
        store.load(store.latest(), model=fresh)  # caught by its checksum first (issue 26)
    (store.path(3) / "checksums.json").unlink()  # as a checkpoint from before checksums
    with pytest.raises(CheckpointError, match="could not be read safely"):
        store.load(store.latest(), model=fresh)
    (store.path(3) / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"step-00000003/model\.safetensors"):
        store.load(store.latest(), model=fresh)
    with pytest.raises(CheckpointError, match="does not match the model"):
        store.load(store.path(2), model=torch.nn.Linear(3, 4))
