"""User-facing errors: one exception type the CLI prints as a single line."""

from __future__ import annotations


class GradsurgError(Exception):
    """A problem with the user's input (recipe, data, arguments, checkpoint).

    The message must name the culprit (key, file, line) so it can be shown alone.
    """


class ConfigError(GradsurgError):
    """A recipe key or command-line value is missing, unknown or out of range."""


class DataError(GradsurgError):
    """A data file is missing, empty or malformed; the message names file and line."""


class RanksError(GradsurgError):
    """The ranks of a data-parallel run disagree, or one of them failed or timed out."""


class NonFiniteError(GradsurgError):
    """Training produced NaN/inf losses or gradients too many steps in a row."""


class TrainingError(GradsurgError):
    """A run that trained nothing: every step skipped, or no weight moved. Its model is not
    saved as a result."""
