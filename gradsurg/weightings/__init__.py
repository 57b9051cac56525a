"""Loss weightings (`{group: loss}` in, weighted `{group: loss}` out) and their registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gradsurg.errors import ConfigError
from gradsurg.registry import Registry
from gradsurg.weightings.base import LossWeighting
from gradsurg.weightings.dwa import DWA
from gradsurg.weightings.famo import FAMO
from gradsurg.weightings.geometric import Geometric
from gradsurg.weightings.imtll import IMTLL
from gradsurg.weightings.stch import STCH
from gradsurg.weightings.uncertainty import Uncertainty

WEIGHTINGS: Registry[type[LossWeighting]] = Registry("loss weighting", "gradsurg.weightings")
for _cls in (Uncertainty, DWA, FAMO, Geometric, IMTLL, STCH):
    WEIGHTINGS.add(_cls.name, _cls)

WeightingSpec = str | Mapping[str, Any]


def split_weighting_spec(spec: WeightingSpec, *, where: str = "weighting"
                         ) -> tuple[str, dict[str, Any]]:
    """`name` or `{name: ..., <param>: ...}` (or `{name, params: {...}}`) -> (name, params)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        params = {key: value for key, value in spec.items() if key != "name"}
        if set(params) == {"params"} and isinstance(params["params"], Mapping):
            params = dict(params["params"])
        return spec["name"], params
    raise ConfigError(f"{where}: expected a loss weighting name or a mapping with 'name', "
                      f"got {spec!r}")


def build_weighting(spec: WeightingSpec | LossWeighting, groups: Sequence[str], *,
                    where: str = "key 'weighting'") -> LossWeighting:
    """A weighting over `groups` from a recipe value; bad names or options are one-line
    ConfigErrors naming `where`."""
    if isinstance(spec, LossWeighting):
        return spec
    name, params = split_weighting_spec(spec, where=where)
    try:
        cls = WEIGHTINGS.get(name)
        return cls(groups, **params)
    except TypeError as error:
        raise ConfigError(f"{where}: loss weighting {name!r} does not take these options "
                          f"({error})") from None
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


__all__ = [
    "DWA",
    "FAMO",
    "IMTLL",
    "STCH",
    "WEIGHTINGS",
    "Geometric",
    "LossWeighting",
    "Uncertainty",
    "WeightingSpec",
    "build_weighting",
    "split_weighting_spec",
]
