"""Where training log records go: `loggers: [jsonl, tensorboard]` in a recipe.

Every logger receives the same records (`{"stage": ..., "step": ..., "lr": ..., "loss/final":
...}`): `jsonl` appends them to `<output>/train_log.jsonl`; `tensorboard` writes their numbers
as scalars under `<output>/tensorboard/<stage>/` (one TensorBoard run per training stage, the
record's step on the x-axis, the JSONL keys as tags). TensorBoard is an optional dependency,
so a recipe that asks for it without it installed is refused when it is read.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator

from gradsurg import strict_json
from gradsurg.errors import ConfigError
from gradsurg.extras import import_optional
from gradsurg.outputs import check_own_file, check_own_folder

#: The file the `jsonl` logger writes in the output folder.
JSONL_FILE = "train_log.jsonl"
#: The folder the `tensorboard` logger writes in the output folder.
TENSORBOARD_DIR = "tensorboard"


class TrainingLog(Protocol):
    """What the training loop writes its records to."""

    def write(self, record: Mapping[str, Any]) -> None: ...


class JsonlLog:
    """Appends one JSON object per line, flushed at once so a crash loses nothing logged.

    `truncate_to` (a byte offset a checkpoint recorded with `tell`) drops the lines a killed
    run wrote after its last checkpoint, so a resumed run's log has each step once.
    """

    def __init__(self, path: Path | None, *, truncate_to: int | None = None) -> None:
        """`path=None` logs nothing (the non-main ranks of a distributed run)."""
        self.path = path
        self._file = None
        if path is None:
            return
        check_own_file(path)  # a link is refused: never truncated or appended through
        # O_NOFOLLOW closes the gap between the check and the open
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        if truncate_to is not None:
            os.ftruncate(descriptor, truncate_to)
        self._file = os.fdopen(descriptor, "a", encoding="utf-8")

    def tell(self) -> int:
        return self._file.tell() if self._file is not None else 0

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            try:
                self._file.write(strict_json.dumps(dict(record)) + "\n")  # NaN -> null
                self._file.flush()
            except OSError as error:  # e.g. disk full: the message must name the log
                error.filename = error.filename or str(self.path)
                raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class TensorBoardLog:
    """Each record's numbers as TensorBoard scalars in `root/<stage>/` at the record's step.

    A resumed run must not show the steps a killed run logged after its last checkpoint twice:
    the first record a session writes for a stage opens its writer with `purge_step` at that
    record's step, and TensorBoard hides every earlier-written event from that step on. The
    resumed run logs the same steps again (the step grid depends on `log_every` only), so what
    remains is each step once, as the finished run logged it.
    """

    def __init__(self, root: Path) -> None:
        self._summary_writer = import_optional("torch.utils.tensorboard").SummaryWriter
        self.root = root
        self._writers: dict[str, Any] = {}

    def write(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        stage = str(record.get("stage", ""))
        writer = self._writers.get(stage)
        if writer is None:
            check_own_folder(self.root)
            check_own_folder(self.root / stage)  # a link there is refused, never written
            writer = self._summary_writer(str(self.root / stage), purge_step=step)
            self._writers[stage] = writer
        for key, value in record.items():
            if key not in ("stage", "step") and is_number(value):
                writer.add_scalar(key, value, global_step=step)
        writer.flush()  # like the JSONL log: a crash loses nothing logged

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


class MemoryLog:
    """Keeps the records in a list: a training run measured in memory (`gradsurg conflicts`)
    writes no file."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        pass


class Loggers:
    """The recipe's loggers as one: each record goes to all of them."""

    def __init__(self, logs: Sequence[JsonlLog | TensorBoardLog | MemoryLog]) -> None:
        self.logs = list(logs)

    def write(self, record: Mapping[str, Any]) -> None:
        for log in self.logs:
            log.write(record)

    def tell(self) -> int:
        """The JSONL log's byte offset, for a checkpoint to truncate back to (0 without it)."""
        return next((log.tell() for log in self.logs if isinstance(log, JsonlLog)), 0)

    def close(self) -> None:
        for log in self.logs:
            log.close()


def open_loggers(names: Sequence[str], output_dir: Path | None, *,
                 truncate_to: int | None = None) -> Loggers:
    """The loggers a recipe names, writing into `output_dir` (None: this process logs
    nothing, e.g. a non-main rank); `truncate_to` is a resumed checkpoint's `tell()`."""
    if output_dir is None:
        return Loggers([])
    logs: list[JsonlLog | TensorBoardLog] = []
    for name in names:
        if name == "jsonl":
            logs.append(JsonlLog(output_dir / JSONL_FILE, truncate_to=truncate_to))
        else:
            logs.append(TensorBoardLog(output_dir / TENSORBOARD_DIR))
    return Loggers(logs)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _installed(names: list[str]) -> list[str]:
    """Refuse no logger (`[]` would drop train_log.jsonl and leave `log_every` doing nothing),
    a repeated logger, and `tensorboard` without its package, when the recipe is read rather
    than at the first log line."""
    if not names:
        raise ValueError("an empty list logs nothing and leaves log_every unused; "
                         "allowed: jsonl, tensorboard, or both")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"logger {repeated[0]!r} is listed twice")
    if "tensorboard" in names:
        try:
            import_optional("tensorboard")
        except ConfigError as error:  # names `pip install 'gradsurg[tensorboard]'`
            raise ValueError(str(error)) from None
    return names


LoggerNames = Annotated[list[Literal["jsonl", "tensorboard"]], AfterValidator(_installed)]
"""The type of a program schema's `loggers` key."""
