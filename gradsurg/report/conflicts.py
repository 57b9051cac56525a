"""The conflict map: where in the network loss groups pull against each other.

The combiner `blockwise` (and any run with `Surgery(..., conflict_blocks=...)`, the recipe key
`conflict_blocks`) logs, per parameter block and pair of groups reaching it, the cosine
of their gradients (`cosine/<block>/<a>/<b>`) and whether it was negative
(`conflict/<block>/<a>/<b>`, 1 or 0). The map averages them over the measured steps: per block
and pair, the mean cosine and the share of steps in conflict. A log line holds its interval's
means, so each line weighs as many steps as it covers (its step minus the previous line's of
the same stage): the map is the per-step mean whatever `log_every` was. Where a sum measured
one step in N (`diagnostics_every`), the log says so (`conflict_blocks/measured`, its line's
share of measured steps) and each line weighs the steps it measured. A pair a block never saw
stays None.

Read by `gradsurg conflicts` (a short run in memory), `gradsurg compare` (a finished run's
train_log.jsonl) and bench/conflict_map.py; the heatmap is `plots.plot_conflict_map`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from gradsurg import strict_json
from gradsurg.combiners.blocks import MEASURED_KEY
from gradsurg.errors import ConfigError
from gradsurg.loggers import JSONL_FILE, is_number

__all__ = [
    "DEFAULT_SHARE",
    "Verdict",
    "block_rates",
    "block_table",
    "conflict_map",
    "conflict_table",
    "has_block_cosines",
    "markdown_lines",
    "read_log",
    "run_conflict_map",
    "steps_text",
    "verdict",
]

#: A (block, pair) cell counts as in conflict from this share of steps on. A combiner that
#: acts on conflict (project, pcgrad, ...) changes the sum's update on those steps only, so
#: below one step in ten it leaves nine in ten updates as the sum would make them.
DEFAULT_SHARE = 0.1
#: The map's two measures: the logged key's prefix -> the map's key.
MEASURES = {"cosine": "mean_cosine", "conflict": "conflict_share"}


def _cell(key: str) -> tuple[str, str, str] | None:
    """`(measure, block, "a/b")` of a per-block key, None for any other key (whole-vector
    cosines are `cosine/<a>/<b>`)."""
    measure, _, rest = key.partition("/")
    if measure not in MEASURES or rest.count("/") != 2:
        return None
    block, a, b = rest.split("/")
    return measure, block, f"{a}/{b}"


def has_block_cosines(records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any record holds a per-block cosine (a run trained with `blockwise` or
    `conflict_blocks`)."""
    return any(_cell(key) is not None for record in records for key in record)


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key with numbers as numbers: layers.2 before layers.10, exit2 before exit10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def conflict_map(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The map of training log records: `blocks`, `pairs` (both in natural order),
    `mean_cosine[block][pair]` and `conflict_share[block][pair]` (None where the pair never
    met in the block), `log_lines` (records with per-block cosines), `steps` (the steps they
    cover) and `measured_steps` (those of them that measured the cosines: fewer where a sum
    measured one step in N, `MEASURED_KEY`). Each line weighs the steps it measured. A log
    without per-block cosines is a ConfigError."""
    sums: dict[str, dict[tuple[str, str], float]] = {m: defaultdict(float) for m in MEASURES}
    weights: dict[str, dict[tuple[str, str], float]] = {m: defaultdict(float) for m in MEASURES}
    previous: dict[Any, int] = {}
    lines = steps = 0
    measured_steps = 0.0
    for index, record in enumerate(records, 1):
        covered = _steps_covered(record, previous, index)
        weight = covered * _measured_share(record, index)
        found = False
        for key, value in record.items():
            cell = _cell(key)
            if cell is None or value is None:  # None: a NaN the log wrote as null
                continue
            if not is_number(value):
                raise ConfigError(f"log line {index}: {key} is {value!r}, not a number")
            measure, block, pair = cell
            sums[measure][block, pair] += float(value) * weight
            weights[measure][block, pair] += weight
            found = True
        if found:
            lines += 1
            steps += covered
            measured_steps += weight
    if not weights["cosine"]:
        raise ConfigError("the log holds no per-block cosines (cosine/<block>/<a>/<b>, which "
                          "the combiner blockwise or the option conflict_blocks logs)")
    blocks = sorted({block for block, _ in weights["cosine"]}, key=_natural)
    pairs = sorted({pair for _, pair in weights["cosine"]}, key=_natural)
    table = {MEASURES[m]: {block: {pair: (sums[m][block, pair] / weights[m][block, pair]
                                          if weights[m].get((block, pair)) else None)
                                   for pair in pairs} for block in blocks}
             for m in MEASURES}
    return {"blocks": blocks, "pairs": pairs, **table, "log_lines": lines, "steps": steps,
            "measured_steps": round(measured_steps)}


def _measured_share(record: Mapping[str, Any], index: int) -> float:
    """The share of a log line's steps that measured the block cosines (1 for a log that does
    not say)."""
    share = record.get(MEASURED_KEY, 1.0)
    if not is_number(share) or not 0 <= float(share) <= 1:
        raise ConfigError(f"log line {index}: {MEASURED_KEY} is {share!r}, not a share in "
                          "[0, 1]")
    return float(share)


def steps_text(result: Mapping[str, Any]) -> str:
    """`500 steps`, or `500 steps, 100 of them measured` where fewer measured the cosines."""
    measured = result.get("measured_steps", result["steps"])
    return (f"{result['steps']} steps" if measured >= result["steps"]
            else f"{result['steps']} steps, {measured} of them measured")


def _steps_covered(record: Mapping[str, Any], previous: dict[Any, int], index: int) -> int:
    """How many steps a log line's means cover: its step minus the stage's previous line's
    (1 for a record without a step)."""
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return 1
    stage = record.get("stage")
    before = previous.get(stage, 0)
    if step <= before:
        raise ConfigError(f"log line {index}: step {step} of stage {stage!r} comes after step "
                          f"{before}; not the log of one run")
    previous[stage] = step
    return step - before


def read_log(path: Path) -> list[dict[str, Any]]:
    """A train_log.jsonl's records; a bad line is a ConfigError naming `file:line`."""
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = strict_json.loads(line, source=f"{path}:{number}")
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object")
            records.append(record)
    return records


