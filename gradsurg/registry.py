"""Name -> object registries, extensible through Python entry points.

Recipes name combiners, programs and (later) exit policies by string; an installed package adds
its own by declaring an entry point in the registry's group, without editing gradsurg.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from gradsurg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map that also loads the entry points of `group` on first lookup."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, T] = {}
        self._loaded_entry_points = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@registry.register("sum")` above a class or function."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise ConfigError(f"{self.kind} name {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            allowed = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; allowed: {allowed}") from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for entry_point in entry_points(group=self.group):
            if entry_point.name not in self._items:
                self.add(entry_point.name, entry_point.load())
