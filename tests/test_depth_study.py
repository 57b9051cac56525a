"""bench/depth_study.py's 12-layer phase: the planned runs' commands and folders (no training)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from gradsurg.multiexit import backbones
from gradsurg.recipes import apply_overrides, read_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def depth():
    spec = importlib.util.spec_from_file_location("depth_study", ROOT / "bench" /
                                                  "depth_study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["depth_study"] = module
    spec.loader.exec_module(module)
    return module


def sets_of(command: list[str]) -> list[str]:
    return [command[i + 1] for i, item in enumerate(command) if item == "--set"]


def resolved(command: list[str]) -> dict:
    return apply_overrides(read_recipe(Path(command[4])), sets_of(command))


def test_depth12_is_the_screenings_sst2_run_on_the_12_layer_backbone(depth, monkeypatch):
    monkeypatch.setattr(backbones, "find_parts", lambda model: ([], "0"))  # CI: not installed
    runs_dir = Path("/tmp/runs")
    plan = depth.plan("depth12")
    assert [run.config for run in plan] == ["deebert", "romebert_sd", "romebert",
                                            "romebert_reversed", "exit_upgrad"]
    assert depth.DEPTH12_NEW_METHODS == []  # issue 28's methods are added here when they exist
    for run in plan:
        command = run.command(runs_dir)
        assert command[-1] == "--resume"
        assert command[-2] == str(runs_dir / "depth12" / "sst2" / run.config /
                                  "model=mpnet-base,lr=5e-5" / "seed-42")
        recipe = resolved(command)
        config = validate_recipe(recipe, source=shlex.join(command))[1]
        screening = resolved(depth.study.Run("screening", "sst2", run.config, 42).command(
            runs_dir))
        assert recipe["model"] == "mpnet-base" and screening["model"] == "minilm"
        # everything else is the screening's run: the 6- and 12-layer results compare directly
        assert {**recipe, "model": None} == {**screening, "model": None}
        assert (config.train_rows, config.epochs, config.batch_size, config.optimizer.lr,
                config.threads, config.seed) == (8000, 1, 16, 5e-5, 1, 42)
    assert len({run.folder(runs_dir) for run in plan}) == len(plan)


def test_list_shows_each_depth12_run_and_whether_it_finished(depth, monkeypatch, tmp_path,
                                                            capsys):
    finished = depth.plan("depth12")[1].folder(tmp_path)
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["depth_study.py", "--list", "--phase", "depth12",
                                      "--runs", str(tmp_path)])
    depth.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    assert lines[1] == f"done  {finished}"
    assert all(line.startswith("todo  ") for i, line in enumerate(lines) if i != 1)
