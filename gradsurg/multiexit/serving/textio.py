"""Reading texts to classify and writing predictions, for ``gradsurg predict``.

Inputs: JSONL (one object per line, text fields picked by name) or TSV / plain text (one
or two tab-separated texts per line, or named columns after a header line). Every
problem names the file and line, because a prediction silently made on the wrong column
is worse than no prediction.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from gradsurg import strict_json
from gradsurg.errors import ConfigError, DataError
from gradsurg.outputs import atomic_output

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
    """Decoded lines (terminators kept); a bad byte is reported with its line number, the same
    way for a file and for stdin."""
    if str(source) == "-":
        stream = getattr(sys.stdin, "buffer", None)
        if stream is None:  # a text-only stdin (embedded use): already decoded
            yield from sys.stdin
            return
        yield from _decoded("<stdin>", stream)
        return
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an input file")
    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    with path.open("rb") as handle:
        yield from _decoded(str(path), handle)


def _decoded(name: str, stream: Iterable[bytes]) -> Iterator[str]:
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}:{number}: not UTF-8 text ({exc.reason} at byte "
                            f"{exc.start + 1} of the line)") from None


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
            fmt: InputFormat = "jsonl" if _looks_like_json(line) else "tsv"
            return fmt, itertools.chain(seen, lines)
    return "tsv", iter(seen)


def _looks_like_json(line: str) -> bool:
    """An object line, or any line that parses as a JSON list (then refused as not an object,
    instead of being classified as the text "[...]")."""
    stripped = line.strip()
    if stripped.startswith("{"):
        return True
    if stripped.startswith("["):
        try:
            strict_json.loads(stripped, source="input")
        except ConfigError:
            return False
        return True
    return False


def _read_jsonl(name: str, lines: Iterable[str], arity: int,
                fields: Sequence[str] | None) -> Iterator[InputText]:
    chosen = tuple(fields) if fields else None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:  # gradsurg's bounded strict reader: deep nesting or NaN is one line too
            record = strict_json.loads(line, source=f"{name}:{number}")
        except ConfigError as exc:
            raise DataError(str(exc)) from None
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


@contextlib.contextmanager
def open_output(path: str | Path | None) -> Iterator[IO[str]]:
    """A text handle for ``path`` (or stdout for None / ``-``), as a context manager.

    A file is written under a temporary name beside it and renamed into place when the block
    ends without error: a failed run leaves the old file (or none), never an empty or partial
    one.
    """
    if path is None or str(path) == "-":
        yield sys.stdout
        return
    with atomic_output(Path(path)) as handle:
        yield handle


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
