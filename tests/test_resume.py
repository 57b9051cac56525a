"""Checkpoints and `gradsurg run --resume`: SIGKILL at several points, resume, and end bit for
bit where an uninterrupted run ends (deterministic CPU, one thread)."""

from __future__ import annotations

import pytest
import torch
from cli_runs import SIGKILLED, assert_same_run, resumable_recipe, run_killed_at

from gradsurg.checkpoint import CheckpointError, Checkpoints
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.slow  # every test here is a whole run or launches processes

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
    recipe = resumable_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode=mode)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_killed_at("none", 0, "run", str(recipe), "--output", str(reference)) == 0

    first = True
    for point, nth in SCHEDULES[mode]:
        args = ["run", str(recipe), "--output", str(resumed)] + ([] if first else ["--resume"])
        assert run_killed_at(point, nth, *args) == SIGKILLED, (point, nth)
        assert not (resumed / "results.json").exists()
        first = False
    assert run_killed_at("none", 0, "run", str(recipe), "--output", str(resumed), "--resume") == 0
    assert_same_run(resumed, reference)
    # no half-written checkpoint is left behind, and only `keep_checkpoints` remain
    entries = sorted(p.name for p in (resumed / "checkpoints").iterdir())
    assert entries == sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert len(entries) == 2 and all(name.startswith("step-") for name in entries)


def test_a_kill_before_the_first_commit_leaves_no_checkpoint(
    tiny_bert_dir, shared_glue_dir, tmp_path
):
    recipe = resumable_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd")
    run_dir = tmp_path / "run"
    assert run_killed_at("commit", 1, "run", str(recipe), "--output", str(run_dir)) == SIGKILLED
    assert Checkpoints(run_dir / "checkpoints").latest() is None  # the staging folder is hidden


def test_cli_refuses_to_overwrite_or_to_resume_with_another_recipe(
    tiny_bert_dir, shared_glue_dir, tmp_path
):
    from typer.testing import CliRunner

    from gradsurg.cli import app

    recipe = resumable_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
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

    recipe = resumable_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
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
