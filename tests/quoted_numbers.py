"""Hand-written prose quotes numbers from generated reports: each two-decimal number it quotes
must stand in the report it names, so prose and tables cannot drift apart."""

from __future__ import annotations

import re

#: A number with exactly two decimals, not part of a longer number (82.57, not 1.0075).
TWO_DECIMALS = r"(?<![\d.])\d+\.\d\d(?!\d)"


def assert_quotes_only(text: str, source: str, *, at_least: int, message: str) -> None:
    """`text` quotes at least `at_least` two-decimal numbers and each stands in `source`;
    `message` (with `{number}`) says which text quoted what its source lacks."""
    quoted = re.findall(TWO_DECIMALS, text)
    assert len(quoted) >= at_least, quoted
    for number in quoted:
        assert re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", source), message.format(
            number=number)
