"""Training checkpoints that a crash cannot corrupt and a load cannot exploit.

A checkpoint is a folder `step-00000123/` under the run's `checkpoints/` holding

- `model.safetensors`: the weights (shared tensors stored once), never pickled;
- `state.pt`: everything else (optimizer, scheduler, combiner state, RNG states, counters) as
  tensors and plain Python values, read back with `torch.load(weights_only=True)`, so loading
  one never runs pickled code.

- `checksums.json`: the SHA-256 of both files as written, so flipped bits on disk (or any
  change since) are found when the checkpoint is loaded, and the checkpoint is refused, named,
  instead of resumed (delete it to resume from the one before, if one is kept).

It is written into a hidden temporary folder, flushed to disk, then renamed into place: the
rename is the commit, so a folder with a `step-` name is always complete and the latest one is
simply the highest step. Older ones beyond `keep` are deleted only after the new one exists.
A `checkpoints/` folder or a `step-` entry that is a symbolic link is refused: nothing is read,
written or deleted through a link.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from gradsurg import strict_json
from gradsurg.errors import GradsurgError
from gradsurg.finite_weights import check_finite_weights
from gradsurg.outputs import atomic_write_text, check_own_folder

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "capture_rng",
    "restore_rng",
]

WEIGHTS = "model.safetensors"
STATE = "state.pt"
CHECKSUMS = "checksums.json"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(GradsurgError):
    """A checkpoint is missing, incomplete or unreadable; the message names the file."""


def capture_rng() -> dict[str, Any]:
    """The global RNG states training draws from (dropout, init): torch CPU, CUDA, Python."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The checkpoints of one run: save atomically, find the latest, load it safely."""

    def __init__(self, root: Path, *, keep: int = 1) -> None:
        if keep < 1:
            raise GradsurgError(f"keep_checkpoints must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def steps(self) -> list[int]:
        """Global steps of the complete checkpoints, oldest first."""
        if self.root.is_symlink():
            raise CheckpointError(f"{self.root}: is a symbolic link; gradsurg never reads, "
                                  "writes or deletes checkpoints through a link (remove it)")
        if not self.root.is_dir():
            return []
        steps = []
        for entry in self.root.iterdir():
            match = _NAME.match(entry.name)
            if match is None:
                continue
            if entry.is_symlink():
                raise CheckpointError(f"{entry}: is a symbolic link; gradsurg never reads, "
                                      "writes or deletes checkpoints through a link (remove it)")
            if entry.is_dir():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path(steps[-1]) if steps else None

    def save(self, step: int, *, model: nn.Module, state: Mapping[str, Any]) -> Path:
        """Write checkpoint `step` (weights + `state`), commit it by rename, prune old ones.

        Weights holding NaN/inf are refused (NonFiniteError): resuming from them could only
        fail again, and the previous checkpoint stays the latest. A failed write (disk full,
        file too large, read-only folder) leaves no folder behind and raises CheckpointError
        naming the path.
        """
        check_finite_weights(model, when=f"at checkpoint step {step}")
        try:
            check_own_folder(self.root)
        except GradsurgError as error:
            raise CheckpointError(str(error)) from None
        self.steps()  # refuses a linked step- entry before anything is written or pruned
        for leftover in self.root.glob(".step-*"):  # staging folders of a killed save
            if not leftover.is_symlink():  # rmtree never follows links below; nor here
                shutil.rmtree(leftover, ignore_errors=True)
        final = self.path(step)
        if final.exists():
            # Resuming starts from the newest checkpoint, so a step is never saved twice;
            # should it happen, the committed folder wins over replacing it non-atomically.
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}-", dir=self.root))
        try:
            save_model(model, str(staging / WEIGHTS))
            torch.save(dict(state), staging / STATE)
            for name in (WEIGHTS, STATE):
                _fsync(staging / name)
            # read back from disk: what is recorded is what was written
            sums = {name: _sha256(staging / name) for name in (WEIGHTS, STATE)}
            atomic_write_text(staging / CHECKSUMS, strict_json.dumps(sums, indent=2) + "\n",
                              own=True)
            _rename(staging, final)
            _fsync(self.root)
        except (OSError, RuntimeError, SafetensorError) as error:  # torch.save: RuntimeError
            reason = (error.strerror if isinstance(error, OSError) and error.strerror
                      else _first_line(error))
            raise CheckpointError(f"{final}: cannot write the checkpoint ({reason}); the "
                                  "previous checkpoint is kept") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for old in self.steps()[: -self.keep]:
            shutil.rmtree(self.path(old), ignore_errors=True)
        return final

    def load(self, path: Path, *, model: nn.Module, device: torch.device | str = "cpu"
             ) -> dict[str, Any]:
        """Load the weights into `model` and return the rest of the state (on the CPU)."""
        weights, state_file = path / WEIGHTS, path / STATE
        for required in (weights, state_file):
            if not required.is_file():
                raise CheckpointError(f"checkpoint file {required} is missing")
        verify_checksums(path)
        try:
            missing, unexpected = load_model(model, str(weights), strict=False,
                                             device=str(device))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{weights} could not be read: {_first_line(error)}") from None
        except RuntimeError as error:  # shapes differ: load_state_dict's message says which
            raise CheckpointError(
                f"{weights} does not match the model: {_first_line(error)}") from None
        if missing or unexpected:
            raise CheckpointError(
                f"{weights} does not match the model: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}")
        try:
            state = torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle/zip errors have many types; all mean unreadable
            raise CheckpointError(
                f"{state_file} could not be read safely: {_first_line(error)}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{state_file} does not hold a training state")
        return state


def verify_checksums(path: Path) -> None:
    """Refuse a checkpoint whose files differ from the SHA-256 recorded when it was written
    (bit rot, a partial copy, an edit), naming the file. A checkpoint written before
    checksums were recorded has no `checksums.json` and is read as before."""
    record = path / CHECKSUMS
    if not record.exists():
        return
    try:
        sums = strict_json.load_file(record)
    except (GradsurgError, OSError) as error:
        raise CheckpointError(f"{record} cannot be read ({_first_line(error)})") from None
    if not isinstance(sums, dict) or set(sums) != {WEIGHTS, STATE}:
        raise CheckpointError(f"{record}: expected the SHA-256 of {WEIGHTS} and {STATE}")
    for name in (WEIGHTS, STATE):
        if _sha256(path / name) != sums[name]:
            raise CheckpointError(
                f"{path / name} does not match the checksum recorded when the checkpoint was "
                "written (flipped bits on disk, or changed since); it is not resumed. Delete "
                f"{path} to resume from the checkpoint before it (if keep_checkpoints kept one)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rename(source: Path, target: Path) -> None:
    """The commit point of a save (a separate function so tests can crash right before it)."""
    os.replace(source, target)


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so a power cut cannot half-commit it."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return  # e.g. folders cannot be opened on some platforms; the rename is still atomic
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
