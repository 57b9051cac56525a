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

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, NoReturn, TypeVar, overload

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


Spec = str | Mapping[str, Any]
"""How a recipe names a registered object: ``"pcgrad"`` or ``{name: pcgrad, seed: 1}``."""


class Registry(Generic[T]):
    """A name -> object map that also offers the entry points of ``group``.

    ``kind`` is the singular noun used in messages ("combiner", "exit policy"). ``key`` is the
    class attribute that names a class registered with the bare ``@registry.register``
    decorator (``name``; backbone adapters use ``model_type``). ``base``, when given, is the
    class whose instances :meth:`build` passes through unchanged (a combiner object in place of
    its recipe spec).
    """

    def __init__(self, kind: str, group: str, *, key: str = "name",
                 base: type | None = None) -> None:
        self.kind = kind
        self.group = group
        self.key = key
        self.base = base
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._pending: dict[str, EntryPoint] = {}
        self._discovered = False

    @overload
    def register(self, name_or_obj: str, *, source: str = ...) -> Callable[[T], T]: ...

    @overload
    def register(self, name_or_obj: T, *, source: str = ...) -> T: ...

    def register(self, name_or_obj: Any, *, source: str = BUILT_IN) -> Any:
        """Decorator: bare ``@registry.register`` above a class registers it under its own
        ``key`` attribute (``name``), so the name is written once; ``@registry.register("x")``
        names a function or a class explicitly."""
        if not isinstance(name_or_obj, str):
            name = getattr(name_or_obj, self.key, None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"{self.kind} {name_or_obj!r} has no {self.key!r} attribute to "
                                "register it by; use register('its-name')")
            self.add(name, name_or_obj, source=source)
            return name_or_obj

        def decorate(obj: T) -> T:
            self.add(name_or_obj, obj, source=source)
            return obj

        return decorate

    def split(self, spec: Any, *, where: str) -> tuple[str, dict[str, Any]]:
        """A recipe's ``name``, ``{name: ..., **options}`` or ``{name: ..., params: {...}}``
        -> ``(name, options)``; the nested ``params`` form is what earlier recipes wrote."""
        if isinstance(spec, str):
            return spec, {}
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            options = {str(k): v for k, v in spec.items() if k != "name"}
            if set(options) == {"params"} and isinstance(options["params"], Mapping):
                options = {str(k): v for k, v in options["params"].items()}
            return spec["name"], options
        article = "an" if self.kind[:1] in "aeiou" else "a"
        raise ConfigError(f"{where}: expected {article} {self.kind} name or a mapping with "
                          f"'name', got {spec!r}")

    def build(self, spec: Any, *args: Any, where: str, **context: Any) -> Any:
        """The object a recipe value asks for: ``factory(*args, **context, **options)``.

        ``args``/``context`` are what the caller knows and the recipe must not set (a loss
        term's number of exits, a weighting's groups); ``options`` come from the spec. Every
        kind of registered object is built here, so every unknown name, unknown option,
        missing option or rejected value is the same one-line :class:`ConfigError` naming the
        recipe key ``where``. An instance of ``base`` is returned unchanged.
        """
        if self.base is not None and isinstance(spec, self.base):
            return spec
        name, options = self.split(spec, where=where)
        return self.call(self.lookup(name, where=where), name, options, *args, where=where,
                         **context)

    def lookup(self, name: str, *, where: str) -> Any:
        """:meth:`get`, its unknown-name error naming the recipe key ``where``."""
        try:
            return self.get(name)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None

    def call(self, factory: Any, name: str, options: Mapping[str, Any], *args: Any,
             where: str, **context: Any) -> Any:
        """``factory(*args, **context, **options)`` for the entry ``name`` that
        :meth:`lookup` gave, with :meth:`build`'s checks and messages; for a caller that has
        the factory already (a name is looked up once)."""
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # some builtins have none; let the call decide
            signature = None
        if signature is not None:
            try:
                signature.bind(*args, **context, **options)
            except TypeError as error:
                allowed = [p for p in signature.parameters
                           if p not in context and p != "self"][len(args):]
                raise ConfigError(f"{where} ({self.kind} {name!r}): {error}; options are "
                                  f"{', '.join(allowed) or '(none)'}") from None
        try:
            return factory(*args, **context, **options)
        except ConfigError as error:
            message = str(error)
            raise ConfigError(message if message.startswith(where) else f"{where}: {message}"
                              ) from None
        except (TypeError, ValueError, OverflowError, RuntimeError) as error:
            # e.g. `seed: x` or `seed: 2**64` reaching torch.Generator.manual_seed
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"{where} ({self.kind} {name!r}): invalid options {options!r} "
                              f"({detail})") from None

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
