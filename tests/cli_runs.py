"""Running gradsurg the way users do, for the tests: the CLI in this process (`invoke`,
`one_line_error`), tiny recipes written to a folder, and the CLI in a fresh process that
kills itself at a chosen point or runs under a file-size limit (a full disk)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from gradsurg.cli import app

ROOT = Path(__file__).resolve().parents[1]
#: The shipped RomeBERT recipe (validation-only tests override what they need).
ROMEBERT_RECIPE = str(ROOT / "recipes" / "romebert_glue.yaml")
#: tests/kill_points.py: the CLI in a process that SIGKILLs itself at (point, nth).
KILL_DRIVER = Path(__file__).with_name("kill_points.py")
SIGKILLED = -9

runner = CliRunner()


def invoke(*args: object, stdin: str | bytes | None = None):
    """`gradsurg ARGS` in this process (typer's CliRunner); its result."""
    return runner.invoke(app, [str(a) for a in args], input=stdin)


def one_line_error(args: list[object], message: str, *, stdin: str | bytes | None = None
                   ) -> str:
    """Run the CLI; assert exit 2, exactly one `error:` line holding `message`, no traceback.
    Returns the output."""
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 2, (args, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], (args, result.output)
    assert "Traceback" not in result.output
    return result.output


def assert_run_refuses(overrides: list[str], message: str, output: Path) -> None:
    """`gradsurg run` of the shipped RomeBERT recipe with `--set` each override is one
    `error:` line holding `message`, and `output` is never created."""
    args: list[object] = ["run", ROMEBERT_RECIPE, "--output", output]
    for item in overrides:
        args += ["--set", item]
    one_line_error(args, message)
    assert not output.exists()  # nothing written for a refused recipe


def tiny_recipe(folder: Path, tiny_bert_dir: Path, glue_dir: Path, **overrides) -> Path:
    """`folder/tiny.yaml`: two steps of a 3-layer random BERT on 16 real rows."""
    recipe = dict(program="multiexit_glue", model=str(tiny_bert_dir), data_dir=str(glue_dir),
                  train_rows=16, eval_rows=8, batch_size=8, eval_batch_size=8, epochs=1,
                  max_length=32, optimizer={"lr": 1e-3}, log_every=1, threads=1, deterministic=True)
    recipe.update(overrides)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def resumable_recipe(folder: Path, tiny_bert_dir: Path, glue_dir: Path, **overrides) -> Path:
    """`folder/recipe.yaml`: 10 steps a stage, checkpoints every 3 (2 kept), for kill tests."""
    recipe = dict(program="multiexit_glue", model=str(tiny_bert_dir), data_dir=str(glue_dir),
                  train_rows=40, eval_rows=24, batch_size=8, eval_batch_size=16, epochs=2,
                  max_length=32, optimizer={"lr": 1e-3}, log_every=2, threads=1, deterministic=True,
                  checkpoint_every=3, keep_checkpoints=2)
    recipe.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_killed_at(point: str, nth: int, *args: str) -> int:
    """The CLI in a fresh process that SIGKILLs itself at (point, nth); its return code."""
    done = subprocess.run([sys.executable, str(KILL_DRIVER), point, str(nth), "--", *args],
                          capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, SIGKILLED):
        raise AssertionError(f"gradsurg {args} failed:\n{done.stdout}\n{done.stderr}")
    return done.returncode


def run_outcome(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """results.json without wall times, the saved weights, the training log lines."""
    results = json.loads((run_dir / "results.json").read_text())
    for stage in results["train"].values():
        stage.pop("seconds")
    results.pop("model_dir")
    weights = load_file(run_dir / "model" / "model.safetensors")
    return results, weights, (run_dir / "train_log.jsonl").read_text().splitlines()


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Two run folders hold the same results, log lines and weights, bit for bit."""
    results, weights, log = run_outcome(resumed)
    expected_results, expected_weights, expected_log = run_outcome(reference)
    assert results == expected_results
    assert log == expected_log
    assert weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert torch.equal(weights[name], tensor), name


def limited_run(args: list[str], max_bytes: int) -> subprocess.CompletedProcess[str]:
    """The CLI in a process whose files cannot grow beyond `max_bytes` (EFBIG, as a full
    disk gives ENOSPC: the same write failure, without needing a small file system)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "gradsurg", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=limit, env=env)
