"""Files and folders, through the real CLI: nothing is written or deleted through a
symbolic link inside a run or output folder; every file gradsurg writes (figures included)
takes one atomic path, so a full disk or a read-only folder is one error line and no
half-written file; `compare` reads its inputs as a run checks its own outputs; and a
checkpoint whose bits changed on disk is refused, named, not resumed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_runs import invoke, limited_run, one_line_error, tiny_recipe
from fake_runs import DEEBERT, ROMEBERT, compare, write_run
from safetensors.torch import save_file

from gradsurg.outputs import LOCK_FILE


def outside(tmp_path: Path, name: str = "precious.txt") -> Path:
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("not gradsurg's\n")
    return target


def untouched(target: Path) -> bool:
    return target.read_text() == "not gradsurg's\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert_dir, shared_glue_dir) -> Path:
    """A finished tiny run with one checkpoint (copied by each test that changes it)."""
    folder = tmp_path_factory.mktemp("finished")
    recipe = tiny_recipe(folder, tiny_bert_dir, shared_glue_dir)
    result = invoke("run", recipe, "--output", folder / "run")
    assert result.exit_code == 0, result.output
    return folder


def copy_of(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(finished, tmp_path / "copy")
    return tmp_path / "copy" / "tiny.yaml", tmp_path / "copy" / "run"


# --- links inside a run folder --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["train_log.jsonl", LOCK_FILE])
def test_a_linked_log_or_lock_is_refused_on_resume_and_its_target_untouched(
        name, finished, tmp_path):
    recipe, run = copy_of(finished, tmp_path)
    target = outside(tmp_path)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(target)
    one_line_error(["run", recipe, "--output", run, "--resume"],
                   f"{run / name}: is a symbolic link")
    assert untouched(target)


@pytest.mark.parametrize("name", ["plots", "checkpoints", "checkpoints/step-00000002"])
def test_a_linked_folder_is_refused_and_nothing_is_written_or_deleted_through_it(
        name, finished, tmp_path):
    recipe, run = copy_of(finished, tmp_path)
    target = tmp_path / "elsewhere" / "folder"
    shutil.copytree(run / name, target)
    shutil.rmtree(run / name)
    (run / name).symlink_to(target, target_is_directory=True)
    before = sorted(p.name for p in target.iterdir())
    one_line_error(["run", recipe, "--output", run, "--resume"], "is a symbolic link")
    assert sorted(p.name for p in target.iterdir()) == before


@pytest.mark.slow
def test_a_linked_file_a_run_writes_is_replaced_not_written_through(tmp_path, tiny_bert_dir,
                                                                     shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, checkpoints=False)
    run = tmp_path / "run"
    run.mkdir()
    targets = {}
    for name in ("recipe.yaml", "exit_logits.safetensors"):
        targets[name] = outside(tmp_path, name)
        (run / name).symlink_to(targets[name])
    assert invoke("run", recipe, "--output", run).exit_code == 0
    for name, target in targets.items():
        assert untouched(target) and not (run / name).is_symlink() and (run / name).is_file()


def test_compare_replaces_a_link_in_its_output_instead_of_overwriting_the_target(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    b = write_run(tmp_path / "b", "romebert", ROMEBERT, [0.75, 0.75])
    out = tmp_path / "out"
    out.mkdir()
    targets = {name: outside(tmp_path, name) for name in ("compare.md", "per_exit.png")}
    for name, target in targets.items():
        (out / name).symlink_to(target)
    result = compare(a, b, "--output", out)
    assert result.exit_code == 0, result.output
    for name, target in targets.items():
        assert untouched(target) and (out / name).is_file() and not (out / name).is_symlink()


# --- compare: its inputs checked, its file-system errors one line ----------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_compare_refuses_a_run_whose_exit_logits_are_not_finite(bad, tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    logits = torch.tensor(ROMEBERT, dtype=torch.float32)
    logits[1, 2, 0] = bad
    b = write_run(tmp_path / "b", "romebert", None, [0.75, 0.75])
    save_file({"logits": logits, "labels": torch.tensor([0, 0, 1, 1])},
              b / "exit_logits.safetensors")
    result = compare(a, b)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 16 logits are NaN/inf" in errors[0], result.output
    assert str(b / "exit_logits.safetensors") in errors[0]


@pytest.mark.parametrize("content, message", [
    ('{"mode": NaN}', "holds NaN"),
    ("[" * 5000 + "]" * 5000, "nested 5000 levels deep"),
])
def test_compare_reads_results_json_strictly_and_boundedly(content, message, tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    b = write_run(tmp_path / "b", "romebert", ROMEBERT, [0.75, 0.75])
    (b / "results.json").write_text(content)
    result = compare(a, b)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output
    assert str(b / "results.json") in errors[0] and "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_compare_into_a_read_only_folder_is_one_error_line(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    b = write_run(tmp_path / "b", "romebert", ROMEBERT, [0.75, 0.75])
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = compare(a, b, "--output", out)
    finally:
        out.chmod(0o700)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and str(out) in errors[0], result.output
    assert "Traceback" not in result.output and list(out.iterdir()) == []


@pytest.mark.slow
def test_compare_onto_a_full_disk_is_one_line_and_leaves_no_half_written_png(tmp_path):
    a = write_run(tmp_path / "a", "deebert", DEEBERT, [0.5, 1.0])
    b = write_run(tmp_path / "b", "romebert", ROMEBERT, [0.75, 0.75])
    out = tmp_path / "out"
    done = limited_run(["compare", str(a), str(b), "--output", str(out)], max_bytes=4000)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "File too large" in errors[0] and str(out / "per_exit.png") in errors[0], errors
    assert "Traceback" not in done.stderr and list(out.iterdir()) == []


@pytest.mark.slow
def test_a_run_plotting_onto_a_full_disk_is_one_line_naming_the_png(tmp_path, tiny_bert_dir,
                                                                    shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, checkpoints=False)
    out = tmp_path / "out"
    done = limited_run(["run", str(recipe), "--output", str(out)], max_bytes=12000)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "File too large" in errors[0] and str(out / "plots") in errors[0], errors
    assert "Traceback" not in done.stderr
    assert [p.name for p in (out / "plots").iterdir()] == []  # no half-written PNG
    assert not (out / "results.json").exists() and not (out / "model").exists()


# --- checkpoints: bit rot found ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.safetensors", "state.pt"])
def test_a_checkpoint_with_flipped_bits_is_refused_and_named(name, finished, tmp_path):
    recipe, run = copy_of(finished, tmp_path)
    (run / "results.json").unlink()  # an interrupted run: --resume would train from it
    checkpoint = run / "checkpoints" / "step-00000002"
    path = checkpoint / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # one bit inside the last tensor's (or the archive's) bytes
    path.write_bytes(bytes(data))
    one_line_error(["run", recipe, "--output", run, "--resume"],
                   f"{path} does not match the checksum recorded when the checkpoint was written")
    assert not (run / "results.json").exists()
    shutil.rmtree(checkpoint)  # the user's way to ask for the checkpoint before it
    assert invoke("run", recipe, "--output", run, "--resume").exit_code == 0
