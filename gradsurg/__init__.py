"""gradsurg: per-group gradients and gradient combiners as optimizer hooks."""

from gradsurg.errors import ConfigError, DataError, GradsurgError

__all__ = ["ConfigError", "DataError", "GradsurgError"]
__version__ = "0.1.0.dev0"
