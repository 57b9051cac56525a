"""The `gradsurg` command line: run and validate recipes, list what is registered."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from gradsurg.combiners import COMBINERS
from gradsurg.config import load_recipe
from gradsurg.errors import GradsurgError
from gradsurg.programs import PROGRAMS

app = typer.Typer(
    name="gradsurg",
    help="Gradient surgery for multi-loss training: run recipes, list combiners and programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: --set key.sub=value (repeatable)."),
]


def fail(error: Exception) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/quickstart.yaml.")],
    overrides: SetOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output folder (default: runs/<recipe>-<time>)."),
    ] = None,
) -> None:
    """Train and evaluate the program a recipe names; write results to the output folder."""
    try:
        program, config = load_recipe(recipe, overrides or [])
        folder = output or Path("runs") / f"{recipe.stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        folder.mkdir(parents=True, exist_ok=True)
        resolved = config.model_dump(mode="json")
        (folder / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        console.print(f"[bold]{program.name}[/]: {program.summary} -> {folder}")
        results = program.run(config, folder)
        (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    except GradsurgError as error:
        raise fail(error) from None
    console.print(f"results: {folder / 'results.json'}")


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(help="Recipe YAML files to check.")],
    overrides: SetOption = None,
) -> None:
    """Check recipes against their program's schema without running anything."""
    failed = False
    for recipe in recipes:
        try:
            program, _ = load_recipe(recipe, overrides or [])
            console.print(f"[green]ok[/] {recipe} ({program.name})")
        except GradsurgError as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            failed = True
    if failed:
        raise typer.Exit(code=2)


@app.command("list")
def list_registered() -> None:
    """Show the registered programs and combiners (built in and from installed plugins)."""
    table = Table(title="gradsurg registry")
    table.add_column("kind")
    table.add_column("name")
    table.add_column("from")
    for name in PROGRAMS.names():
        table.add_row("program", name, PROGRAMS.get(name).run.__module__)
    for name in COMBINERS.names():
        table.add_row("combiner", name, COMBINERS.get(name).__module__)
    console.print(table)


if __name__ == "__main__":
    app()
