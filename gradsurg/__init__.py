"""gradsurg: per-group gradients, combined into `.grad` by the step's last backward (`Surgery`)."""

from gradsurg.combiners import COMBINERS
from gradsurg.errors import ConfigError, DataError, GradsurgError
from gradsurg.loss_groups import LossGroup, evaluate_groups
from gradsurg.surgery import Surgery

__all__ = [
    "COMBINERS",
    "ConfigError",
    "DataError",
    "GradsurgError",
    "LossGroup",
    "Surgery",
    "evaluate_groups",
]
__version__ = "0.1.0.dev0"
