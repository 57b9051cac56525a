"""The files and folders a command writes: one run per output folder, nothing half-written.

- `OutputLock` holds an exclusive `fcntl` lock on `FOLDER/.gradsurg.lock` for a run's whole
  life, so a second run into the same folder stops at once instead of mixing the two runs'
  files. The kernel drops the lock when the process dies (even by SIGKILL), so a crash never
  leaves a stale lock behind; the file itself is removed on a normal exit.
- `new_run_folder` claims a fresh default folder with `mkdir` (atomic), adding `-2`, `-3`, ...
  when two runs start in the same second.
- `atomic_write_text`, `atomic_write_bytes` and `atomic_output` write to a temporary file beside
  the target and rename it into place only on success, so a failure leaves the old file (or
  none), never a truncated one; every file gradsurg writes takes this path, figures included.
- Nothing is written or deleted through a symbolic link inside a run or output folder: a link
  where a file is replaced is replaced (the rename), a linked folder, log or lock is refused
  (`check_own_folder`, `check_own_file`), and only what this run wrote is deleted.
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
from typing import IO, Any

from gradsurg.errors import ConfigError, GradsurgError

__all__ = [
    "LOCK_FILE",
    "OutputError",
    "OutputLock",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_file",
    "check_output_path",
    "check_own_file",
    "check_own_folder",
    "new_run_folder",
    "os_error_message",
    "replace_folder",
]

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
            check_own_file(self.path)
            try:  # O_NOFOLLOW: a link planted under the lock's name is refused, not truncated
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                check_own_file(self.path)
                raise
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


def atomic_write_text(path: Path, text: str, *, own: bool = False) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    with atomic_output(path, own=own) as handle:
        handle.write(text)


def atomic_write_bytes(path: Path, data: bytes, *, own: bool = True) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename (the
    path every binary file gradsurg writes takes: figures, exit logits, weights files)."""
    with atomic_output(path, binary=True, own=own) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_output(path: Path, *, binary: bool = False, own: bool = False) -> Iterator[IO[Any]]:
    """A handle whose content becomes `path` only if the block ends without error.

    The content goes to a temporary file beside `path` and is renamed over it, so a failure
    leaves the old file (or none) and a symbolic link at `path` is replaced, never written
    through. `own=False` (a file the user named: `predict -o`, `eval --json`): an existing
    target that is not a regular file (`/dev/stdout`, a FIFO, a device) is written directly,
    as asked. `own=True` (a file gradsurg names inside a run or output folder): never, and
    the caller makes its subfolder with `check_own_folder`.
    """
    check_output_file(path)
    try:
        if not own and path.exists() and not path.is_file():
            with path.open("wb" if binary else "w", **_text(binary)) as direct:
                yield direct
            return
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
        try:
            with os.fdopen(fd, "wb" if binary else "w", **_text(binary)) as handle:
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


def _text(binary: bool) -> dict[str, Any]:
    return {} if binary else {"encoding": "utf-8", "newline": ""}


def check_own_folder(folder: Path) -> Path:
    """A folder gradsurg writes its own files into (the run folder's `plots/`,
    `checkpoints/`, `tensorboard/`, `--output` of compare): created if missing, refused if it
    is a symbolic link (or anything but a folder), so nothing is written or deleted through a
    link. The run folder itself is the user's to name, link or not."""
    if folder.is_symlink():
        raise OutputError(f"{folder}: is a symbolic link; gradsurg never writes or deletes "
                          "through a link inside a run or output folder (remove the link)")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check_own_file(path: Path) -> Path:
    """A file gradsurg appends to or reopens inside a run folder (`train_log.jsonl`,
    `.gradsurg.lock`): refused if it is a symbolic link or not a regular file."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a symbolic link" if path.is_symlink() else "not a regular file"
        raise OutputError(f"{path}: is {kind}; gradsurg never writes or deletes through a "
                          "link inside a run folder (remove it)")
    return path


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

    if target.is_symlink() or (target.exists() and not target.is_dir()):
        what = "a symbolic link" if target.is_symlink() else "not a folder"
        raise OutputError(f"{target}: is {what};"
                          " gradsurg never writes or deletes through a link inside a run "
                          "folder (remove it)")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    old: Path | None = None
    try:
        try:
            write(staging)
        except (RuntimeError, SafetensorError) as error:  # writers that hide the OSError
            raise OutputError(f"{target}: cannot write ({_first_line(error)})") from None
        if target.exists():  # moved aside under a fresh name: only what this run made is deleted
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, old)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
