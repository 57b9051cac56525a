"""Recipes: YAML loading (safe loader only), `--set` overrides, validation against a program.

A recipe is named by its file, or by the name an installed package registers it under in the
`gradsurg.recipes` entry point group: the entry point's object is the packaged YAML file, e.g.
`importlib.resources.files(__name__) / "recipes" / "digits_project.yaml"` (any object with
`is_file()` and `read_text()`, or a `str` / `os.PathLike` path). A file path always wins over a
name, so a local file can never be shadowed by a plugin.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import ValidationError

from gradsurg import strict_yaml
from gradsurg.errors import ConfigError, quoted
from gradsurg.numbers import check_finite_numbers
from gradsurg.programs import PROGRAMS, Program, ProgramConfig
from gradsurg.registry import Registry


class RecipeFile(Protocol):
    """What a recipe entry point must give: `pathlib.Path` and importlib.resources both do."""

    def is_file(self) -> bool: ...

    def read_text(self, encoding: str | None = None) -> str: ...


RECIPES: Registry[RecipeFile | str | os.PathLike[str]] = Registry("recipe", "gradsurg.recipes")


def resolve_recipe(spec: str | os.PathLike[str]) -> RecipeFile:
    """The recipe file `spec` names: an existing file, else a registered recipe name."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a directory; expected a YAML file or a registered "
                          "recipe name")
    name = str(spec)
    if name not in RECIPES:
        registered = ", ".join(RECIPES.names()) or "(none installed)"
        raise ConfigError(
            f"recipe {name} does not exist; allowed: a YAML file or a registered recipe name: "
            f"{registered}"
        )
    return registered_recipe(name)


def registered_recipe(name: str) -> RecipeFile:
    """The packaged YAML file of the recipe registered as `name`, checked to exist."""
    target = RECIPES.get(name)
    if isinstance(target, str | os.PathLike):
        target = Path(target)
    if not all(callable(getattr(target, method, None)) for method in ("is_file", "read_text")):
        raise ConfigError(
            f"recipe {name!r} (package {RECIPES.source(name)}): the entry point must give a path "
            f"to a YAML file, got {type(target).__name__}"
        )
    if not target.is_file():
        raise ConfigError(
            f"recipe {name!r} (package {RECIPES.source(name)}) points to {target}, which does "
            "not exist; the package must ship the YAML file as package data"
        )
    return target


def read_recipe(path: RecipeFile) -> dict[str, Any]:
    """The recipe's YAML as a mapping; errors name the file (and line, for syntax errors)."""
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); "
                          "save the recipe as UTF-8") from None
    try:
        data = strict_yaml.load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(recipe: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; values are parsed as YAML (`lr=3e-5`, `exits=[1,2]`)."""
    result = _deep_copy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            value = strict_yaml.load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or "not valid YAML"
            named = (strict_yaml.DuplicateKeyError, strict_yaml.TooLargeError)
            reason = "value is not valid YAML" + (
                f" ({problem})" if isinstance(error, named) else "")
            raise ConfigError(f"--set {quoted(item)}: {reason}") from None
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return result


def validate_recipe(recipe: dict[str, Any], *, source: str) -> tuple[Program, ProgramConfig]:
    """Find the recipe's program and validate every key against its schema."""
    name = recipe.get("program")
    if "program" not in recipe:
        raise ConfigError(f"{source}: key 'program' is missing; allowed: {PROGRAMS.names()}")
    if not isinstance(name, str):
        raise ConfigError(f"{source}: key 'program': expected a program name, got "
                          f"{type(name).__name__} {name!r}; allowed: {PROGRAMS.names()}")
    check_finite_numbers(recipe, source=source)
    program = PROGRAMS.get(name)
    try:
        return program, program.config.model_validate(recipe)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_problem(error)}") from None


def load_recipe(
    recipe: str | os.PathLike[str], overrides: Sequence[str] = ()
) -> tuple[Program, ProgramConfig]:
    """Read the recipe a file path or registered name gives, apply overrides, validate it."""
    path = resolve_recipe(recipe)
    return validate_recipe(apply_overrides(read_recipe(path), overrides), source=str(path))


def _first_problem(error: ValidationError) -> str:
    problems = error.errors()
    first = problems[0]
    message = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(problems) - 1} more problems)" if len(problems) > 1 else ""
    if not first["loc"]:  # a check across keys: its message names the keys itself
        return f"{message}{more}"
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif "input" in first and first["type"] not in ("missing",):
        message = f"{message} (got {quoted(first['input'])})"
    return f"key {key!r}: {message}{more}"


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
