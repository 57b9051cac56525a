"""GLUE task specs and readers for the GLUE_DIR TSV layout and the ``nyu-mll/glue`` hub copy.

Both sources end in the same schema so a recipe never cares where rows came from:

* ``text_a`` (string) and, for sentence-pair tasks only, ``text_b`` (string). Single-sentence
  tasks (SST-2, CoLA) have no ``text_b`` column at all: an all-null column would carry an
  untyped feature and push a ``None`` check into every consumer.
* ``label``: ``int64`` class id for classification, ``float32`` score for regression (STS-B),
  as on the hub.

Label ids are positions in ``TaskSpec.labels``, which lists the TSV spellings in the hub's
id order (e.g. MNLI entailment=0, neutral=1, contradiction=2), so a model trained on local
files and one trained on hub data agree on what each output means.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradsurg.errors import ConfigError, DataError

HUB_DATASET = "nyu-mll/glue"
_MAX_SHOWN = 60  # longest field value quoted in an error message

_SPLIT_ALIASES = {
    "validation": "dev",
    "validation_matched": "dev_matched",
    "validation_mismatched": "dev_mismatched",
}

_PAIR_FILES = (("train", "train.tsv"), ("dev", "dev.tsv"))
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to read one GLUE task from TSV files or from the hub."""

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    hub_config: str
    hub_text_columns: tuple[str, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    split_files: tuple[tuple[str, str], ...] = _PAIR_FILES
    #: Regression tasks: the closed range a score must lie in (STS-B: 0..5).
    score_range: tuple[float, float] | None = None
    has_header: bool = True
    num_fields: int | None = None
    text_indices: tuple[int, ...] | None = None
    label_index: int | None = None
    num_labels: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_labels", 1 if self.labels is None else len(self.labels))

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.split_files)

    def canonical_split(self, split: str) -> str:
        """Map ``validation*`` hub spellings to local split names; reject unknown splits."""
        key = split.strip().lower()
        key = _SPLIT_ALIASES.get(key, key)
        if key not in self.splits:
            aliases = [a for a, s in _SPLIT_ALIASES.items() if s in self.splits]
            allowed = ", ".join([*self.splits, *aliases])
            raise ConfigError(f"unknown split {split!r} for GLUE task {self.name} "
                              f"(allowed: {allowed})")
        return key

    def file_name(self, split: str) -> str:
        return dict(self.split_files)[self.canonical_split(split)]

    def hub_split(self, split: str) -> str:
        """The hub names dev splits ``validation*``; train keeps its name."""
        key = self.canonical_split(split)
        return "validation" + key[3:] if key.startswith("dev") else key


def _pair_task(name: str, folder: str, a: str, b: str, label: str, labels: tuple[str, ...] | None,
               hub_cols: tuple[str, str], metrics: tuple[str, ...], **kw: Any) -> TaskSpec:
    return TaskSpec(name=name, folder=folder, text_columns=(a, b), label_column=label,
                    labels=labels, hub_config=name, hub_text_columns=hub_cols, metrics=metrics,
                    primary_metric=metrics[0], **kw)


_S12 = ("sentence1", "sentence2")

GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(name="sst2", folder="SST-2", text_columns=("sentence",), label_column="label",
                     labels=_BINARY, hub_config="sst2", hub_text_columns=("sentence",),
                     metrics=("accuracy",), primary_metric="accuracy"),
    "cola": TaskSpec(name="cola", folder="CoLA", text_columns=("sentence",), label_column="label",
                     labels=_BINARY, hub_config="cola", hub_text_columns=("sentence",),
                     metrics=("mcc",), primary_metric="mcc", has_header=False, num_fields=4,
                     text_indices=(3,), label_index=1),
    "mrpc": _pair_task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", _BINARY, _S12,
                       ("f1", "accuracy")),
    "qqp": _pair_task("qqp", "QQP", "question1", "question2", "is_duplicate", _BINARY,
                      ("question1", "question2"), ("f1", "accuracy")),
    "stsb": _pair_task("stsb", "STS-B", "sentence1", "sentence2", "score", None, _S12,
                       ("pearson", "spearman"), score_range=(0.0, 5.0)),
    "mnli": _pair_task("mnli", "MNLI", "sentence1", "sentence2", "gold_label",
                       ("entailment", "neutral", "contradiction"), ("premise", "hypothesis"),
                       ("accuracy",), split_files=(("train", "train.tsv"),
                                                   ("dev_matched", "dev_matched.tsv"),
                                                   ("dev_mismatched", "dev_mismatched.tsv"))),
    "qnli": _pair_task("qnli", "QNLI", "question", "sentence", "label", _NLI2,
                       ("question", "sentence"), ("accuracy",)),
    "rte": _pair_task("rte", "RTE", "sentence1", "sentence2", "label", _NLI2, _S12,
                      ("accuracy",)),
    "wnli": _pair_task("wnli", "WNLI", "sentence1", "sentence2", "label", _BINARY, _S12,
                       ("accuracy",)),
}


def _spelling_key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


_BY_SPELLING = {_spelling_key(spec.folder): spec for spec in GLUE_TASKS.values()}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by canonical name or folder spelling (``SST-2``, ``sts-b``, ``MNLI``)."""
    if isinstance(name, TaskSpec):
        return name
    spec = _BY_SPELLING.get(_spelling_key(name)) if isinstance(name, str) else None
    if spec is None:
        allowed = ", ".join(GLUE_TASKS)
        raise ConfigError(f"unknown GLUE task {name!r} (allowed: {allowed}; folder spellings "
                          "like SST-2 or STS-B also work)")
    return spec


@dataclass(frozen=True, slots=True)
class Example:
    """One GLUE row: ``text_b`` is None for single-sentence tasks."""

    text_a: str
    text_b: str | None
    label: int | float


def _shown(value: str) -> str:
    """Quote a field for a one-line message, clipped so a long sentence cannot flood it."""
    if len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN] + "..."
    return repr(value)


def _iter_lines(path: Path) -> Generator[tuple[int, str], None, None]:
    """Yield (1-based line number, decoded line without its terminator), lazily.

    Lines are split on bytes and decoded one by one so a bad byte is reported on its own
    line; only ``\\n`` ends a line (a stray ``\\r`` inside a sentence stays put), and quotes
    are plain characters, which is what GLUE's unquoted TSVs need. The first line is
    decoded as ``utf-8-sig`` to drop a byte-order mark.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a TSV file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from None
            yield lineno, text.rstrip("\n").removesuffix("\r")


def _column_indices(spec: TaskSpec, header: list[str], path: Path) -> tuple[list[int], int]:
    """Find the text and label columns in a header line (line 1)."""
    missing = [c for c in (*spec.text_columns, spec.label_column) if c not in header]
    if missing:
        found = ", ".join(repr(h) for h in header)
        raise DataError(f"{path}:1: missing column {missing[0]!r} for GLUE task {spec.name} "
                        f"(header has: {found})")
    return [header.index(c) for c in spec.text_columns], header.index(spec.label_column)


def _parse_label(spec: TaskSpec, raw: str, where: str) -> int | float:
    value = raw.strip()
    if spec.labels is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataError(f"{where}: non-numeric score {_shown(raw)} in column "
                            f"{spec.label_column!r}")
        if spec.score_range is not None and not (
                spec.score_range[0] <= score <= spec.score_range[1]):
            low, high = spec.score_range
            raise DataError(f"{where}: score {_shown(raw)} in column {spec.label_column!r} is "
                            f"outside {spec.name}'s range (allowed: {low:g}..{high:g})")
        return score
    try:
        return spec.labels.index(value)
    except ValueError:
        allowed = ", ".join(repr(lab) for lab in spec.labels)
        raise DataError(f"{where}: unknown label {_shown(raw)} in column {spec.label_column!r} "
                        f"(allowed: {allowed})") from None


