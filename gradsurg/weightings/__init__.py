"""Loss weightings (`{group: loss}` in, weighted `{group: loss}` out).

`WEIGHTINGS.build(spec, groups, where=...)` makes one from a recipe value; importing this
package imports every built-in weighting's module, which registers its class.
"""

from gradsurg.weightings.base import WEIGHTINGS, LossWeighting
from gradsurg.weightings.dwa import DWA
from gradsurg.weightings.eellm import EELLMWarmup
from gradsurg.weightings.famo import FAMO
from gradsurg.weightings.geometric import Geometric
from gradsurg.weightings.imtll import IMTLL
from gradsurg.weightings.layerskip import LayerSkip
from gradsurg.weightings.scalarizers import COSMOS, PBI
from gradsurg.weightings.stch import STCH
from gradsurg.weightings.uncertainty import Uncertainty

__all__ = [
    "COSMOS",
    "DWA",
    "FAMO",
    "IMTLL",
    "PBI",
    "STCH",
    "WEIGHTINGS",
    "EELLMWarmup",
    "Geometric",
    "LayerSkip",
    "LossWeighting",
    "Uncertainty",
]
