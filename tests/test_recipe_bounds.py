"""What a recipe may expand to, and what an error line may quote, are bounded: a
448-byte alias bomb is one short error line at once (it was a 7.2 MB line after 25 s)."""

from __future__ import annotations

import itertools
import time

import pytest
from cli_runs import ROMEBERT_RECIPE, one_line_error

from gradsurg import strict_yaml

LEVELS = "abcdefghi"


def bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level a list of `width` aliases of the one before."""
    lines = ["program: multiexit_glue", f"a: &a [{', '.join(['lol'] * width)}]"]
    for previous, name in itertools.pairwise(LEVELS[:levels]):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * width)}]")
    return "\n".join(lines) + "\n"


def check(args: list[object], message: str) -> str:
    start = time.perf_counter()
    output = one_line_error(args, message)
    assert time.perf_counter() - start < 20
    assert max(len(line) for line in output.splitlines()) < 2500, len(output)
    return output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_an_alias_bomb_is_one_short_line_at_once(command, tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(bomb())
    assert len(recipe.read_bytes()) < 500
    args: list[object] = [command, recipe] + (["--output", tmp_path / "out"]
                                              if command == "run" else [])
    check(args, f"{recipe}:7: invalid YAML: ")  # the level where the count passes the bound
    check(args, f"more than the {strict_yaml.MAX_NODES} a recipe may hold")
    assert not (tmp_path / "out").exists()


def test_a_recursive_alias_and_a_huge_recipe_are_refused(tmp_path):
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("program: multiexit_glue\nseed: &s [1, *s]\n")
    check(["validate", recursive], "a recursive alias")
    huge = tmp_path / "huge.yaml"
    huge.write_text("program: multiexit_glue\n" + "# padding\n" * 120_000)
    check(["validate", huge], "characters, more than the")


def test_an_allowed_expansion_in_a_wrong_place_is_quoted_briefly(tmp_path):
    recipe = tmp_path / "wide.yaml"
    recipe.write_text(bomb(levels=5, width=8) + "seed: *e\n")  # 8**5 values for an integer
    output = check(["validate", recipe], "key 'seed'")
    assert "characters)" in output  # the quotation is cut and says how long it was


def flow_bomb(levels: int, width: int = 9) -> str:
    """The bomb as one flow-style YAML value, for `--set`."""
    parts = [f"&a [{', '.join(['1'] * width)}]"]
    for previous, name in itertools.pairwise(LEVELS[:levels]):
        parts.append(f"&{name} [{', '.join([f'*{previous}'] * width)}]")
    return "[" + ", ".join(parts) + "]"


def test_a_set_override_is_bounded_too():
    check(["validate", ROMEBERT_RECIPE, "--set", f"sweep={flow_bomb(8)}"],
          "more than the 100000 a recipe may hold")
    output = check(["validate", ROMEBERT_RECIPE, "--set", f"seed={flow_bomb(4)}"], "key 'seed'")
    assert "characters)" in output