def _check_max_rows(max_rows: int | None, name: str = "max_rows") -> None:
    """`name`: the argument as the caller's signature spells it, for the error."""
    if max_rows is not None and (type(max_rows) is not int or max_rows < 0):
        raise ConfigError(f"{name} must be None or a non-negative integer, got {max_rows!r}")


def read_glue_tsv(path: str | os.PathLike[str], task: str | TaskSpec, *,
                  max_rows: int | None = None) -> list[Example]:
    """Read a GLUE TSV into examples, streaming so ``max_rows`` stops early.

    Empty lines are skipped (a trailing empty line is harmless); every other line must have
    as many fields as the header. Errors are ``DataError`` with ``path:line``.
    """
    spec = get_task(task)
    _check_max_rows(max_rows)
    path = Path(path)
    lines = _iter_lines(path)
    try:
        return _read_rows(spec, lines, path, max_rows)
    finally:
        lines.close()  # release the file when max_rows stops early


def _read_rows(spec: TaskSpec, lines: Generator[tuple[int, str], None, None], path: Path,
               max_rows: int | None) -> list[Example]:
    text_idx, label_idx, width = _layout(spec, lines, path)
    examples: list[Example] = []
    if max_rows == 0:
        return examples
    last = 1 if spec.has_header else 0
    for lineno, line in lines:
        last = lineno
        if not line:  # only truly empty lines; whitespace-only rows fail the width check
            continue
        examples.append(_parse_row(spec, line, width, text_idx, label_idx, f"{path}:{lineno}"))
        if max_rows is not None and len(examples) >= max_rows:
            return examples
    if not examples:
        raise DataError(f"{path}:{last + 1}: no data rows")
    return examples


def _layout(spec: TaskSpec, lines: Iterator[tuple[int, str]], path: Path
            ) -> tuple[list[int], int, int]:
    """Return (text indices, label index, field count), consuming the header if there is one."""
    if not spec.has_header:
        assert spec.text_indices is not None and spec.label_index is not None
        assert spec.num_fields is not None
        return list(spec.text_indices), spec.label_index, spec.num_fields
    first = next(lines, None)
    if first is None or not first[1].strip():
        raise DataError(f"{path}:1: empty file, expected a header line")
    header = first[1].split("\t")
    text_idx, label_idx = _column_indices(spec, header, path)
    return text_idx, label_idx, len(header)


def _parse_row(spec: TaskSpec, line: str, width: int, text_idx: Sequence[int], label_idx: int,
               where: str) -> Example:
    fields = line.split("\t")
    if len(fields) != width:
        raise DataError(f"{where}: expected {width} tab-separated fields, found {len(fields)}")
    texts = [fields[i] for i in text_idx]
    label = _parse_label(spec, fields[label_idx], where)
    return Example(texts[0], texts[1] if len(texts) > 1 else None, label)


def glue_features(task: str | TaskSpec) -> Any:
    """The ``datasets.Features`` of ``load_glue`` output for this task."""
    from datasets import Features, Value

    spec = get_task(task)
    cols = {"text_a": Value("string")}
    if spec.is_pair:
        cols["text_b"] = Value("string")
    cols["label"] = Value("float32" if spec.is_regression else "int64")
    return Features(cols)


def examples_to_dataset(examples: Sequence[Example], task: str | TaskSpec) -> Any:
    """Build a ``datasets.Dataset`` in the shared schema from parsed examples."""
    from datasets import Dataset

    spec = get_task(task)
    data: dict[str, list[Any]] = {"text_a": [e.text_a for e in examples]}
    if spec.is_pair:
        data["text_b"] = [e.text_b for e in examples]
    data["label"] = [e.label for e in examples]
    return Dataset.from_dict(data, features=glue_features(spec))


