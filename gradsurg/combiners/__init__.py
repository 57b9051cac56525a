"""Gradient combiners and the registry that recipes name them by."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from gradsurg.combiners.aligned_mtl import AlignedMTL
from gradsurg.combiners.base import Combined, Combiner, GramianWeighting
from gradsurg.combiners.cagrad import CAGrad
from gradsurg.combiners.conflict_free import ConFIG
from gradsurg.combiners.dbmtl import DBMTL
from gradsurg.combiners.dualproj import DualProj
from gradsurg.combiners.fairgrad import FairGrad
from gradsurg.combiners.graddrop import GradDrop
from gradsurg.combiners.gradvac import GradVac
from gradsurg.combiners.gramian import gramian, weighted_rows
from gradsurg.combiners.imtlg import IMTLG
from gradsurg.combiners.linear import Mean, Sum
from gradsurg.combiners.merge import Merge
from gradsurg.combiners.mgda import MGDA
from gradsurg.combiners.moco import MoCo
from gradsurg.combiners.nash_mtl import NashMTL
from gradsurg.combiners.pcgrad import PCGrad
from gradsurg.combiners.project import Project
from gradsurg.combiners.rlw import RLW
from gradsurg.combiners.upgrad import UPGrad
from gradsurg.errors import ConfigError
from gradsurg.registry import Registry

COMBINERS: Registry[type[Combiner]] = Registry("combiner", "gradsurg.combiners")
for _cls in (
    Sum, Mean, PCGrad, Project, Merge, CAGrad, GradVac, MGDA, IMTLG, UPGrad,
    DualProj, AlignedMTL, NashMTL, ConFIG, FairGrad, GradDrop, RLW, DBMTL, MoCo,
):
    COMBINERS.add(_cls.name, _cls)

CombinerSpec = str | Mapping[str, Any] | Combiner


def build_combiner(spec: CombinerSpec, *, where: str = "combiner") -> Combiner:
    """A combiner from a name, a `{name: ..., **options}` mapping, or an instance.

    `merge` takes nested specs for `inner` and `then`. Unknown or missing options are errors
    naming the key path (`where`), e.g. `combiner.inner.target`.
    """
    if isinstance(spec, Combiner):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"{where}: expected a combiner name or a mapping with 'name'")
    options = {key: value for key, value in spec.items() if key != "name"}
    cls = COMBINERS.get(str(spec["name"]))
    for key in ("inner", "then"):
        if cls is Merge and key in options:
            options[key] = build_combiner(options[key], where=f"{where}.{key}")
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as error:
        allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
        raise ConfigError(
            f"{where} ({spec['name']}): {error}; options are {allowed}"
        ) from None
    try:
        return cls(**options)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError, RuntimeError) as error:
        # e.g. `seed: x` or `seed: 2**64` reaching torch.Generator.manual_seed
        raise ConfigError(f"{where} ({spec['name']}): invalid options {options!r} ("
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__})"
                          ) from None


__all__ = [
    "COMBINERS",
    "DBMTL",
    "IMTLG",
    "MGDA",
    "RLW",
    "AlignedMTL",
    "CAGrad",
    "Combined",
    "Combiner",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GramianWeighting",
    "Mean",
    "Merge",
    "MoCo",
    "NashMTL",
    "PCGrad",
    "Project",
    "Sum",
    "UPGrad",
    "build_combiner",
    "gramian",
    "weighted_rows",
]
