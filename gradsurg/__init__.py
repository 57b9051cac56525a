"""gradsurg: per-group gradients and gradient combiners as optimizer hooks."""

from gradsurg.combiners import build_combiner
from gradsurg.errors import ConfigError, DataError, GradsurgError
from gradsurg.losses import LossGroup, evaluate_groups
from gradsurg.surgery import Surgery

__all__ = [
    "ConfigError",
    "DataError",
    "GradsurgError",
    "LossGroup",
    "Surgery",
    "build_combiner",
    "evaluate_groups",
]
__version__ = "0.1.0.dev0"
