"""Name -> object registries, extensible through Python entry points.

Recipes name combiners, loss terms, exit policies, backbone adapters, programs and recipes by
string; an installed package adds its own by declaring an entry point in the registry's group,
without editing gradsurg. Each entry remembers where it came from (``gradsurg`` for built-ins,
else the distribution that declared the entry point) so ``gradsurg plugins`` can show it and a
clash or a broken plugin can be blamed on the right package.

Entry points are discovered on the first lookup but loaded (imported) only when their name is
asked for: a plugin that fails to import breaks the lookups of its own names, with a one-line
:class:`ConfigError` naming it, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, NoReturn, TypeVar

from gradsurg.errors import ConfigError
from gradsurg.extras import missing_extra

T = TypeVar("T")

BUILT_IN = "gradsurg"
"""Source recorded for objects registered in gradsurg's own code."""


@dataclass(frozen=True)
class Entry:
    """One registered name and the package it came from (not loaded yet, for entry points)."""

    name: str
    source: str


class Registry(Generic[T]):
    """A name -> object map that also offers the entry points of ``group``.

    ``kind`` is the singular noun used in messages ("combiner", "exit policy").
    """

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._pending: dict[str, EntryPoint] = {}
        self._discovered = False

    def register(self, name: str, *, source: str = BUILT_IN) -> Callable[[T], T]:
        """Decorator: ``@registry.register("sum")`` above a class or function."""

        def decorate(obj: T) -> T:
            self.add(name, obj, source=source)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, source: str = BUILT_IN) -> None:
        """Register ``obj`` as ``name``; a different object under a taken name is an error."""
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            self._clash(name, self._sources[name], source)
        self._items[name] = obj
        self._sources.setdefault(name, source)

    def get(self, name: str) -> T:
        """The object registered as ``name``, importing its entry point if need be."""
        self._discover()
        if name in self._pending:
            self._load(name)
        try:
            return self._items[name]
        except KeyError:
            allowed = ", ".join(self.names()) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def names(self) -> list[str]:
        """Every registered name, sorted; entry points are listed without importing them."""
        return sorted(entry.name for entry in self.entries())

    def entries(self) -> list[Entry]:
        """Names with their sources in registration order: built-ins, then entry points."""
        self._discover()
        names = dict.fromkeys((*self._items, *self._pending))
        return [Entry(name, self._sources[name]) for name in names]

    def source(self, name: str) -> str:
        """Where ``name`` came from: ``gradsurg`` or the plugin's distribution name."""
        self._discover()
        if name not in self._sources:
            self.get(name)  # raises the "unknown ..." error
        return self._sources[name]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items or name in self._pending

    def _discover(self) -> None:
        if self._discovered:
            return
        found: dict[str, tuple[EntryPoint, str]] = {}
        for entry_point in entry_points(group=self.group):
            source = distribution_name(entry_point)
            name = entry_point.name
            earlier = found.get(name)
            if earlier is not None and earlier[1] != source:
                self._clash(name, earlier[1], source)
            if name in self._items and self._sources[name] != source:
                self._clash(name, self._sources[name], source)
            found[name] = (entry_point, source)
        for name, (entry_point, source) in found.items():
            if name not in self._items:  # gradsurg may declare its built-ins as entry points
                self._pending[name] = entry_point
                self._sources[name] = source
        self._discovered = True

    def _load(self, name: str) -> None:
        entry_point = self._pending[name]
        source = self._sources[name]
        try:
            obj = entry_point.load()
        except ImportError as error:
            hint = missing_extra(error)
            if hint is None:
                raise self._load_error(name, source, error) from None
            raise ConfigError(f"{self.kind} {name!r}: {hint}") from None
        except Exception as error:  # any import-time failure of a third-party package
            raise self._load_error(name, source, error) from None
        del self._pending[name]
        self.add(name, obj, source=source)  # same object if its import registered it itself

    def _load_error(self, name: str, source: str, error: Exception) -> ConfigError:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return ConfigError(
            f"entry point {name!r} in group {self.group!r} (package {source}) failed to "
            f"load: {type(error).__name__}" + (f": {detail}" if detail else ""))

    def _clash(self, name: str, first: str, second: str) -> NoReturn:
        raise ConfigError(
            f"{self.kind} name {name!r} is registered twice: by {first} and by {second}; "
            "uninstall one of the packages"
        )


def distribution_name(entry_point: EntryPoint) -> str:
    """The distribution that declared ``entry_point``, or ``unknown`` when it has none."""
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else "unknown"
