"""Gradient combiners: `COMBINERS.build(spec, where=...)` makes one from a recipe value.

Importing this package imports every built-in combiner's module, which registers its class.
"""

from gradsurg.combiners.aligned_mtl import AlignedMTL
from gradsurg.combiners.base import COMBINERS, Combined, Combiner, GramianWeighting
from gradsurg.combiners.blockwise import Blockwise
from gradsurg.combiners.cagrad import CAGrad
from gradsurg.combiners.conflict_free import ConFIG
from gradsurg.combiners.cr_mogm import CRMOGM
from gradsurg.combiners.dbmtl import DBMTL
from gradsurg.combiners.dualproj import DualProj
from gradsurg.combiners.excess_mtl import ExcessMTL
from gradsurg.combiners.fairgrad import FairGrad
from gradsurg.combiners.graddrop import GradDrop
from gradsurg.combiners.gradvac import GradVac
from gradsurg.combiners.gramian import gramian, weighted_rows
from gradsurg.combiners.imtlg import IMTLG
from gradsurg.combiners.krum import Krum
from gradsurg.combiners.linear import Mean, Sum
from gradsurg.combiners.merge import Merge
from gradsurg.combiners.mgda import MGDA
from gradsurg.combiners.moco import MoCo
from gradsurg.combiners.modo import MoDo
from gradsurg.combiners.nash_mtl import NashMTL
from gradsurg.combiners.pcd import PCD
from gradsurg.combiners.pcgrad import PCGrad
from gradsurg.combiners.project import Project
from gradsurg.combiners.rlw import RLW
from gradsurg.combiners.sdmgrad import SDMGrad
from gradsurg.combiners.trimmed_mean import TrimmedMean
from gradsurg.combiners.upgrad import UPGrad

__all__ = [
    "COMBINERS",
    "CRMOGM",
    "DBMTL",
    "IMTLG",
    "MGDA",
    "PCD",
    "RLW",
    "AlignedMTL",
    "Blockwise",
    "CAGrad",
    "Combined",
    "Combiner",
    "ConFIG",
    "DualProj",
    "ExcessMTL",
    "FairGrad",
    "GradDrop",
    "GradVac",
    "GramianWeighting",
    "Krum",
    "Mean",
    "Merge",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "Project",
    "SDMGrad",
    "Sum",
    "TrimmedMean",
    "UPGrad",
    "gramian",
    "weighted_rows",
]
