"""What recipes and commands can name, kind by kind, and the package each name comes from.

`gradsurg plugins` is how a user checks that an installed extension was picked up: every
entry is loaded here, so a plugin that fails to import shows up as a failed row with its
one-line error instead of surfacing later in the middle of a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from gradsurg.combiners import COMBINERS
from gradsurg.errors import ConfigError
from gradsurg.multiexit.adapters import ADAPTERS
from gradsurg.multiexit.losses.terms import LOSS_TERMS
from gradsurg.multiexit.policies import POLICIES
from gradsurg.optimizers import OPTIMIZERS
from gradsurg.programs import PROGRAMS
from gradsurg.recipes import RECIPES, registered_recipe
from gradsurg.registry import BUILT_IN, Registry
from gradsurg.tested_against import TESTED_AGAINST
from gradsurg.weightings import WEIGHTINGS

REGISTRIES: dict[str, Registry[Any]] = {
    "combiners": COMBINERS,
    "loss_terms": LOSS_TERMS,
    "loss_weightings": WEIGHTINGS,
    "exit_policies": POLICIES,
    "backbone_adapters": ADAPTERS,
    "optimizers": OPTIMIZERS,
    "programs": PROGRAMS,
    "recipes": RECIPES,
}
"""Every registry by the key `gradsurg plugins --json` shows it under."""

# How to load one name of a kind; recipes also check that their YAML file is really shipped.
_LOADERS: dict[str, Callable[[str], object]] = {"recipes": registered_recipe}


@dataclass(frozen=True)
class Listed:
    """One registered name: its source package, if loading it failed the error, and for
    methods (combiners, loss weightings) what they are tested against."""

    name: str
    source: str
    error: str | None = None
    tested_against: str | None = None


def inventory() -> dict[str, list[Listed]]:
    """Every registered name per kind (built-ins first), each loaded to prove it works."""
    listing: dict[str, list[Listed]] = {}
    for kind, registry in REGISTRIES.items():
        load = _LOADERS.get(kind, registry.get)
        rows = []
        # built-ins first, then plugins, each in registration order
        for entry in sorted(registry.entries(), key=lambda entry: entry.source != BUILT_IN):
            try:
                loaded = load(entry.name)
            except ConfigError as error:
                rows.append(Listed(entry.name, entry.source, str(error)))
            else:
                rows.append(Listed(entry.name, entry.source,
                                   tested_against=tested_against(kind, entry.name, loaded)))
        listing[kind] = rows
    return listing


def tested_against(kind: str, name: str, loaded: object) -> str | None:
    """A built-in's entry in `gradsurg.tested_against`, else the class's own attribute."""
    known = TESTED_AGAINST.get(kind, {}).get(name)
    return known if known is not None else getattr(loaded, "tested_against", None)


def as_json(listing: dict[str, list[Listed]]) -> dict[str, dict[str, Any]]:
    """The inventory as plain data:
    `{kind: {group, entries: [{name, source, error, tested_against}]}}`."""
    return {
        kind: {"group": REGISTRIES[kind].group, "entries": [asdict(row) for row in rows]}
        for kind, rows in listing.items()
    }
