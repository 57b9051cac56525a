"""User-facing errors: one exception type the CLI prints as a single line."""

from __future__ import annotations

#: The longest quotation of user input an error message makes, and the longest message line.
QUOTE_CHARS = 200
MESSAGE_CHARS = 2000


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` cut to `limit` characters (an error line never quotes a whole bomb)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def bounded(message: str, limit: int = MESSAGE_CHARS) -> str:
    """`message` cut to `limit` characters, saying how long it was."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... (message cut at {limit} of {len(message)} characters)"


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
