"""README's two commands are the ones CI and users run: keep them true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart, flags=re.S)


def test_readme_has_exactly_two_commands_each_installing_torch_first():
    commands = readme_commands()
    assert len(commands) == 2, commands
    for command in commands:
        assert "\n" not in command.strip()
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")


def test_ci_runs_readme_test_command_verbatim():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command.strip() in [line.strip() for line in ci]


def test_main_command_runs_a_shipped_recipe():
    main_command = next(c for c in readme_commands() if "gradsurg run" in c)
    recipe = main_command.split("gradsurg run", 1)[1].split()[0]
    assert (ROOT / recipe).is_file(), recipe