def run_conflict_map(folder: Path) -> dict[str, Any] | None:
    """The map of a run folder's train_log.jsonl; None when it has no log or its log has no
    per-block cosines (a run trained without `blockwise`
    or `conflict_blocks`)."""
    path = folder / JSONL_FILE
    if not path.is_file():
        return None
    records = read_log(path)
    if not has_block_cosines(records):
        return None
    return conflict_map(records)


# ---- what the map says --------------------------------------------------------------------

def _cells(result: Mapping[str, Any]) -> list[tuple[str, str, float, float]]:
    """(block, pair, conflict share, mean cosine) of every cell the run saw."""
    return [(block, pair, result["conflict_share"][block][pair],
             result["mean_cosine"][block][pair])
            for block in result["blocks"] for pair in result["pairs"]
            if result["conflict_share"][block][pair] is not None]


def _in_conflict(share: float, threshold: float) -> bool:
    return share >= threshold - 1e-12  # 12 of 120 steps is 0.1, whatever the float sum gave


def _percent(share: float) -> str:
    return f"{share * 100:.1f}%"


def _threshold(share: float) -> str:
    return f"{share * 100:g}%"


@dataclass(frozen=True)
class Verdict:
    """Whether surgery has something to act on: the cells in conflict on at least `share` of
    the steps (most first), out of `cells`."""

    share: float
    cells: int
    hot: list[tuple[str, str, float]]
    most: tuple[str, str, float]

    @property
    def acts(self) -> bool:
        return bool(self.hot)

    def text(self) -> str:
        block, pair, share = self.most
        most = f"most: {pair} in {block}, {_percent(share)}"
        if self.hot:
            return (f"surgery has something to act on: {len(self.hot)} of {self.cells} (block, "
                    f"pair) cells are in conflict on >= {_threshold(self.share)} of steps ({most})")
        return (f"nothing to act on: none of the {self.cells} (block, pair) cells is in conflict "
                f"on >= {_threshold(self.share)} of steps ({most})")

    def to_json(self) -> dict[str, Any]:
        return {"share": self.share, "cells": self.cells, "cells_in_conflict": len(self.hot),
                "acts": self.acts, "text": self.text()}