def hub_to_glue_schema(dataset: Any, task: str | TaskSpec) -> Any:
    """Rename a ``nyu-mll/glue`` split to ``text_a``/``text_b``/``label`` and drop ``idx``."""
    spec = get_task(task)
    wanted = [*spec.hub_text_columns, "label"]
    missing = [c for c in wanted if c not in dataset.column_names]
    if missing:
        raise DataError(f"{HUB_DATASET}/{spec.hub_config}: missing column {missing[0]!r} "
                        f"(has: {', '.join(dataset.column_names)})")
    renames = dict(zip(spec.hub_text_columns, ("text_a", "text_b"), strict=False))
    out = dataset.select_columns(wanted).rename_columns(renames)
    return out.cast(glue_features(spec))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``data_dir`` if given, else ``$GLUE_DIR`` if set and non-empty, else None (use the hub)."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("GLUE_DIR", "").strip()
    return Path(env) if env else None


def load_glue(task: str | TaskSpec, split: str, *, data_dir: str | os.PathLike[str] | None = None,
              max_rows: int | None = None) -> Any:
    """Load one GLUE split as a ``datasets.Dataset`` in the shared schema (see module doc).

    A given data dir is authoritative: a missing folder or file is an error, never a silent
    switch to the hub, so runs cannot mix data sources unnoticed.
    """
    spec = get_task(task)
    _check_max_rows(max_rows)
    root = resolve_data_dir(data_dir)
    if root is None:
        return _load_from_hub(spec, split, max_rows=max_rows)
    return examples_to_dataset(_local_examples(spec, split, root, max_rows), spec)


def load_glue_sample(task: str | TaskSpec, split: str, *, rows: int, seed: int,
                     data_dir: str | os.PathLike[str] | None = None) -> Any:
    """``rows`` rows of one split drawn at random: the rows, in the order, that
    ``load_glue(...).shuffle(seed=seed).select(range(rows))`` gives (the whole split, unshuffled,
    when it has no more rows), without first building the whole split as a Dataset, which on a
    large split (MNLI's 393k rows) costs more than reading it."""
    spec = get_task(task)
    _check_max_rows(rows, "rows")
    root = resolve_data_dir(data_dir)
    if root is None:
        data = _load_from_hub(spec, split, max_rows=None)
        return data if rows >= len(data) else data.shuffle(seed=seed).select(range(rows))
    examples = _local_examples(spec, split, root, None)
    if rows < len(examples):
        # Dataset.shuffle's permutation (numpy's default generator seeded with `seed`);
        # tests/test_glue_data.py checks it against datasets itself
        order = np.random.default_rng(seed).permutation(len(examples))[:rows]
        examples = [examples[i] for i in order]
    return examples_to_dataset(examples, spec)


def _local_examples(spec: TaskSpec, split: str, root: Path, max_rows: int | None
                    ) -> list[Example]:
    file_name = spec.file_name(split)
    folder = root / spec.folder
    if not folder.is_dir():
        raise DataError(f"{folder}: no such GLUE task folder (expected {spec.folder}/{file_name} "
                        f"under {root})")
    return read_glue_tsv(folder / file_name, spec, max_rows=max_rows)


def _load_from_hub(spec: TaskSpec, split: str, *, max_rows: int | None) -> Any:
    from datasets import load_dataset

    hub_split = spec.hub_split(split)
    if max_rows is not None:
        hub_split = f"{hub_split}[:{max_rows}]"
    try:
        dataset = load_dataset(HUB_DATASET, spec.hub_config, split=hub_split)
    except Exception as err:  # network, auth, cache: report as one line with the fix
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{HUB_DATASET}/{spec.hub_config} split {hub_split!r}: cannot load from "
                        f"the hub ({reason}); set GLUE_DIR or pass data_dir") from err
    return hub_to_glue_schema(dataset, spec)
