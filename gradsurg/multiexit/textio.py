"""Reading texts to classify and writing predictions, for ``gradsurg predict``.

Inputs: JSONL (one object per line, text fields picked by name) or TSV / plain text (one
or two tab-separated texts per line, or named columns after a header line). Every
problem names the file and line, because a prediction silently made on the wrong column
is worse than no prediction.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from gradsurg.errors import ConfigError, DataError

__all__ = ["InputText", "open_output", "read_texts", "write_prediction"]

InputFormat = Literal["auto", "jsonl", "tsv"]
OutputFormat = Literal["jsonl", "tsv"]

AUTO_FIELDS: tuple[tuple[str, ...], ...] = (
    ("text_a", "text_b"), ("text", "text_pair"), ("sentence1", "sentence2"),
    ("question1", "question2"), ("question", "sentence"), ("sentence",), ("text",),
)
"""Field names tried in order when ``fields`` is not given (pairs first, then singles)."""


@dataclass(frozen=True)
class InputText:
    line: int  # 1-based line in the input, for messages
    text_a: str
    text_b: str | None


def read_texts(source: str | Path, *, arity: int, fmt: InputFormat = "auto",
               fields: Sequence[str] | None = None, header: bool = False) -> Iterator[InputText]:
    """Yield the texts of ``source`` (a path, or ``-`` for stdin), ``arity`` (1 or 2) per row."""
    if arity not in (1, 2):
        raise ValueError(f"arity must be 1 or 2, got {arity}")
    if fields is not None and len(fields) != arity:
        raise ConfigError(f"--fields names {len(fields)} field(s) but the model takes {arity} "
                          f"text(s) per example")
    name = "<stdin>" if str(source) == "-" else str(source)
    lines = _lines(source)
    if fmt == "auto":
        fmt, lines = _sniff(name, lines)
    if fmt == "jsonl":
        yield from _read_jsonl(name, lines, arity, fields)
    elif fmt == "tsv":
        yield from _read_tsv(name, lines, arity, fields, header)
    else:
        raise ConfigError(f"input format {fmt!r} is unknown; allowed: auto, jsonl, tsv")


def _lines(source: str | Path) -> Iterator[str]:
    if str(source) == "-":
        yield from sys.stdin
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield from handle
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _sniff(name: str, lines: Iterator[str]) -> tuple[InputFormat, Iterator[str]]:
    """JSONL if the first non-blank line starts with '{' (or the name ends in .jsonl)."""
    if name.endswith((".jsonl", ".json")):
        return "jsonl", lines
    if name.endswith((".tsv", ".txt")):
        return "tsv", lines
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line.strip():
            fmt: InputFormat = "jsonl" if line.lstrip().startswith("{") else "tsv"
            return fmt, itertools.chain(seen, lines)
    return "tsv", iter(seen)


def _read_jsonl(name: str, lines: Iterable[str], arity: int,
                fields: Sequence[str] | None) -> Iterator[InputText]:
    chosen = tuple(fields) if fields else None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{name}:{number}: expected a JSON object, got "
                            f"{type(record).__name__}")
        if chosen is None:
            chosen = _auto_fields(name, number, record, arity)
        texts = []
        for field in chosen:
            value = record.get(field)
            if not isinstance(value, str):
                problem = "is missing" if field not in record else "is not a string"
                raise DataError(f"{name}:{number}: field {field!r} {problem}")
            texts.append(value)
        yield InputText(number, texts[0], texts[1] if arity == 2 else None)


def _auto_fields(name: str, number: int, record: dict[str, Any], arity: int) -> tuple[str, ...]:
    for candidate in AUTO_FIELDS:
        if len(candidate) == arity and all(key in record for key in candidate):
            return candidate
    wanted = " or ".join("+".join(c) for c in AUTO_FIELDS if len(c) == arity)
    raise DataError(f"{name}:{number}: no text field found for a model taking {arity} text(s); "
                    f"expected {wanted}, or pass --fields")


def _read_tsv(name: str, lines: Iterable[str], arity: int, fields: Sequence[str] | None,
              header: bool) -> Iterator[InputText]:
    rows = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    columns: list[int] | None = None
    if fields is not None and not header:
        raise ConfigError("--fields with TSV input needs --header (column names come from it)")
    for number, row in enumerate(rows, start=1):
        if header and columns is None:
            columns = _header_columns(name, row, arity, fields)
            continue
        if not row or not any(cell.strip() for cell in row):
            continue
        if columns is None and len(row) != arity:
            raise DataError(f"{name}:{number}: expected {arity} tab-separated text(s), got "
                            f"{len(row)} (pass --header and --fields to pick columns)")
        picks = columns or list(range(arity))
        if max(picks) >= len(row):
            raise DataError(f"{name}:{number}: has {len(row)} columns, needs column "
                            f"{max(picks) + 1}")
        yield InputText(number, row[picks[0]], row[picks[1]] if arity == 2 else None)
    if header and columns is None:
        raise DataError(f"{name}: empty input, expected a header line")


def _header_columns(name: str, row: list[str], arity: int,
                    fields: Sequence[str] | None) -> list[int]:
    names = [cell.strip() for cell in row]
    wanted = list(fields) if fields else None
    if wanted is None:
        for candidate in AUTO_FIELDS:
            if len(candidate) == arity and all(c in names for c in candidate):
                wanted = list(candidate)
                break
    if wanted is None:
        raise DataError(f"{name}:1: header {names} has no text column for a model taking "
                        f"{arity} text(s); pass --fields")
    missing = [w for w in wanted if w not in names]
    if missing:
        raise DataError(f"{name}:1: header has no column {missing[0]!r} (has: {', '.join(names)})")
    return [names.index(w) for w in wanted]


def open_output(path: str | Path | None) -> IO[str]:
    """A text handle for ``path``, or stdout for None / ``-``."""
    if path is None or str(path) == "-":
        return sys.stdout
    target = Path(path)
    if not target.parent.is_dir():
        raise ConfigError(f"output folder {str(target.parent)!r} does not exist")
    return target.open("w", encoding="utf-8", newline="")


def write_prediction(handle: IO[str], record: dict[str, Any], fmt: OutputFormat,
                     *, first: bool) -> None:
    """One prediction as a JSON line, or a TSV row (header before the first)."""
    if fmt == "jsonl":
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    if first:
        handle.write("\t".join(record) + "\n")
    handle.write("\t".join(_tsv_cell(value) for value in record.values()) + "\n")


def _tsv_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")