def verdict(result: Mapping[str, Any], share: float = DEFAULT_SHARE) -> Verdict:
    """The map's verdict at threshold `share` (0 < share <= 1)."""
    if not 0 < share <= 1:
        raise ConfigError(f"share {share!r}: must be in (0, 1], a share of the steps")
    cells = _cells(result)
    hot = sorted(((b, p, s) for b, p, s, _ in cells if _in_conflict(s, share)),
                 key=lambda cell: -cell[2])
    block, pair, most, _ = max(cells, key=lambda cell: cell[2])
    return Verdict(share, len(cells), hot, (block, pair, most))


def block_rates(result: Mapping[str, Any], share: float = DEFAULT_SHARE
                ) -> list[dict[str, Any]]:
    """Per block: its pairs, their mean conflict share and cosine, how many are in conflict
    on >= `share` of steps, and the pair most often in conflict."""
    rows = []
    for block in result["blocks"]:
        cells = [(p, s, c) for b, p, s, c in _cells(result) if b == block]
        if not cells:
            continue
        pair, most, _ = max(cells, key=lambda cell: cell[1])
        rows.append({"block": block, "pairs": len(cells),
                     "conflict_share": sum(s for _, s, _ in cells) / len(cells),
                     "mean_cosine": sum(c for _, _, c in cells) / len(cells),
                     "cells_in_conflict": sum(_in_conflict(s, share) for _, s, _ in cells),
                     "most": {"pair": pair, "conflict_share": most}})
    return rows


def conflict_table(result: Mapping[str, Any], share: float = DEFAULT_SHARE, *,
                   title: str | None = None) -> Table:
    """One row per (block, pair) the run saw: mean cosine, share of steps in conflict."""
    table = Table(title=title or f"conflict map: {steps_text(result)}")
    for name, justify in (("block", "left"), ("pair", "left"), ("mean cosine", "right"),
                          ("steps in conflict", "right"), (f">= {_threshold(share)}", "center")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for block, pair, conflict, cosine in _cells(result):
        table.add_row(block, pair, f"{cosine:+.3f}", _percent(conflict),
                      "yes" if _in_conflict(conflict, share) else "")
    return table


def block_table(result: Mapping[str, Any], share: float = DEFAULT_SHARE) -> Table:
    """The conflict rate per block: the mean over its pairs and the pair most in conflict."""
    table = Table(title="conflict rate per block (mean over the block's pairs)")
    for name in ("block", "pairs", "steps in conflict", "mean cosine",
                 f"pairs >= {_threshold(share)}", "most in conflict"):
        table.add_column(name, justify="left" if name in ("block", "most in conflict")
                         else "right", no_wrap=name in ("block", "most in conflict"))
        # (a cut name says nothing; the share goes on its own line instead)
    for row in block_rates(result, share):
        table.add_row(row["block"], str(row["pairs"]), _percent(row["conflict_share"]),
                      f"{row['mean_cosine']:+.3f}", str(row["cells_in_conflict"]),
                      f"{row['most']['pair']}\n({_percent(row['most']['conflict_share'])})")
    return table


def markdown_lines(result: Mapping[str, Any], share: float = DEFAULT_SHARE) -> list[str]:
    """The verdict and the per-block rates as Markdown (compare.md)."""
    lines = [verdict(result, share).text() + f" (over {steps_text(result)}).", "",
             "| block | pairs | steps in conflict | mean cosine | most in conflict |",
             "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {row['block']} | {row['pairs']} | {_percent(row['conflict_share'])} | "
              f"{row['mean_cosine']:+.3f} | {row['most']['pair']} "
              f"({_percent(row['most']['conflict_share'])}) |"
              for row in block_rates(result, share)]
    return [*lines, ""]
