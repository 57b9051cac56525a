"""The files and folders a command writes: one run per output folder, nothing half-written.

- `OutputLock` holds an exclusive `fcntl` lock on `FOLDER/.gradsurg.lock` for a run's whole
  life, so a second run into the same folder stops at once instead of mixing the two runs'
  files. The kernel drops the lock when the process dies (even by SIGKILL), so a crash never
  leaves a stale lock behind; the file itself is removed on a normal exit.
- `new_run_folder` claims a fresh default folder with `mkdir` (atomic), adding `-2`, `-3`, ...
  when two runs start in the same second.
- `atomic_write_text` and `atomic_output` write to a temporary file beside the target and
  rename it into place only on success, so a failure leaves the old file (or none), never a
  truncated one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from gradsurg.errors import ConfigError, GradsurgError

__all__ = ["LOCK_FILE", "OutputError", "OutputLock", "atomic_output", "atomic_write_text",
           "check_output_file", "check_output_path", "new_run_folder", "os_error_message",
           "replace_folder"]

LOCK_FILE = ".gradsurg.lock"


def os_error_message(error: OSError) -> str:
    """One line for a file-system error that names the path: `PATH: No space left on device`."""
    reason = error.strerror or type(error).__name__
    path = error.filename
    if path is None:
        return f"file system error: {reason}"
    other = f" -> {error.filename2}" if error.filename2 is not None else ""
    return f"{os.fsdecode(path)}{other}: {reason}"


def check_output_path(raw: str, *, option: str = "--output") -> Path:
    """A run's output folder from the command line: not empty, not an existing file, not a
    name longer than the file system allows."""
    if not raw.strip():
        raise ConfigError(f"{option} {raw!r} is empty; give a folder name (a run never writes "
                          "into the current directory by accident)")
    path = Path(raw)
    limit = _name_max(path)
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if too_long is not None:
        raise ConfigError(f"{option}: the name {too_long[:40]}... ({len(os.fsencode(too_long))} "
                          f"bytes) is longer than the file system allows ({limit} bytes)")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {raw}: is an existing file, expected a folder")
    return path


def _name_max(path: Path) -> int:
    """The longest file name the file system under `path` takes (255 on the usual ones)."""
    probe = path.parent
    try:
        while not probe.is_dir() and probe != probe.parent:
            probe = probe.parent
        return os.pathconf(probe if probe.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def new_run_folder(base: Path) -> Path:
    """Create and return `base`, or `base-2`, `base-3`, ... if another run took it first."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ConfigError(f"{base}: 999 runs with this name exist; pass --output")


class OutputLock:
    """An exclusive lock on a run's output folder, held until `release` (or process death)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock now or raise a ConfigError naming the folder and the holder's pid."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = _read_pid(self.path)
                raise ConfigError(
                    f"output folder {self.folder} is in use by another gradsurg run"
                    f"{f' (pid {holder})' if holder else ''}; wait for it, or choose another "
                    "--output") from None
            # The holder may have removed the file between our open and lock: then we locked
            # a deleted file, and a third run could lock a new one. Retry until they agree.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # removed while still held: nobody can lock the old file
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class OutputError(GradsurgError):
    """A file or folder could not be written (the message names it)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    with atomic_output(path) as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[IO[str]]:
    """A text handle whose content becomes `path` only if the block ends without error.

    A target that exists and is not a regular file (`/dev/stdout`, a FIFO, a device) is
    written directly: it cannot be replaced, and must never be.
    """
    check_output_file(path)
    try:
        if path.exists() and not path.is_file():
            with path.open("w", encoding="utf-8", newline="") as direct:
                yield direct
            return
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
    except OSError as error:
        if error.filename is None:  # a failed write names no file; the message must
            error.filename = str(path)
        raise


def check_output_file(path: Path, *, option: str = "output") -> None:
    """An output file's folder must exist and the name must not be a folder (checked before
    any work, so a long evaluation is not lost to a typo)."""
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder, expected a file name")


def replace_folder(target: Path, write: Callable[[Path], object]) -> None:
    """Fill a hidden staging folder with `write(staging)`, then swap it in for `target`."""
    from safetensors import SafetensorError  # the glue extra; imported only by what writes

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        try:
            write(staging)
        except (RuntimeError, SafetensorError) as error:  # writers that hide the OSError
            raise OutputError(f"{target}: cannot write ({_first_line(error)})") from None
        old = target.with_name(f".{target.name}-old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
