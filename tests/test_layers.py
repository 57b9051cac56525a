"""gradsurg's layers, checked on the import graph: no module imports a higher layer.

Read from the source with `ast` (every `import`, also those inside functions, which run later
but are imports all the same), so the check needs none of the optional packages. A module may
import its own layer and every layer below; `LAYERS` lists them from the bottom up. The core
(the gradient-surgery engine, its files and run folders) imports no Hugging Face package, no
CLI and no console library, so `import gradsurg` and a user's own loop need neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradsurg"

#: From the bottom up; a module's layer is the first whose prefix names it (the longest
#: prefix wins). Everything not named here is in the core.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("gradsurg",)),  # errors, registry, params, gradients, gradient_matrix, combiners,
    # weightings, pipeline stages, surgery, engines, distributed, optimizers, outputs,
    # checkpoint, loggers, run_folder
    ("data", ("gradsurg.data",)),
    ("metrics", ("gradsurg.metrics",)),
    ("models", ("gradsurg.multiexit", "gradsurg.integrations")),
    ("report", ("gradsurg.report",)),
    ("programs", ("gradsurg.programs",)),
    ("entry", ("gradsurg.recipes", "gradsurg.plugins", "gradsurg.cli", "gradsurg.__main__")),
)
#: Packages the core must not import, not even lazily inside a function.
NOT_IN_CORE = ("transformers", "datasets", "typer", "rich", "matplotlib", "torchmetrics",
               "accelerate", "lightning", "pytorch_lightning")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, depth = 0, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def imports(module: str) -> set[str]:
    """Every module `module` imports: gradsurg's by their module name (`from gradsurg import
    strict_json` is gradsurg.strict_json), others by their top-level package."""
    path = MODULES[module]
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name if name.split(".")[0] == "gradsurg" else name.split(".")[0] for name in found}


def internal(name: str) -> str | None:
    """The gradsurg module an imported name is (or lies in); None outside gradsurg."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_the_layers_name_real_modules() -> None:
    for _, prefixes in LAYERS:
        for prefix in prefixes:
            assert prefix in MODULES, f"layer prefix {prefix} is no module of gradsurg"
    assert "gradsurg.run_folder" in MODULES and layer_of("gradsurg.run_folder") == 0


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    own = layer_of(module)
    upward = []
    for name in sorted(imports(module)):
        target = internal(name) if name.startswith("gradsurg") else None
        if target is not None and layer_of(target) > own:
            upward.append(f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, (f"{module} ({LAYERS[own][0]}) imports a higher layer: "
                        + ", ".join(upward))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m) == 0))
def test_the_core_needs_no_hugging_face_cli_or_console(module: str) -> None:
    banned = sorted(imports(module) & set(NOT_IN_CORE))
    assert not banned, f"{module} (core) imports {', '.join(banned)}"


def test_the_check_sees_an_upward_import() -> None:
    """The check itself: the program-level module imports the recipe loader is what it would
    name (recipes sits above programs), and a model module importing a program would be too."""
    assert layer_of("gradsurg.recipes") > layer_of("gradsurg.programs.multiexit_glue.recipe")
    assert layer_of("gradsurg.programs.multiexit_glue.checks") > layer_of(
        "gradsurg.multiexit.serving.loaded_model")
    assert internal("gradsurg.recipes.load_recipe") == "gradsurg.recipes"
    assert "gradsurg.strict_json" in imports("gradsurg.run_folder")


PLUGINS = sorted((PACKAGE.parent / "plugins").glob("*/gradsurg_*/**/*.py"))


@pytest.mark.parametrize("path", PLUGINS, ids=lambda path: str(path.relative_to(PACKAGE.parent)))
def test_the_shipped_plugins_sit_at_the_program_layer(path: Path) -> None:
    """A plugin is a program, combiner, weighting, ...: it may import gradsurg up to the
    programs, never the entry layer (the recipe loader, the plugin listing, the CLI)."""
    programs = [name for name, _ in LAYERS].index("programs")
    upward = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                 [f"{node.module}.{alias.name}" for alias in node.names]
                 if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
            target = internal(name) if name.startswith("gradsurg.") else None
            if target is not None and layer_of(target) > programs:
                upward.append(target)
    assert PLUGINS and not upward, f"{path} imports {', '.join(sorted(set(upward)))}"


TEST_FILES = sorted((PACKAGE.parent / "tests").glob("test_*.py")) + sorted(
    (PACKAGE.parent / "plugins").glob("*/tests/test_*.py"))


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda path: path.name)
def test_no_test_file_imports_another(path: Path) -> None:
    """What tests share lives in helper modules (cli_runs, glue_configs, combiner_checks,
    ...), so a test file can be read, moved or deleted on its own."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
    tests = sorted(name for name in imported if name.split(".")[-1].startswith("test_"))
    assert len(TEST_FILES) > 50 and not tests, f"{path.name} imports {tests}"
